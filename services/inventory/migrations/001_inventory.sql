-- available = stock_quantity; the CHECKs make a negative count impossible even if a
-- rule were wrong: the transaction fails instead of the invariant.
CREATE TABLE products (
  product_id uuid PRIMARY KEY,
  name text NOT NULL,
  price bigint NOT NULL CHECK (price >= 0),
  currency char(3) NOT NULL,
  stock_quantity integer NOT NULL CHECK (stock_quantity >= 0),
  reserved integer NOT NULL DEFAULT 0 CHECK (reserved >= 0),
  sold integer NOT NULL DEFAULT 0 CHECK (sold >= 0),
  created_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL
);

-- Every change of stock that is not a reservation move: the initial quantity and each
-- restock. initial + adjustments = available + reserved + sold.
CREATE TABLE stock_adjustments (
  id bigserial PRIMARY KEY,
  product_id uuid NOT NULL REFERENCES products (product_id),
  delta integer NOT NULL,
  reason text NOT NULL,
  idempotency_key text,
  at timestamptz NOT NULL,
  UNIQUE (product_id, idempotency_key)
);

-- One reservation per order. A release or commit that arrives before the order was
-- seen leaves a RELEASED row, so the late OrderCreated reserves nothing.
CREATE TABLE reservations (
  order_id uuid PRIMARY KEY,
  user_id text,
  status text NOT NULL CHECK (status IN ('RESERVED', 'REJECTED', 'RELEASED', 'COMMITTED')),
  items jsonb NOT NULL,
  reason text,
  created_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL
);
