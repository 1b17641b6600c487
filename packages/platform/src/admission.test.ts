// Admission control in front of a write route: given an outbox whose relay is not
// publishing, when the backlog passes its bound, then the route answers 503 + Retry-After
// and writes nothing; once the backlog drains, it takes writes again. Retry-After follows
// the drain rate; the backlog is sampled once per interval however many requests come;
// a pool whose callers wait too long refuses at once, without asking the database.
import crypto from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { admissionControl, admitBefore, drainSeconds, type Admission } from './admission.ts';
import { costCounters } from './cost.ts';
import { openPglite, openPostgres, type Db } from './db.ts';
import { createHttpApp, type HttpApp } from './http.ts';
import { createLocalBus } from './local-bus.ts';
import { silentLogger } from './log.ts';
import { migrate, platformMigrations } from './migrate.ts';
import { appendToOutbox, type Outgoing } from './outbox.ts';
import { relayBatch } from './relay.ts';
import { sleep } from './retry.ts';
import { serverAvailable, servers } from './testing.ts';
import type { Bus } from './bus.ts';

const pgUp = await serverAvailable('postgres');
const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const sampleMs = 50;

// One database and one bus for the whole file (a PGlite open costs seconds); each test
// starts from an empty outbox.
let shared: { db: Db; busDb: Db; bus: Bus } | undefined;
beforeAll(async () => {
  const db = await openPglite('admission-test');
  await migrate(db, { platform: platformMigrations });
  const busDb = await openPglite('admission-test-bus');
  const bus = await createLocalBus(busDb);
  await bus.declare('audit', ['StockAdjusted']);
  shared = { db, busDb, bus };
});
afterAll(async () => {
  await shared?.bus.close();
  await shared?.busDb.close();
  await shared?.db.close();
});

async function outboxDb(): Promise<Db> {
  if (shared === undefined) throw new Error('no database');
  await shared.db.exec('TRUNCATE outbox RESTART IDENTITY; DROP TABLE IF EXISTS jobs');
  return shared.db;
}

function auditBus(): Bus {
  if (shared === undefined) throw new Error('no bus');
  return shared.bus;
}

const stockAdjusted = (subject: string): Outgoing => ({
  type: 'StockAdjusted',
  subject,
  data: { productId: subject, delta: 1, reason: 'restock', stockQuantity: 1, reserved: 0, sold: 0 },
});

const append = (db: Db, count: number) =>
  db.transaction((tx) =>
    appendToOutbox(
      tx,
      { source: 'inventory', now: new Date() },
      Array.from({ length: count }, () => stockAdjusted(crypto.randomUUID())),
    ),
  );

/** An app whose POST /adjust appends one event, behind admission control. */
async function guardedApp(db: Db, admission: Admission): Promise<HttpApp> {
  const app = await createHttpApp({ service: 'test', log: silentLogger });
  admitBefore(app, admission, { method: 'POST', url: '/adjust' });
  app.post('/adjust', async (_request, reply) => {
    await append(db, 1);
    return reply.code(201).send({ ok: true });
  });
  app.get('/adjust', () => ({ ok: true }));
  await app.ready();
  cleanups.push(() => app.close());
  return app;
}

const outboxRows = async (db: Db) =>
  (await db.query<{ n: number }>('SELECT count(*)::int AS n FROM outbox'))[0]?.n ?? 0;

describe('admission control at a write route', () => {
  it(
    'given the relay not publishing, when the backlog passes its bound, then the route answers 503 ' +
      'problem+json with Retry-After and writes nothing; after the backlog drains, 201 again',
    async () => {
      const db = await outboxDb();
      const admission = admissionControl(db, { maxBacklog: 3, maxPoolWaitMs: 1000, sampleMs });
      const app = await guardedApp(db, admission);
      const adjust = () => app.inject({ method: 'POST', url: '/adjust', payload: {} });

      for (let i = 0; i < 4; i++) {
        expect((await adjust()).statusCode).toBe(201);
        await sleep(sampleMs + 10);
      }
      const refused = await adjust();
      expect(refused.statusCode).toBe(503);
      expect(refused.headers['content-type']).toContain('application/problem+json');
      // Nothing drains: the longest wait there is.
      expect(refused.headers['retry-after']).toBe('30');
      expect(refused.json()).toMatchObject({ status: 503, title: 'Unavailable' });
      expect(await outboxRows(db)).toBe(4);
      // Only the guarded route is refused.
      expect((await app.inject({ method: 'GET', url: '/adjust' })).statusCode).toBe(200);
      expect(admission.shed).toMatchObject({ backlog: 1 });

      await relayBatch(db, auditBus(), 500);
      await sleep(sampleMs + 10);
      expect((await adjust()).statusCode).toBe(201);
      expect(await outboxRows(db)).toBe(5);
      expect(admission.metricLines('service="test"')).toContain(
        'converge_admission_shed_total{service="test",reason="backlog"} 1',
      );
    },
  );

  it('given a backlog draining at a measured rate, then Retry-After is the time it takes to drain', async () => {
    const db = await outboxDb();
    const bus = auditBus();
    let now = 0;
    const admission = admissionControl(db, { maxBacklog: 10, maxPoolWaitMs: 1000, sampleMs, clock: () => now });
    await append(db, 70);
    expect(await admission.check()).toBeDefined();
    // 20 published in one second: 20/s, 50 left, 3 s.
    await relayBatch(db, bus, 20);
    now = 1000;
    const refused = await admission.check();
    expect(refused?.retryAfterSeconds).toBe(drainSeconds(50, 20));
    expect(drainSeconds(50, 20)).toBe(3);
    expect(drainSeconds(5000, 0)).toBe(30);
    expect(drainSeconds(1, 1000)).toBe(1);
  });

  it('given many requests within one sample interval, then the backlog is read once', async () => {
    const db = await outboxDb();
    let now = 0;
    const admission = admissionControl(db, { maxBacklog: 10, maxPoolWaitMs: 1000, sampleMs, clock: () => now });
    const before = costCounters().statements;
    await Promise.all(Array.from({ length: 50 }, () => admission.check()));
    now = sampleMs - 1;
    await Promise.all(Array.from({ length: 50 }, () => admission.check()));
    expect(costCounters().statements - before).toBe(1);
    now = sampleMs;
    await admission.check();
    expect(costCounters().statements - before).toBe(2);
  });

  it('given a count of work in flight over its bound, then writes are refused for it', async () => {
    const db = await outboxDb();
    await db.exec('CREATE TABLE jobs (id int PRIMARY KEY, done boolean NOT NULL)');
    await db.exec('INSERT INTO jobs SELECT g, false FROM generate_series(1, 5) g');
    const admission = admissionControl(db, {
      maxBacklog: 1000,
      maxPoolWaitMs: 1000,
      sampleMs,
      inFlight: { sql: 'SELECT count(*) AS n FROM (SELECT 1 FROM jobs WHERE NOT done LIMIT $2) j', max: 4 },
    });
    expect((await admission.check())?.message).toMatch(/in flight/);
    await db.exec('UPDATE jobs SET done = true WHERE id = 1');
    await sleep(sampleMs + 10);
    expect(await admission.check()).toBeUndefined();
    expect(admission.shed).toMatchObject({ in_flight: 1, backlog: 0 });
  });

  it(
    'given as many requests in progress as the bound, when one more comes, then it is refused at once ' +
      'until one of them is answered',
    async () => {
      const db = await outboxDb();
      let release: () => void = () => undefined;
      const held = new Promise<void>((resolve) => (release = resolve));
      const app = await createHttpApp({ service: 'test', log: silentLogger });
      cleanups.push(() => app.close());
      const admission = admissionControl(db, { maxBacklog: 1000, maxPoolWaitMs: 1000, maxConcurrent: 2, sampleMs });
      admitBefore(app, admission, { method: 'POST', url: '/slow' });
      app.post('/slow', async () => {
        await held;
        return { ok: true };
      });
      const inProgress = [app.inject({ method: 'POST', url: '/slow' }), app.inject({ method: 'POST', url: '/slow' })];
      await sleep(20);
      const refused = await app.inject({ method: 'POST', url: '/slow' });
      expect(refused.statusCode).toBe(503);
      expect(refused.headers['retry-after']).toBe('1');
      expect(refused.json<{ detail: string }>().detail).toMatch(/2 requests like this one are in progress/);
      release();
      expect((await Promise.all(inProgress)).map((r) => r.statusCode)).toEqual([200, 200]);
      expect((await app.inject({ method: 'POST', url: '/slow' })).statusCode).toBe(200);
      expect(admission.shed).toMatchObject({ concurrency: 1 });
    },
  );
});

describe.skipIf(!pgUp)('admission control, a congested pool', () => {
  it('given callers waiting for a connection longer than the bound, then writes are refused at once', async () => {
    const db = await openPostgres('admission-test', servers.postgres, { max: 1, connectTimeoutMs: 5000 });
    cleanups.push(() => db.close());
    const admission = admissionControl(db, { maxBacklog: 1000, maxPoolWaitMs: 100, sampleMs });
    let release: () => void = () => undefined;
    const held = db.transaction(() => new Promise<void>((resolve) => (release = resolve)));
    const waiting = db.query('SELECT 1');
    await sleep(150);
    const before = costCounters().statements;
    const refused = await admission.check();
    expect(refused?.retryAfterSeconds).toBe(1);
    expect(refused?.message).toMatch(/wait \d+ ms for a connection/);
    expect(costCounters().statements - before).toBe(0);
    expect(admission.metricLines('service="test"')).toContain('converge_db_pool_waiting{service="test"} 1');
    release();
    await Promise.all([held, waiting]);
    expect(admission.shed).toMatchObject({ pool: 1 });
  });
});
