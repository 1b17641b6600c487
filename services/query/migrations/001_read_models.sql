-- The query service's read models, each folded from the events of its sources
-- (services/query/projections): rebuildable at any time from the services' feeds.

-- Order summary: the whole story of one order as one document.
CREATE TABLE order_summaries (
  order_id uuid PRIMARY KEY,
  status text,
  document jsonb NOT NULL,
  updated_at timestamptz NOT NULL
);

-- A user's orders, newest first.
CREATE TABLE user_orders (
  order_id uuid PRIMARY KEY,
  user_id text NOT NULL,
  status text NOT NULL,
  total_amount bigint NOT NULL,
  currency char(3) NOT NULL,
  lines integer NOT NULL,
  created_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL
);
CREATE INDEX user_orders_newest ON user_orders (user_id, created_at DESC, order_id);

-- Product availability, moved by deltas only.
CREATE TABLE product_availability (
  product_id uuid PRIMARY KEY,
  name text,
  price bigint,
  currency char(3),
  stock_quantity integer NOT NULL,
  reserved integer NOT NULL,
  sold integer NOT NULL,
  updated_at timestamptz NOT NULL
);

-- The system view: orders per status.
CREATE TABLE order_counts (
  status text PRIMARY KEY,
  n integer NOT NULL
);
