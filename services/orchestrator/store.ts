// Saga state and its step log. A saga is loaded, decided on and written back at the
// version it was read at, together with its new step-log events and the commands they
// send (the outbox), in the caller's transaction. A second writer of the same saga (a
// second orchestrator instance, the deadline timer) finds the version moved and its
// transaction fails: it retries on the new state, so the saga advances once per input.
import type { DomainEvent } from '@converge/contracts';
import {
  appendCaused,
  appendToOutbox,
  ConflictError,
  decide,
  evolve,
  startSaga,
  finalStatuses,
  type AppendContext,
  type CausedEvents,
  type Message,
  type Saga,
  type SagaDefinition,
  type SagaEvent,
  type SagaInput,
  type Sql,
} from '@converge/platform';

export type SagaRow<Data> = { state: Saga<Data> };

export async function loadSaga<Data>(tx: Sql, sagaId: string, lock = false): Promise<Saga<Data> | undefined> {
  const [row] = await tx.query<SagaRow<Data>>(
    `SELECT state FROM sagas WHERE saga_id = $1${lock ? ' FOR UPDATE' : ''}`,
    [sagaId],
  );
  return row?.state;
}

/** Writes the saga's new state at the expected version, its log and its commands: one statement for the saga. */
async function saveSaga<Data>(
  tx: Sql,
  saga: Saga<Data>,
  events: readonly SagaEvent<Data>[],
  expected: number,
  context: AppendContext,
): Promise<void> {
  const params = [
    saga.id,
    saga.definition,
    saga.status,
    saga.version,
    JSON.stringify(saga),
    saga.deadlineAt,
    saga.startedAt,
    saga.updatedAt,
    expected,
    JSON.stringify(events),
  ];
  const [written] = await tx.query<{ n: number }>(
    `WITH written AS (
       INSERT INTO sagas (saga_id, definition, status, version, state, deadline_at, started_at, updated_at)
       VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8)
       ON CONFLICT (saga_id) DO UPDATE
        SET status = $3, version = $4, state = $5::jsonb, deadline_at = $6, updated_at = $8
        WHERE sagas.version = $9
       RETURNING 1
     ), logged AS (
       INSERT INTO saga_log (saga_id, version, type, at, event)
       SELECT $1, $9 + n, e->>'type', (e->>'at')::timestamptz, e
         FROM jsonb_array_elements($10::jsonb) WITH ORDINALITY AS t(e, n)
        WHERE EXISTS (SELECT 1 FROM written)
     )
     SELECT count(*)::int AS n FROM written`,
    params,
  );
  if ((written?.n ?? 0) === 0)
    throw new ConflictError(`saga ${saga.id} moved past version ${expected}; retrying on its new state`);
  const commands = events.flatMap((e) => (e.type === 'CommandSent' ? [e.command] : []));
  if (commands.length > 0) await appendToOutbox(tx, context, commands);
}

export type Advanced<Data> = { saga: Saga<Data>; events: SagaEvent<Data>[] };

/** What a consumer message's commands carry: its cause, and the saga's correlation. */
export const replyContext = (message: Message, now: Date): AppendContext => ({
  source: 'orchestrator',
  now,
  correlationId: message.correlationid,
  causationId: message.id,
  ...(message.traceparent === undefined ? {} : { traceparent: message.traceparent }),
});

/**
 * A consumer batch, set-wise: every saga it touches loaded in one statement, each
 * message decided in memory (a trigger starts its saga unless it exists, a reply
 * advances it), every changed saga and its log written in one statement at the version
 * it was read at, and every command appended in one. At most one message per saga: the
 * consumer gives a batch one message per subject. A concurrent writer (the deadline
 * timer, another instance) fails the whole statement, and the consumer retries each
 * message alone.
 */
export async function applyToSagas<Data>(
  tx: Sql,
  definition: SagaDefinition<Data>,
  messages: readonly Message[],
  now: Date,
): Promise<void> {
  const ids = messages.map((m) => (m.type === definition.startedBy ? definition.start(m).id : m.subject));
  const rows = await tx.query<{ saga_id: string; state: Saga<Data> }>(
    'SELECT saga_id, state FROM sagas WHERE saga_id = ANY($1::text[])',
    [ids],
  );
  const loaded = new Map(rows.map((r) => [r.saga_id, r.state]));
  const writes: { saga: Saga<Data>; events: SagaEvent<Data>[]; expected: number }[] = [];
  const commands: CausedEvents[] = [];
  for (const [i, message] of messages.entries()) {
    const context = replyContext(message, now);
    const current = loaded.get(ids[i] ?? '');
    let next: Advanced<Data> & { expected: number };
    if (message.type === definition.startedBy) {
      if (current !== undefined) continue; // a duplicate trigger
      const { saga: initial, events } = startSaga(definition, message, now);
      next = { saga: events.reduce(evolve, initial), events, expected: 0 };
    } else {
      if (current === undefined) continue; // about something no saga covers
      const events = decide(definition, current, { kind: 'reply', message }, now);
      if (events.length === 0) continue;
      next = { saga: events.reduce(evolve, current), events, expected: current.version };
      context.correlationId = current.correlationId ?? context.correlationId ?? current.id;
    }
    writes.push(next);
    const sent = next.events.flatMap((e) => (e.type === 'CommandSent' ? [e.command] : []));
    if (sent.length > 0) commands.push({ context, events: sent });
  }
  if (writes.length === 0) return;
  const input = writes.map(({ saga, events, expected }) => ({
    saga_id: saga.id,
    definition: saga.definition,
    status: saga.status,
    version: saga.version,
    state: saga,
    deadline_at: saga.deadlineAt,
    started_at: saga.startedAt,
    updated_at: saga.updatedAt,
    expected,
    events,
  }));
  const [written] = await tx.query<{ n: number }>(
    `WITH input AS (
       SELECT * FROM jsonb_to_recordset($1::jsonb)
           AS x(saga_id text, definition text, status text, version int, state jsonb,
              deadline_at timestamptz, started_at timestamptz, updated_at timestamptz, expected int, events jsonb)
     ), written AS (
       INSERT INTO sagas (saga_id, definition, status, version, state, deadline_at, started_at, updated_at)
       SELECT saga_id, definition, status, version, state, deadline_at, started_at, updated_at FROM input
       ON CONFLICT (saga_id) DO UPDATE SET status = excluded.status, version = excluded.version, state = excluded.state,
              deadline_at = excluded.deadline_at, updated_at = excluded.updated_at
        WHERE sagas.version = (SELECT i.expected FROM input i WHERE i.saga_id = sagas.saga_id)
       RETURNING saga_id
     ), logged AS (
       INSERT INTO saga_log (saga_id, version, type, at, event)
       SELECT i.saga_id, i.expected + n, e->>'type', (e->>'at')::timestamptz, e
         FROM input i, jsonb_array_elements(i.events) WITH ORDINALITY AS t(e, n)
        WHERE i.saga_id IN (SELECT saga_id FROM written)
     )
     SELECT count(*)::int AS n FROM written`,
    [JSON.stringify(input)],
  );
  if ((written?.n ?? 0) !== writes.length)
    throw new ConflictError('a saga of this batch moved meanwhile; retrying its messages one by one');
  await appendCaused(tx, commands);
}

/** Starts the saga a trigger event begins; nothing when it exists (a duplicate trigger). */
export async function beginSaga<Data>(
  tx: Sql,
  definition: SagaDefinition<Data>,
  trigger: DomainEvent & { id?: string; correlationid?: string },
  context: AppendContext,
): Promise<Advanced<Data> | undefined> {
  const { saga: initial, events } = startSaga(definition, trigger, context.now);
  if ((await loadSaga(tx, initial.id)) !== undefined) return undefined;
  const saga = events.reduce(evolve, initial);
  await saveSaga(tx, saga, events, 0, context);
  return { saga, events };
}

/** Applies one input (a reply, a deadline, an operator's action) to a saga. */
export async function advanceSaga<Data>(
  tx: Sql,
  definition: SagaDefinition<Data>,
  sagaId: string,
  input: SagaInput,
  context: AppendContext,
  lock = false,
): Promise<Advanced<Data> | undefined> {
  const saga = await loadSaga<Data>(tx, sagaId, lock);
  if (saga === undefined) return undefined;
  const events = decide(definition, saga, input, context.now);
  if (events.length === 0) return { saga, events };
  const next = events.reduce(evolve, saga);
  await saveSaga(tx, next, events, saga.version, {
    ...context,
    correlationId: saga.correlationId ?? context.correlationId ?? saga.id,
  });
  return { saga: next, events };
}

/** Sagas whose deadline has passed, locked for this transaction; others' locked ones are skipped. */
export async function claimDueSagas(tx: Sql, now: Date, limit: number): Promise<string[]> {
  const rows = await tx.query<{ saga_id: string }>(
    'SELECT saga_id FROM sagas WHERE deadline_at <= $1 ORDER BY deadline_at LIMIT $2 FOR UPDATE SKIP LOCKED',
    [now, limit],
  );
  return rows.map((r) => r.saga_id);
}

export type LogEntry = { version: number; type: string; at: string } & Record<string, unknown>;

export async function sagaHistory(db: Sql, sagaId: string): Promise<LogEntry[]> {
  const rows = await db.query<{ version: number; type: string; event: Record<string, unknown> & { at: string } }>(
    'SELECT version, type, event FROM saga_log WHERE saga_id = $1 ORDER BY version',
    [sagaId],
  );
  return rows.map((r) => ({ ...r.event, version: r.version, type: r.type }));
}

export async function listSagas<Data>(
  db: Sql,
  filter: { status?: string; limit: number; before?: string },
): Promise<Saga<Data>[]> {
  const rows = await db.query<SagaRow<Data>>(
    `SELECT state FROM sagas
      WHERE ($1::text IS NULL OR status = $1) AND ($2::timestamptz IS NULL OR updated_at < $2)
      ORDER BY updated_at DESC, saga_id LIMIT $3`,
    [filter.status ?? null, filter.before ?? null, filter.limit],
  );
  return rows.map((r) => r.state);
}

export async function sagaCounts(
  db: Sql,
  stuckBefore: Date,
): Promise<{ byStatus: Record<string, number>; stuck: number }> {
  const rows = await db.query<{ status: string; n: number; stuck: number }>(
    `SELECT status, count(*)::int AS n,
            count(*) FILTER (WHERE status <> ALL($2::text[]) AND updated_at < $1)::int AS stuck
       FROM sagas GROUP BY status`,
    [stuckBefore, finalStatuses],
  );
  return {
    byStatus: Object.fromEntries(rows.map((r) => [r.status, r.n])),
    stuck: rows.reduce((sum, r) => sum + r.stuck, 0),
  };
}
