-- The feed: each published event gets the next feed position when it is marked
-- published. Positions are handed out under one lock held until the marking commits,
-- so they become visible in order and without gaps: a reader that has seen position n
-- never meets a smaller one later (a bigserial assigned at insert would: a transaction
-- that commits late shows rows below positions already read).
ALTER TABLE outbox ADD COLUMN feed_position bigint;
UPDATE outbox o SET feed_position = f.n
  FROM (SELECT position, row_number() OVER (ORDER BY published_at, position) AS n FROM outbox WHERE published_at IS NOT NULL) f
 WHERE o.position = f.position;
CREATE UNIQUE INDEX outbox_feed ON outbox (feed_position) WHERE feed_position IS NOT NULL;
