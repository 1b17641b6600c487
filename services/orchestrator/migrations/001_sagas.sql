-- One row per saga: its folded state (what GET /sagas/{id} shows) and when it next
-- times out. `version` counts the step-log events folded into it: a writer updates the
-- row only at the version it read (optimistic concurrency), so two orchestrator
-- instances never both advance one saga on the same input.
CREATE TABLE sagas (
  saga_id text PRIMARY KEY,
  definition text NOT NULL,
  status text NOT NULL CHECK (status IN ('RUNNING', 'COMPENSATING', 'COMPLETED', 'COMPENSATED', 'NEEDS_ATTENTION', 'RESOLVED')),
  version integer NOT NULL CHECK (version > 0),
  state jsonb NOT NULL,
  deadline_at timestamptz,
  started_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL
);
CREATE INDEX sagas_due ON sagas (deadline_at) WHERE deadline_at IS NOT NULL;
CREATE INDEX sagas_by_status ON sagas (status, updated_at DESC);

-- The step log: every saga event in order, appended and never changed.
CREATE TABLE saga_log (
  saga_id text NOT NULL REFERENCES sagas (saga_id),
  version integer NOT NULL,
  type text NOT NULL,
  at timestamptz NOT NULL,
  event jsonb NOT NULL,
  PRIMARY KEY (saga_id, version)
);
