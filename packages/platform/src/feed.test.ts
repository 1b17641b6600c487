// The feed, on PGlite and on a real PostgreSQL server: positions are handed out as
// events are published, without gaps and never behind what a reader already took,
// even while two relays publish and writers commit late; and the HTTP edge pages it.
import crypto from 'node:crypto';
import type { Envelope } from '@converge/contracts';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { dropDatabase, ensureDatabase, openPglite, openPostgres, type Db } from './db.ts';
import { readFeed, readFeedMarks, registerFeedRoutes } from './feed.ts';
import { createHttpApp } from './http.ts';
import { createLocalBus } from './local-bus.ts';
import { silentLogger } from './log.ts';
import { migrate, platformMigrations } from './migrate.ts';
import { appendToOutbox, type Outgoing } from './outbox.ts';
import { relayBatch, startRelay } from './relay.ts';
import { sleep } from './retry.ts';
import { eventually, serverAvailable, servers, uniqueName } from './testing.ts';

const pgUp = await serverAvailable('postgres');
const database = uniqueName('t');
let serverUrl: string | undefined;
const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});
afterAll(async () => {
  if (serverUrl !== undefined) await dropDatabase(servers.postgres, database);
});

function opened(db: Db): Db {
  cleanups.push(() => db.close());
  return db;
}

const backends = [
  { name: 'pglite', up: true, open: async () => opened(await openPglite('feed-test')), second: undefined },
  {
    name: 'postgres',
    up: pgUp,
    open: async () => {
      serverUrl ??= await ensureDatabase(servers.postgres, database);
      return opened(await openPostgres('feed-test', serverUrl));
    },
    /** A second pool on the same database: a second process. */
    second: async () => opened(await openPostgres('feed-test-2', serverUrl ?? '')),
  },
];

async function fresh(db: Db): Promise<Db> {
  await migrate(db, { platform: platformMigrations });
  await db.exec('TRUNCATE outbox RESTART IDENTITY');
  return db;
}

async function openBus() {
  const busDb = opened(await openPglite('feed-test-bus'));
  const bus = await createLocalBus(busDb);
  cleanups.push(() => bus.close());
  await bus.declare('audit', ['StockAdjusted']); // bound, or the bus would refuse what the relay publishes
  return bus;
}

const adjusted = (subject: string): Outgoing => ({
  type: 'StockAdjusted',
  subject,
  data: { productId: subject, delta: 1, reason: 'restock', stockQuantity: 1, reserved: 0, sold: 0 },
});

const append = (db: Db, subjects: readonly string[]) =>
  db.transaction((tx) => appendToOutbox(tx, { source: 'inventory', now: new Date() }, subjects.map(adjusted)));

/** Reads the whole feed page by page, as a catching-up consumer would. */
async function readAll(db: Db, pageSize: number): Promise<{ position: number; event: Envelope }[]> {
  const all: { position: number; event: Envelope }[] = [];
  for (let after = 0; ;) {
    const page = await readFeed(db, after, pageSize);
    all.push(...page.events);
    if (page.events.length === 0) return all;
    after = page.next;
  }
}

describe.each(backends)('feed on $name', (backend) => {
  it.skipIf(!backend.up)(
    'given events published in several batches, when the feed is read in pages, then ' +
      'positions run 1..n in publish order, each subject in sequence order',
    async () => {
      const db = await fresh(await backend.open());
      const bus = await openBus();
      const subjects = Array.from({ length: 5 }, () => crypto.randomUUID());
      for (let round = 0; round < 4; round++) await append(db, subjects);
      while ((await relayBatch(db, bus, 7)) > 0);

      const feed = await readAll(db, 3);
      expect(feed.map((e) => e.position)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
      for (const subject of subjects) {
        expect(feed.filter((e) => e.event.subject === subject).map((e) => e.event.sequence)).toEqual([1, 2, 3, 4]);
      }
      const page = await readFeed(db, 18, 10);
      expect(page).toMatchObject({ next: 20, head: 20 });
      expect(page.events.map((e) => e.position)).toEqual([19, 20]);
      expect(await readFeed(db, 20, 10)).toEqual({ events: [], next: 20, head: 20 });
      // The marks of a page are its events by id and time, at the same positions.
      const marks = await readFeedMarks(db, 12, 5);
      const full = await readFeed(db, 12, 5);
      expect(marks).toEqual({
        marks: full.events.map((e) => ({ position: e.position, id: e.event.id, time: e.event.time })),
        next: full.next,
        head: 20,
      });
    },
  );

  // Needs two transactions at once: PostgreSQL only (PGlite has one connection).
  if (backend.second !== undefined)
    it.skipIf(!backend.up)(
      'given a transaction that commits after later ones were published, when a reader follows ' +
        'the feed, then it still reads that one, after them, never behind its position',
      async () => {
        const db = await fresh(await backend.open());
        const other = await backend.second();
        const bus = await openBus();
        const late = crypto.randomUUID();
        let release: () => void = () => undefined;
        const held = new Promise<void>((resolve) => {
          release = resolve;
        });
        // Inserted first (the smaller outbox position), committed last.
        const slow = other.transaction(async (tx) => {
          const envelopes = await appendToOutbox(tx, { source: 'inventory', now: new Date() }, [adjusted(late)]);
          await held;
          return envelopes;
        });
        await sleep(100);
        await append(db, [crypto.randomUUID(), crypto.randomUUID()]);
        await relayBatch(db, bus, 100);
        const seen = await readFeed(db, 0, 100);
        expect(seen.events).toHaveLength(2);

        release();
        await slow;
        await relayBatch(db, bus, 100);
        const after = await readFeed(db, seen.next, 100);
        expect(after.events.map((e) => [e.position, e.event.subject])).toEqual([[3, late]]);
        const [positions] = await db.query<{ late: number; first: number }>(
          `SELECT (SELECT position FROM outbox WHERE subject = $1) AS late,
                  (SELECT min(position) FROM outbox WHERE subject <> $1) AS first`,
          [late],
        );
        expect(positions?.late).toBeLessThan(positions?.first ?? 0);
      },
    );

  it.skipIf(!backend.up)(
    'given two relays and writers racing, when a reader follows the feed all along, ' +
      'then it reads every event once, with no gap and no position twice',
    async () => {
      const db = await fresh(await backend.open());
      const other = backend.second === undefined ? db : await backend.second();
      const bus = await openBus();
      for (const [instance, pool] of [db, other].entries()) {
        const relay = await startRelay({ db: pool, bus, log: silentLogger, batchSize: 10 + instance * 7, pollMs: 50 });
        cleanups.push(() => relay.stop());
      }
      const subjects = Array.from({ length: 20 }, () => crypto.randomUUID());
      // Each writer its own subjects: writers of one stream conflict by design (outbox.ts).
      const writers = [db, other].map(async (pool, w) => {
        const mine = subjects.slice(w * 10, w * 10 + 10);
        const ids: string[] = [];
        for (let i = 0; i < 30; i++)
          ids.push(...(await append(pool, mine.slice((i * 3) % 10, ((i * 3) % 10) + 3))).map((e) => e.id));
        return ids;
      });
      const read: { position: number; event: Envelope }[] = [];
      let reading = true;
      const reader = (async () => {
        while (reading) {
          const page = await readFeed(db, read.at(-1)?.position ?? 0, 17);
          read.push(...page.events);
          if (page.events.length === 0) await sleep(10);
        }
      })();
      let ids: string[];
      try {
        ids = (await Promise.all(writers)).flat();
        await eventually(
          async () => ((await readFeed(db, 0, 1)).head === ids.length ? true : undefined),
          30_000,
          'every event in the feed',
        );
        await eventually(
          () => Promise.resolve(read.length >= ids.length ? true : undefined),
          30_000,
          'the reader to catch up',
        );
      } finally {
        reading = false;
        await reader;
      }

      expect(read.map((e) => e.position)).toEqual(Array.from({ length: ids.length }, (_, i) => i + 1));
      expect(new Set(read.map((e) => e.event.id))).toEqual(new Set(ids));
      for (const subject of subjects) {
        const sequences = read.filter((e) => e.event.subject === subject).map((e) => e.event.sequence);
        expect(sequences).toEqual(Array.from({ length: sequences.length }, (_, i) => i + 1));
      }
    },
  );

  it.skipIf(!backend.up)(
    'given the HTTP edge, when the feed is asked for, then it pages with next and ' +
      'head, and refuses bad positions and limits with problem+json',
    async () => {
      const db = await fresh(await backend.open());
      const bus = await openBus();
      await append(db, [crypto.randomUUID(), crypto.randomUUID(), crypto.randomUUID()]);
      await relayBatch(db, bus, 100);
      const app = await createHttpApp({ service: 'test', log: silentLogger });
      registerFeedRoutes(app, db);
      await app.ready();
      cleanups.push(() => app.close());

      const first = await app.inject({ method: 'GET', url: '/events?limit=2' });
      expect(first.statusCode).toBe(200);
      const body = first.json<{ events: { position: number; event: Envelope }[]; next: number; head: number }>();
      expect(body).toMatchObject({ next: 2, head: 3 });
      expect(body.events.map((e) => e.position)).toEqual([1, 2]);
      expect(body.events[0]?.event.type).toBe('StockAdjusted');
      expect(
        (await app.inject({ method: 'GET', url: '/events?after=2' })).json<{ events: unknown[] }>().events,
      ).toHaveLength(1);
      for (const query of ['after=-1', 'after=x', 'limit=0', 'limit=1001', 'from=1']) {
        const refused = await app.inject({ method: 'GET', url: `/events?${query}` });
        expect(refused.statusCode, query).toBe(400);
        expect(refused.headers['content-type'], query).toContain('application/problem+json');
      }
    },
  );
});
