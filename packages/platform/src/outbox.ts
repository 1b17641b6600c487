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
  const versions = new Map<string, number>();
  const envelopes: Envelope[] = [];
  for (const event of events) {
    let version = versions.get(event.subject);
    // With an expected version there is nothing to read: if another writer got there
    // first, the (subject, sequence) key refuses this append below.
    version ??= expectedVersion ?? (await streamVersion(tx, event.subject));
    version += 1;
    versions.set(event.subject, version);
    const id = crypto.randomUUID();
    const envelope: Envelope = {
      specversion: '1.0',
      id,
      source: context.source,
      type: event.type,
      subject: event.subject,
      time: context.now.toISOString(),
      datacontenttype: 'application/json',
      dataversion: catalogue[event.type].version,
      sequence: version,
      correlationid: context.correlationId ?? id,
      ...(context.causationId === undefined ? {} : { causationid: context.causationId }),
      ...(context.traceparent === undefined ? {} : { traceparent: context.traceparent }),
      data: event.data,
    };
    envelopes.push(envelope);
  }
  if (envelopes.length === 0) return envelopes;
  try {
    await tx.query(
      `INSERT INTO outbox (id, type, subject, sequence, partition, envelope)
       SELECT (e->>'id')::uuid, e->>'type', e->>'subject', (e->>'sequence')::int, ($2::int[])[n], e
       FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS t(e, n)
       ORDER BY n`,
      [JSON.stringify(envelopes), envelopes.map((e) => partitionOf(e.subject))],
    );
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
