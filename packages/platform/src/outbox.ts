// Transactional outbox: a state change and the events it causes commit in one
// transaction, here; the relay publishes them later. The outbox doubles as an event
// store: each subject is a stream whose `sequence` is its version, and appending with
// an expected version that is no longer current fails on the (subject, sequence) key.
import crypto from 'node:crypto';
import { catalogue, type DomainEvent, type Envelope } from '@converge/contracts';
import type { Sql } from './db.ts';
import { ConflictError } from './errors.ts';

export const outboxPartitions = 16;

export type Outgoing = DomainEvent & { subject: string };

export type AppendContext = {
  source: string;
  now: Date;
  /** The request or saga this belongs to; new ones start a correlation of their own. */
  correlationId?: string;
  /** The message that caused these events, when a consumer appends them. */
  causationId?: string;
  traceparent?: string;
};

/** FNV-1a: a stable hash so a subject always maps to the same relay partition. */
export function partitionOf(subject: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < subject.length; i++) {
    hash ^= subject.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return (hash >>> 0) % outboxPartitions;
}

/** The current version of a subject's stream (0 when it has none). */
export async function streamVersion(tx: Sql, subject: string): Promise<number> {
  const [row] = await tx.query<{ version: number }>(
    'SELECT coalesce(max(sequence), 0)::int AS version FROM outbox WHERE subject = $1',
    [subject],
  );
  return row?.version ?? 0;
}

/**
 * Appends events to the outbox inside the caller's transaction. With `expectedVersion`
 * (event-sourced streams) a concurrent writer makes this throw ConflictError.
 */
export async function appendToOutbox(
  tx: Sql,
  context: AppendContext,
  events: readonly Outgoing[],
  expectedVersion?: number,
): Promise<Envelope[]> {
  // Each event's sequence is its subject's current version plus its rank among this
  // append's events of that subject: computed by the INSERT itself, so an append is
  // one round trip. Without an expected version two concurrent writers of a subject
  // compute the same sequence and the (subject, sequence) key refuses the second.
  const envelopes: Envelope[] = events.map((event) => {
    const id = crypto.randomUUID();
    return {
      specversion: '1.0',
      id,
      source: context.source,
      type: event.type,
      subject: event.subject,
      time: context.now.toISOString(),
      datacontenttype: 'application/json',
      dataversion: catalogue[event.type].version,
      sequence: 0,
      correlationid: context.correlationId ?? id,
      ...(context.causationId === undefined ? {} : { causationid: context.causationId }),
      ...(context.traceparent === undefined ? {} : { traceparent: context.traceparent }),
      data: event.data,
    };
  });
  if (envelopes.length === 0) return envelopes;
  try {
    const rows = await tx.query<{ id: string; sequence: number }>(
      `INSERT INTO outbox (id, type, subject, sequence, partition, envelope)
       SELECT id, type, subject, sequence, partition, jsonb_set(e, '{sequence}', to_jsonb(sequence))
         FROM (SELECT (e->>'id')::uuid AS id, e->>'type' AS type, e->>'subject' AS subject, ($2::int[])[n] AS partition, e, n,
                      coalesce($3::int, (SELECT max(o.sequence) FROM outbox o WHERE o.subject = e->>'subject'), 0)
                        + row_number() OVER (PARTITION BY e->>'subject' ORDER BY n) AS sequence
                 FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS t(e, n)) AS appended
        ORDER BY n
       RETURNING id, sequence`,
      [JSON.stringify(envelopes), envelopes.map((e) => partitionOf(e.subject)), expectedVersion ?? null],
    );
    const sequences = new Map(rows.map((row) => [row.id, row.sequence]));
    for (const envelope of envelopes) envelope.sequence = sequences.get(envelope.id) ?? 0;
  } catch (error) {
    if ((error as { code?: string }).code === '23505') {
      const subject = envelopes[0]?.subject ?? 'the stream';
      throw new ConflictError(expectedVersion === undefined
        ? `a concurrent writer appended to ${subject} first`
        : `stream ${subject} is no longer at version ${expectedVersion}`);
    }
    throw error;
  }
  return envelopes;
}
