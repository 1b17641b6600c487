-- How far the query service has caught up with each source's feed: every event up to
-- this position has been given to its consumer (and so applied, or found applied).
CREATE TABLE feed_checkpoints (
  source text PRIMARY KEY,
  position bigint NOT NULL,
  updated_at timestamptz NOT NULL
);
