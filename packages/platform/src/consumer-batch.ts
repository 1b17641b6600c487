// Many messages, one transaction. Under load most of a message's cost is round trips
// and commits, so the consumer applies the messages it holds together: one statement
// records every inbox row, locks every entity and reads every position; the handlers
// run one after another in the same transaction; one statement advances every
// position; one commit. The rules are the single-message ones (duplicate, stale, held,
// applied), and a batch holds at most one message per subject, so per-subject order is
// untouched. If anything in the batch fails, the whole batch rolls back and the
// consumer applies its messages one by one, where retries and dead letters work per
// message: a bad message never takes the others down with it.
import { previousSequence } from '@converge/contracts';
import type { Db, Sql } from './db.ts';
import type { Applied, BatchHandler, Handler, Message } from './consumer.ts';
import { appendCaused, appendToOutbox, type AppendContext, type CausedEvents } from './outbox.ts';

/** What a message's events carry: its correlation, and itself as their cause. */
const causedBy = (consumer: string, message: Message, at: Date): AppendContext => ({
  source: consumer,
  now: at,
  correlationId: message.correlationid,
  causationId: message.id,
  ...(message.traceparent === undefined ? {} : { traceparent: message.traceparent }),
});

/** Runs the handler for one message; what it emits carries the message's correlation. */
export async function runHandler(
  tx: Sql,
  consumer: string,
  handle: Handler,
  message: Message,
  at: Date,
): Promise<void> {
  await handle(tx, message, {
    now: at,
    emit: async (events) => {
      await appendToOutbox(tx, causedBy(consumer, message, at), events);
    },
  });
}

/**
 * Runs a batch handler; everything it emitted is appended after it, in one statement,
 * left in flight (`appended`) so that it goes out with what follows it and the COMMIT.
 */
export async function runBatchHandler(
  tx: Sql,
  consumer: string,
  handle: BatchHandler,
  messages: readonly Message[],
  at: Date,
): Promise<{ appended: Promise<unknown> }> {
  const caused: CausedEvents[] = [];
  await handle(tx, messages, {
    now: at,
    emit: (cause, events, expectedVersion) => {
      if (events.length === 0) return;
      caused.push({
        context: causedBy(consumer, cause, at),
        events,
        ...(expectedVersion === undefined ? {} : { expectedVersion }),
      });
    },
  });
  return { appended: appendCaused(tx, caused) };
}

/** Keeps an early message until its predecessor has taken effect. */
export async function holdMessage(tx: Sql, consumer: string, message: Message): Promise<void> {
  await tx.query(
    `INSERT INTO held_messages (consumer, source, subject, sequence, after_sequence, envelope)
     VALUES ($1, $2, $3, $4, $5, $6::jsonb) ON CONFLICT DO NOTHING`,
    [
      consumer,
      message.source,
      message.subject,
      message.sequence,
      previousSequence(consumer, message),
      JSON.stringify(message),
    ],
  );
}

/** Applies a batch; `handle` is either the per-message handler or one for the batch's due messages at once. */
export async function applyBatch(
  db: Db,
  consumer: string,
  messages: readonly Message[],
  handle: Handler | { batch: BatchHandler },
  at: Date,
): Promise<Applied[]> {
  const { results, appended, advanced } = await db.transaction(async (tx) => {
    const input = messages.map((m, i) => ({ i, source: m.source, subject: m.subject, id: m.id, type: m.type }));
    // Entity locks are taken in subject order, so two batches never wait on each other
    // in a cycle. `pos` reads from `entity`: every lock is held before any position row.
    const claims = await tx.query<{ i: number; last: number | null }>(
      `WITH input AS (
         SELECT * FROM jsonb_to_recordset($2::jsonb) AS x(i int, source text, subject text, id text, type text)
       ), fresh AS (
         INSERT INTO inbox (consumer, message_id, type) SELECT $1, id, type FROM input
         ON CONFLICT DO NOTHING RETURNING message_id
       ), entity AS MATERIALIZED (
         SELECT source, subject, pg_advisory_xact_lock(hashtextextended($1 || ':' || subject, 0)) AS locked
           FROM input WHERE id IN (SELECT message_id FROM fresh) ORDER BY subject
       ), pos AS (
         INSERT INTO consumer_positions (consumer, source, subject, last_sequence)
         SELECT $1, source, subject, 0 FROM entity
         ON CONFLICT (consumer, source, subject) DO UPDATE SET last_sequence = consumer_positions.last_sequence
         RETURNING source, subject, last_sequence
       )
       SELECT input.i, pos.last_sequence AS last FROM input LEFT JOIN pos USING (source, subject)`,
      [consumer, JSON.stringify(input)],
    );
    const lastOf = new Map(claims.map((c) => [c.i, c.last]));
    const results: Applied[] = [];
    const applied: { i: number; source: string; subject: string; sequence: number }[] = [];
    const due: Message[] = [];
    for (const [i, message] of messages.entries()) {
      const last = lastOf.get(i) ?? null;
      if (last === null) {
        results.push({ outcome: 'duplicate', more: false });
      } else if (message.sequence <= last) {
        results.push({ outcome: 'stale', more: false });
      } else if (previousSequence(consumer, message) > last) {
        await holdMessage(tx, consumer, message);
        results.push({ outcome: 'held', more: false });
      } else {
        if (typeof handle === 'function') await runHandler(tx, consumer, handle, message, at);
        else due.push(message);
        results.push({ outcome: 'applied', more: false });
        applied.push({ i, source: message.source, subject: message.subject, sequence: message.sequence });
      }
    }
    const { appended } =
      typeof handle !== 'function' && due.length > 0
        ? await runBatchHandler(tx, consumer, handle.batch, due, at)
        : { appended: undefined };
    if (applied.length === 0) return { results, appended };
    // An upsert, not UPDATE … FROM: its arbiter index is probed once per row whatever
    // the planner believes about the table, and a young table's statistics (a handful
    // of rows, analysed minutes ago) would otherwise turn this into a scan of every
    // position the consumer holds. Every row exists and is locked by the claim above.
    // Left in flight, it goes out with the COMMIT.
    const advancing = tx.query<{ source: string; subject: string; more: boolean }>(
      `INSERT INTO consumer_positions AS p (consumer, source, subject, last_sequence)
       SELECT $1, x.source, x.subject, x.sequence
         FROM jsonb_to_recordset($2::jsonb) AS x(source text, subject text, sequence int)
       ON CONFLICT (consumer, source, subject) DO UPDATE SET last_sequence = excluded.last_sequence, updated_at = now()
       RETURNING p.source, p.subject, EXISTS (SELECT 1 FROM held_messages h
                               WHERE h.consumer = $1 AND h.source = p.source AND h.subject = p.subject
                                 AND h.sequence > p.last_sequence AND h.after_sequence <= p.last_sequence) AS more`,
      [consumer, JSON.stringify(applied.map(({ source, subject, sequence }) => ({ source, subject, sequence })))],
    );
    return { results, appended, advanced: { applied, rows: advancing } };
  });
  await appended;
  if (advanced !== undefined) {
    // A batch holds at most one message per subject, so (source, subject) names its message.
    const indexOf = new Map(advanced.applied.map(({ i, source, subject }) => [`${source}\u0000${subject}`, i]));
    for (const { source, subject, more } of await advanced.rows) {
      const result = results[indexOf.get(`${source}\u0000${subject}`) ?? -1];
      if (result !== undefined) result.more = more;
    }
  }
  return results;
}
