-- One payment per order, its id derived from the order id, so a redelivered request can
-- never create a second one.
CREATE TABLE payments (
  payment_id uuid PRIMARY KEY,
  order_id uuid NOT NULL UNIQUE,
  user_id text NOT NULL,
  amount bigint NOT NULL CHECK (amount >= 0),
  currency char(3) NOT NULL,
  status text NOT NULL CHECK (status IN ('PROCESSED', 'FAILED', 'REFUNDED')),
  reason text,
  processed_at timestamptz NOT NULL,
  refunded_at timestamptz
);
CREATE INDEX payments_user ON payments (user_id, processed_at DESC);

-- A cancellation seen before the reservation: the late InventoryReserved charges nothing.
CREATE TABLE cancelled_orders (
  order_id uuid PRIMARY KEY,
  at timestamptz NOT NULL
);
