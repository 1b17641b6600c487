-- Orders are event-sourced: each order is a stream in the outbox (subject = order id,
-- sequence = version), which is also what the relay publishes. `orders` is the
-- current state folded from those events, updated in the same transaction, for
-- lookups and lists.
CREATE TABLE orders (
  order_id uuid PRIMARY KEY,
  user_id text NOT NULL,
  status text NOT NULL CHECK (status IN ('PENDING', 'COMPLETED', 'FAILED', 'CANCELLED')),
  items jsonb NOT NULL,
  total_amount bigint NOT NULL CHECK (total_amount >= 0),
  currency char(3) NOT NULL,
  reason text,
  version integer NOT NULL,
  created_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL
);
CREATE INDEX orders_by_user ON orders (user_id, created_at DESC, order_id);
CREATE INDEX orders_pending ON orders (created_at) WHERE status = 'PENDING';

-- Prices the order service charges, replicated from inventory's ProductAdded events.
CREATE TABLE catalogue (
  product_id uuid PRIMARY KEY,
  name text NOT NULL,
  price bigint NOT NULL,
  currency char(3) NOT NULL
);

-- One order per (user, Idempotency-Key). in_flight rows older than a lease are taken
-- over (their request died before committing).
CREATE TABLE idempotency_keys (
  user_id text NOT NULL,
  key text NOT NULL,
  request_hash text NOT NULL,
  state text NOT NULL CHECK (state IN ('in_flight', 'done')),
  order_id uuid,
  response_status integer,
  response_body jsonb,
  created_at timestamptz NOT NULL,
  PRIMARY KEY (user_id, key)
);
