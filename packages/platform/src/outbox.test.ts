// The transactional outbox, on PGlite and on a real PostgreSQL server: per-subject
// sequences, CloudEvents envelopes, optimistic concurrency, and all-or-nothing commits.
import crypto from 'node:crypto';
import { checkEnvelope } from '@converge/contracts';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { dropDatabase, ensureDatabase, openPglite, openPostgres, type Db, type Sql } from './db.ts';
import { ConflictError } from './errors.ts';
import { migrate, platformMigrations } from './migrate.ts';
import { appendToOutbox, partitionOf, streamVersion, type AppendContext, type Outgoing } from './outbox.ts';
import { serverAvailable, servers, uniqueName } from './testing.ts';

const pgUp = await serverAvailable('postgres');

type Backend = { name: 'pglite' | 'postgres'; up: boolean; open(): Promise<Db> };
const database = uniqueName('t');
let serverUrl: string | undefined;
const opened: Db[] = [];

async function migrated(db: Db): Promise<Db> {
  opened.push(db);
  await migrate(db, { platform: platformMigrations });
  return db;
}

const backends: Backend[] = [
  { name: 'pglite', up: true, open: async () => migrated(await openPglite('outbox-test')) },
  {
    name: 'postgres',
    up: pgUp,
    open: async () => {
      serverUrl ??= await ensureDatabase(servers.postgres, database);
      return migrated(await openPostgres('outbox-test', serverUrl, { max: 25 }));
    },
  },
];

afterEach(async () => {
  for (const db of opened.splice(0)) await db.close();
});

afterAll(async () => {
  if (serverUrl !== undefined) await dropDatabase(servers.postgres, database);
});

const now = new Date('2025-03-04T05:06:07.089Z');
const context: AppendContext = { source: 'inventory', now };

function stockAdjusted(subject: string, delta = 1): Outgoing {
  return {
    type: 'StockAdjusted',
    subject,
    data: { productId: subject, delta, reason: 'restock', stockQuantity: 10, reserved: 0, sold: 0 },
  };
}

type OutboxRow = { position: number; subject: string; sequence: number; partition: number; type: string; id: string };

async function rowsOf(db: Db, subjects: readonly string[]): Promise<OutboxRow[]> {
  return db.query<OutboxRow>(
    'SELECT position, subject, sequence, partition, type, id::text AS id FROM ' +
      'outbox WHERE subject = ANY($1::text[]) ORDER BY position',
    [subjects],
  );
}

/** Resolves once `count` callers are waiting, so their transactions overlap for real. */
function barrier(count: number): () => Promise<void> {
  let waiting = 0;
  let release: () => void = () => undefined;
  const all = new Promise<void>((resolve) => (release = resolve));
  return () => {
    waiting += 1;
    if (waiting >= count) release();
    return all;
  };
}

describe.each(backends)('outbox on $name', (backend) => {
  describe.skipIf(!backend.up)('appendToOutbox', () => {
    it(
      'given two subjects, when events are appended over several ' +
        'transactions, then each subject counts 1..n in position order',
      async () => {
        const db = await backend.open();
        const [a, b] = [crypto.randomUUID(), crypto.randomUUID()];

        await db.transaction((tx) =>
          appendToOutbox(tx, context, [stockAdjusted(a), stockAdjusted(a), stockAdjusted(b)]),
        );
        await db.transaction((tx) => appendToOutbox(tx, context, [stockAdjusted(b), stockAdjusted(a)]));

        const rows = await rowsOf(db, [a, b]);
        expect(rows.map((r) => [r.subject, r.sequence])).toEqual([
          [a, 1],
          [a, 2],
          [b, 1],
          [b, 2],
          [a, 3],
        ]);
        expect(rows.map((r) => r.partition)).toEqual([a, a, b, b, a].map(partitionOf));
        expect(await db.transaction(async (tx) => [await streamVersion(tx, a), await streamVersion(tx, b)])).toEqual([
          3, 2,
        ]);
      },
    );

    it(
      'given a context with correlation, causation and trace, when an event is ' +
        'appended, then the stored envelope is a full CloudEvent',
      async () => {
        const db = await backend.open();
        const subject = crypto.randomUUID();
        const full: AppendContext = {
          ...context,
          correlationId: 'order-42',
          causationId: 'message-7',
          traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
        };

        const [envelope] = await db.transaction((tx) => appendToOutbox(tx, full, [stockAdjusted(subject, 3)]));

        expect(envelope).toEqual({
          specversion: '1.0',
          id: expect.stringMatching(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/) as unknown,
          source: 'inventory',
          type: 'StockAdjusted',
          subject,
          time: '2025-03-04T05:06:07.089Z',
          datacontenttype: 'application/json',
          dataversion: 1,
          sequence: 1,
          correlationid: 'order-42',
          causationid: 'message-7',
          traceparent: full.traceparent,
          data: { productId: subject, delta: 3, reason: 'restock', stockQuantity: 10, reserved: 0, sold: 0 },
        });
        expect(checkEnvelope(envelope).ok).toBe(true);
        const [stored] = await db.query<{ id: string; envelope: unknown }>(
          'SELECT id::text AS id, envelope FROM outbox WHERE subject = $1',
          [subject],
        );
        expect(stored).toEqual({ id: envelope?.id, envelope });
      },
    );

    it(
      'given no correlation or causation, when an event is appended, then ' +
        'it starts its own correlation and has no causation',
      async () => {
        const db = await backend.open();

        const [envelope] = await db.transaction((tx) =>
          appendToOutbox(tx, context, [stockAdjusted(crypto.randomUUID())]),
        );

        expect(envelope?.correlationid).toBe(envelope?.id);
        expect(envelope).not.toHaveProperty('causationid');
        expect(envelope).not.toHaveProperty('traceparent');
      },
    );

    it(
      'given a stream at version 2, when appending with expected version 1, then ' +
        'ConflictError and nothing is written; with 2 it appends as 3',
      async () => {
        const db = await backend.open();
        const subject = crypto.randomUUID();
        await db.transaction((tx) => appendToOutbox(tx, context, [stockAdjusted(subject), stockAdjusted(subject)]));

        const stale = db.transaction((tx) => appendToOutbox(tx, context, [stockAdjusted(subject)], 1));
        await expect(stale).rejects.toBeInstanceOf(ConflictError);
        await expect(stale).rejects.toThrow(`stream ${subject} is no longer at version 1`);
        const [appended] = await db.transaction((tx) => appendToOutbox(tx, context, [stockAdjusted(subject)], 2));

        expect(appended?.sequence).toBe(3);
        expect((await rowsOf(db, [subject])).map((r) => r.sequence)).toEqual([1, 2, 3]);
      },
    );

    it(
      'given a transaction that appends and then fails, when it rolls back, then ' +
        'the outbox holds nothing of it and the stream starts at 1',
      async () => {
        const db = await backend.open();
        const subject = crypto.randomUUID();

        const failed = db.transaction(async (tx: Sql) => {
          await appendToOutbox(tx, context, [stockAdjusted(subject), stockAdjusted(subject)]);
          throw new Error('the state change failed');
        });
        await expect(failed).rejects.toThrow('the state change failed');

        expect(await rowsOf(db, [subject])).toEqual([]);
        const [next] = await db.transaction((tx) => appendToOutbox(tx, context, [stockAdjusted(subject)]));
        expect(next?.sequence).toBe(1);
      },
    );

    it(
      'given ten writers that all read version 0, when each appends with ' +
        'expected version 0, then exactly one wins and the rest conflict',
      async () => {
        const db = await backend.open();
        const subject = crypto.randomUUID();
        const writers = 10;
        const gate = barrier(backend.name === 'postgres' ? writers : 1);

        const results = await Promise.allSettled(
          Array.from({ length: writers }, () =>
            db.transaction(async (tx) => {
              await tx.query('SELECT 1');
              await gate();
              return appendToOutbox(tx, context, [stockAdjusted(subject)], 0);
            }),
          ),
        );

        expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
        const rejected = results.filter((r) => r.status === 'rejected');
        expect(rejected).toHaveLength(writers - 1);
        for (const r of rejected) expect(r.reason).toBeInstanceOf(ConflictError);
        expect((await rowsOf(db, [subject])).map((r) => r.sequence)).toEqual([1]);
      },
    );

    it(
      'given twenty writers racing on one subject, when each retries its append on ' +
        'conflict, then the stream is exactly 1..20 with no duplicate',
      async () => {
        const db = await backend.open();
        const subject = crypto.randomUUID();
        const writers = 20;
        const gate = barrier(backend.name === 'postgres' ? writers : 1);
        let conflicts = 0;

        const appendOnce = async (first: boolean): Promise<string> => {
          try {
            const [envelope] = await db.transaction(async (tx) => {
              await tx.query('SELECT 1');
              if (first) await gate();
              return appendToOutbox(tx, context, [stockAdjusted(subject)]);
            });
            return envelope?.id ?? '';
          } catch (error) {
            if (!(error instanceof ConflictError)) throw error;
            conflicts += 1;
            return appendOnce(false);
          }
        };
        const ids = await Promise.all(Array.from({ length: writers }, () => appendOnce(true)));

        const rows = await rowsOf(db, [subject]);
        expect(rows.map((r) => r.sequence)).toEqual(Array.from({ length: writers }, (_, i) => i + 1));
        expect(new Set(rows.map((r) => r.id))).toEqual(new Set(ids));
        if (backend.name === 'postgres') expect(conflicts).toBeGreaterThan(0);
      },
    );
  });
});
