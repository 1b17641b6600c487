// Every wait on the database is bounded. A real PostgreSQL behind a TCP proxy that can
// stall (bytes stop, nothing closes: a hung server or a dead network path) shows that a
// request fails with 503 problem+json and Retry-After within the timeouts, and works
// again once the path does; a slow statement, an idle transaction and a full pool fail
// the same way. What is meant to wait long still can: a transaction that says so, and
// LISTEN, idle for longer than any statement may run.
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { openPostgres, type Db } from './db.ts';
import { isUnavailable } from './errors.ts';
import { createHttpApp, type HttpApp } from './http.ts';
import { silentLogger } from './log.ts';
import { sleep } from './retry.ts';
import { eventually, serverAvailable, servers, stallingProxy, type StallingProxy } from './testing.ts';

const pgUp = await serverAvailable('postgres');

const timeouts = { connectTimeoutMs: 400, statementTimeoutMs: 400, idleInTransactionTimeoutMs: 400 };
/** The statement timeout, the driver's grace after it and the scheduler's slack. */
const within = timeouts.statementTimeoutMs + 1000 + 1000;

const timed = async <T>(work: () => Promise<T>): Promise<{ value: T; ms: number }> => {
  const started = performance.now();
  const value = await work();
  return { value, ms: performance.now() - started };
};

describe.skipIf(!pgUp)('a PostgreSQL database with timeouts', () => {
  let proxy: StallingProxy;
  let db: Db;
  let app: HttpApp;

  beforeAll(async () => {
    proxy = await stallingProxy(servers.postgres);
    db = await openPostgres('timeouts-test', proxy.url, { max: 2, ...timeouts });
    app = await createHttpApp({ service: 'test', log: silentLogger });
    app.get('/now', async () => (await db.query<{ now: Date }>('SELECT now() AS now'))[0]);
    app.get('/slow', async () => db.query('SELECT pg_sleep(5)'));
    await app.ready();
  });

  afterAll(async () => {
    proxy.resume();
    await app.close();
    await db.close().catch(() => undefined);
    await proxy.close();
  });

  const expectUnavailable = (response: Awaited<ReturnType<HttpApp['inject']>>) => {
    expect(response.statusCode).toBe(503);
    expect(response.headers['content-type']).toContain('application/problem+json');
    expect(response.headers['retry-after']).toBe('1');
    expect(response.json()).toMatchObject({ status: 503, title: 'Unavailable' });
  };

  it(
    'given a working database, when its server hangs, then requests answer 503 with Retry-After within ' +
      'the timeouts (a statement sent, a connection being made), and 200 again once it answers',
    async () => {
      expect((await app.inject({ method: 'GET', url: '/now' })).statusCode).toBe(200);

      proxy.stall();
      // On the pooled connection: the statement goes out and no answer comes back.
      const sent = await timed(() => app.inject({ method: 'GET', url: '/now' }));
      expectUnavailable(sent.value);
      expect(sent.ms).toBeLessThan(within);
      // That connection was dropped; a new one gets no further than the proxy.
      const connecting = await timed(() => app.inject({ method: 'GET', url: '/now' }));
      expectUnavailable(connecting.value);
      expect(connecting.ms).toBeLessThan(timeouts.connectTimeoutMs + 1000);

      proxy.resume();
      await eventually(
        async () => ((await app.inject({ method: 'GET', url: '/now' })).statusCode === 200 ? true : undefined),
        5000,
        'a 200 after the resume',
      );
    },
    // A hang that the timeouts do not end fails here, not at the suite's limit.
    15_000,
  );

  it(
    'given a statement slower than the statement timeout, then the server cancels it: ' +
      '503, and the pool still works',
    async () => {
      const slow = await timed(() => app.inject({ method: 'GET', url: '/slow' }));
      expectUnavailable(slow.value);
      expect(slow.ms).toBeLessThan(timeouts.statementTimeoutMs + 1000);
      expect((await app.inject({ method: 'GET', url: '/now' })).statusCode).toBe(200);
    },
  );

  it(
    'given a transaction left idle longer than its timeout, then the server ends it ' + 'and the next one works',
    async () => {
      const idle = db.transaction(async (tx) => {
        await tx.query('SELECT 1');
        await sleep(timeouts.idleInTransactionTimeoutMs + 400);
        await tx.query('SELECT 2');
      });
      const failure = await idle.then(
        () => undefined,
        (error: unknown) => error,
      );
      expect(failure).toBeInstanceOf(Error);
      expect(isUnavailable(failure)).toBe(true);
      expect(await db.query('SELECT 1 AS n')).toEqual([{ n: 1 }]);
    },
  );

  it(
    'given every connection busy, when one more caller waits past the connect timeout, ' +
      'then it fails as unavailable',
    async () => {
      // Transactions held open by the caller: here the server must not end them first.
      const db = await openPostgres('timeouts-test', servers.postgres, {
        ...timeouts,
        max: 2,
        idleInTransactionTimeoutMs: 0,
      });
      onTestFinished(() => db.close());
      let release: () => void = () => undefined;
      const held = new Promise<void>((resolve) => (release = resolve));
      const holders = [1, 2].map(() => db.transaction(() => held));
      await eventually(() =>
        Promise.resolve(db.poolStats?.().idle === 0 && db.poolStats().total === 2 ? true : undefined),
      );

      const waiting = db.query('SELECT 1');
      await sleep(100);
      expect(db.poolStats?.()).toMatchObject({ waiting: 1 });
      expect(db.poolStats?.().oldestWaitMs).toBeGreaterThanOrEqual(90);
      const failure = await waiting.then(
        () => undefined,
        (error: unknown) => error,
      );
      expect((failure as Error).message).toMatch(/timeout exceeded when trying to connect/);
      expect(isUnavailable(failure)).toBe(true);

      release();
      await Promise.all(holders);
      expect(db.poolStats?.()).toMatchObject({ waiting: 0, oldestWaitMs: 0 });
    },
  );

  it(
    'given a transaction that says it may take long, then it waits past the statement timeout ' +
      '(a migration, its lock)',
    async () => {
      const rows = await db.transaction((tx) => tx.query<{ slept: string }>('SELECT pg_sleep(1)::text AS slept'), {
        statementTimeoutMs: 0,
      });
      expect(rows).toEqual([{ slept: '' }]);
      // The setting was the transaction's own: the next statement has the timeout again.
      await expect(db.query('SELECT pg_sleep(1)')).rejects.toMatchObject({ code: '57014' });
    },
  );

  it('given a LISTEN idle for longer than any statement may run, then it still hears NOTIFY', async () => {
    let heard = 0;
    const stop = await db.listen('timeouts_test', () => (heard += 1));
    try {
      await sleep(timeouts.statementTimeoutMs + timeouts.idleInTransactionTimeoutMs + 200);
      await db.query("SELECT pg_notify('timeouts_test', 'x')");
      await eventually(() => Promise.resolve(heard > 0 ? true : undefined), 3000, 'the notification');
    } finally {
      await stop();
    }
  });
});
