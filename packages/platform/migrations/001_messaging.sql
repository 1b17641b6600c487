-- The outbox is also each service's published event log (its feed): rows are kept after
-- publishing. position orders the log; (subject, sequence) orders one entity's stream
-- and is the optimistic-concurrency guard of the event store.
CREATE TABLE outbox (
  position bigserial PRIMARY KEY,
  id uuid NOT NULL UNIQUE,
  type text NOT NULL,
  subject text NOT NULL,
  sequence integer NOT NULL,
  partition smallint NOT NULL,
  envelope jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  published_at timestamptz,
  txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
  UNIQUE (subject, sequence)
);
CREATE INDEX outbox_pending ON outbox (partition, position) WHERE published_at IS NULL;

-- One row per relay partition: a relay holds a partition by locking its row for the
-- duration of a batch, so two relays never publish the same subject at once.
CREATE TABLE outbox_partitions (partition smallint PRIMARY KEY);
INSERT INTO outbox_partitions SELECT generate_series(0, 15);

CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('outbox', '');
  RETURN NULL;
END;
$$;
CREATE TRIGGER outbox_inserted AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Idempotent consumer: a message id is recorded in the same transaction as its effect.
CREATE TABLE inbox (
  consumer text NOT NULL,
  message_id text NOT NULL,
  type text NOT NULL,
  received_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (consumer, message_id)
);

-- The last sequence applied per (source, subject): stale messages are ignored, early
-- ones are held until the gap closes.
CREATE TABLE consumer_positions (
  consumer text NOT NULL,
  source text NOT NULL,
  subject text NOT NULL,
  last_sequence integer NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (consumer, source, subject)
);

CREATE TABLE held_messages (
  consumer text NOT NULL,
  source text NOT NULL,
  subject text NOT NULL,
  sequence integer NOT NULL,
  envelope jsonb NOT NULL,
  held_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (consumer, source, subject, sequence)
);

-- Messages that could not take effect, parked with the reason; replayable.
CREATE TABLE dead_letters (
  id uuid PRIMARY KEY,
  consumer text NOT NULL,
  message_id text,
  type text,
  subject text,
  body text NOT NULL,
  reason text NOT NULL,
  error text NOT NULL,
  attempts integer NOT NULL,
  status text NOT NULL DEFAULT 'parked' CHECK (status IN ('parked', 'replayed')),
  parked_at timestamptz NOT NULL DEFAULT now(),
  resolved_at timestamptz
);
CREATE INDEX dead_letters_parked ON dead_letters (parked_at) WHERE status = 'parked';

CREATE TABLE dead_letter_audit (
  id bigserial PRIMARY KEY,
  dead_letter_id uuid NOT NULL REFERENCES dead_letters (id),
  action text NOT NULL,
  actor text NOT NULL,
  outcome text NOT NULL,
  detail text,
  at timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX dead_letters_once ON dead_letters (consumer, message_id) WHERE status = 'parked' AND message_id IS NOT NULL;
