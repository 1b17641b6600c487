-- A version per cached row, raised by every write: a cache entry is never replaced by
-- an older version (packages/platform/src/cache.ts).
ALTER TABLE order_summaries ADD COLUMN version bigint NOT NULL DEFAULT 0;
ALTER TABLE product_availability ADD COLUMN version bigint NOT NULL DEFAULT 0;
