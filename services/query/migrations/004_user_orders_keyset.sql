-- A user's orders are paged by (created_at, order_id), both descending: a page ends
-- between two rows even when several orders share a creation time.
DROP INDEX user_orders_newest;
CREATE INDEX user_orders_newest ON user_orders (user_id, created_at DESC, order_id DESC);
