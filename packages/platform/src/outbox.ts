// Transactional outbox: a state change and the events it causes commit in one
// transaction, here; the relay publishes them later. The outbox doubles as an event
// store: each subject is a stream whose `sequence` is its version, and appending with
// an expected version that is no longer current fails on the (subject, sequence) key.
// Each event is also stamped, for every consumer that binds only some of the source's
// types, with the subject's previous sequence among those types (subscriptions.ts), so
// such a consumer still tells a lost event from one it never needed.
import crypto from 'node:crypto';
import { catalogue, familiesOf, type DomainEvent, type Envelope, type Family } from '@converge/contracts';
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

/** Events of one cause, for an append of many causes at once (a consumer batch). */
export type CausedEvents = {
  context: AppendContext;
  events: readonly Outgoing[];
  /** The version the events' streams must be at (event-sourced streams); see appendToOutbox. */
  expectedVersion?: number;
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

function envelopeOf(context: AppendContext, event: Outgoing): Envelope {
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
}

const families = new Map<string, Family[]>();
const familiesFor = (source: string): Family[] => {
  let found = families.get(source);
  if (found === undefined) families.set(source, (found = familiesOf(source)));
  return found;
};

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
  return appendCaused(tx, [{ context, events, ...(expectedVersion === undefined ? {} : { expectedVersion }) }]);
}

/**
 * Appends the events of many causes in one statement (a consumer batch): each keeps its
 * cause's correlation, and each group's expected version applies to its own streams.
 */
export async function appendCaused(tx: Sql, groups: readonly CausedEvents[]): Promise<Envelope[]> {
  const envelopes: Envelope[] = [];
  const expected: (number | null)[] = [];
  const sources = new Set<string>();
  for (const group of groups) {
    for (const event of group.events) {
      envelopes.push(envelopeOf(group.context, event));
      expected.push(group.expectedVersion ?? null);
      sources.add(group.context.source);
    }
  }
  if (envelopes.length === 0) return envelopes;
  // Each event's sequence is its subject's current version (or the expected one) plus
  // its rank among this append's events of that subject: computed by the INSERT itself,
  // so an append is one round trip. Without an expected version two concurrent writers
  // of a subject compute the same sequence and the (subject, sequence) key refuses the
  // second. Its `prev` stamps come from the rows before it, in the table or this append.
  const stamps = [...sources].flatMap((source) =>
    familiesFor(source).map((f) => ({ source, key: f.key, types: f.types })),
  );
  try {
    const rows = await tx.query<{ id: string; sequence: number }>(
      `WITH input AS (
         SELECT e, n, e->>'subject' AS subject, e->>'type' AS type, e->>'source' AS source,
                ($2::int[])[n] AS partition, ($3::int[])[n] AS expected
           FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS t(e, n)
       ), appended AS (
         SELECT input.*, coalesce(expected, (SELECT max(o.sequence) FROM outbox o WHERE o.subject = input.subject), 0)
                  + row_number() OVER (PARTITION BY subject ORDER BY n) AS sequence
           FROM input
       ), stamped AS (
         SELECT a.*, (SELECT coalesce(jsonb_object_agg(f.key, coalesce(greatest(
                         (SELECT max(o.sequence) FROM outbox o WHERE o.subject = a.subject AND o.type = ANY(f.types)),
                         (SELECT max(b.sequence) FROM appended b
                           WHERE b.subject = a.subject AND b.n < a.n AND b.type = ANY(f.types))), 0)),
                       '{}'::jsonb)
                        FROM jsonb_to_recordset($4::jsonb) AS f(source text, key text, types text[])
                       WHERE f.source = a.source AND a.type = ANY(f.types)) AS prevs
           FROM appended a
       )
       INSERT INTO outbox (id, type, subject, sequence, partition, envelope)
       SELECT (e->>'id')::uuid, type, subject, sequence, partition,
              e || jsonb_build_object('sequence', sequence) || prevs
         FROM stamped ORDER BY n
       RETURNING id, sequence`,
      [JSON.stringify(envelopes), envelopes.map((e) => partitionOf(e.subject)), expected, JSON.stringify(stamps)],
    );
    const sequences = new Map(rows.map((row) => [row.id, row.sequence]));
    for (const envelope of envelopes) envelope.sequence = sequences.get(envelope.id) ?? 0;
  } catch (error) {
    if ((error as { code?: string }).code === '23505') {
      const subject = envelopes[0]?.subject ?? 'the stream';
      const version = groups.length === 1 ? groups[0]?.expectedVersion : undefined;
      throw new ConflictError(
        version === undefined
          ? `a concurrent writer appended to ${subject} first`
          : `stream ${subject} is no longer at version ${version}`,
      );
    }
    throw error;
  }
  return envelopes;
}
