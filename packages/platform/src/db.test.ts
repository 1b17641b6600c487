// The PostgreSQL Db survives its server going away: a connection that dies in the
// middle of a transaction fails that transaction, never the process, and the pool
// serves the next one on a fresh connection (a server restart under load, the chaos
// suite's db-restart). Both Dbs count their statements and transactions for the cost
// model.
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { costCounters } from './cost.ts';
import { dropDatabase, ensureDatabase, openPglite, openPostgres, type Db } from './db.ts';
import { sleep } from './retry.ts';
import { serverAvailable, servers, uniqueName } from './testing.ts';

const pgUp = await serverAvailable('postgres');
const database = uniqueName('t');
const opened: Db[] = [];

afterAll(async () => {
  for (const db of opened) await db.close();
  if (pgUp) await dropDatabase(servers.postgres, database);
});

/** Ends a backend the way a server shutdown does (FATAL 57P01 on its connection). */
async function terminate(url: string, pid: number): Promise<void> {
  const admin = new pg.Client({ connectionString: url });
  await admin.connect();
  try {
    await admin.query('SELECT pg_terminate_backend($1)', [pid]);
  } finally {
    await admin.end();
  }
}

describe.skipIf(!pgUp)('a PostgreSQL database', () => {
  it(
    'given a transaction between two statements, when the server ends its connection, then ' +
      'the transaction fails, the process lives on and the next transaction works',
    async () => {
      const url = await ensureDatabase(servers.postgres, database);
      const db = await openPostgres('db-test', url, { max: 1 });
      opened.push(db);
      let backend: (pid: number) => void = () => undefined;
      const started = new Promise<number>((resolve) => (backend = resolve));

      const failing = db.transaction(async (tx) => {
        const [row] = await tx.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
        backend(row?.pid ?? 0);
        await sleep(300); // awaiting something else (the broker), holding the transaction open
        await tx.query('SELECT 1');
      });
      await terminate(url, await started);

      await expect(failing).rejects.toThrow();
      expect(await db.transaction((tx) => tx.query<{ n: number }>('SELECT 1 AS n'))).toEqual([{ n: 1 }]);
    },
  );

  // Statements of a transaction go out pipelined: BEGIN with the first, COMMIT behind
  // those the caller left in flight. Both outcomes of a statement left in flight count.
  it(
    'given a transaction whose last write is left in flight, when the transaction ' +
      'returns, then that write commits with it and its rows are readable',
    async () => {
      const db = await openPostgres('db-test', await ensureDatabase(servers.postgres, database), { max: 1 });
      opened.push(db);
      await db.exec('CREATE TABLE IF NOT EXISTS pipelined (k int PRIMARY KEY, v text NOT NULL)');
      const { written } = await db.transaction(async (tx) => {
        await tx.query('INSERT INTO pipelined (k, v) VALUES ($1, $2)', [1, 'first']);
        return {
          written: tx.query<{ k: number }>('INSERT INTO pipelined (k, v) VALUES ($1, $2) RETURNING k', [2, 'second']),
        };
      });
      expect(await written).toEqual([{ k: 2 }]);
      expect(await db.query('SELECT k, v FROM pipelined ORDER BY k')).toEqual([
        { k: 1, v: 'first' },
        { k: 2, v: 'second' },
      ]);
    },
  );

  it(
    'given a transaction whose last write fails in flight, when the transaction ' +
      'returns, then it throws that error and none of its writes stay',
    async () => {
      const db = await openPostgres('db-test', await ensureDatabase(servers.postgres, database), { max: 1 });
      opened.push(db);
      await db.exec('CREATE TABLE IF NOT EXISTS pipelined_fail (k int PRIMARY KEY)');
      const failing = db.transaction(async (tx) => {
        await tx.query('INSERT INTO pipelined_fail (k) VALUES ($1)', [1]);
        return { written: tx.query('INSERT INTO pipelined_fail (k) VALUES ($1)', [1]) };
      });
      await expect(failing).rejects.toThrow(/duplicate key/);
      expect(await db.query('SELECT k FROM pipelined_fail')).toEqual([]);
      expect(await db.transaction((tx) => tx.query<{ n: number }>('SELECT $1::int AS n', [7]))).toEqual([{ n: 7 }]);
    },
  );
});

describe('an embedded database', () => {
  it(
    'given a transaction whose last write fails in flight, when the transaction ' +
      'returns, then it throws that error and none of its writes stay',
    async () => {
      const db = await openPglite('db-test');
      opened.push(db);
      await db.exec('CREATE TABLE pipelined_fail (k int PRIMARY KEY)');
      const failing = db.transaction(async (tx) => {
        await tx.query('INSERT INTO pipelined_fail (k) VALUES ($1)', [1]);
        return { written: tx.query('INSERT INTO pipelined_fail (k) VALUES ($1)', [1]) };
      });
      await expect(failing).rejects.toThrow(/duplicate key/);
      expect(await db.query('SELECT k FROM pipelined_fail')).toEqual([]);
    },
  );
});

describe('the cost counters', () => {
  const counted = async (db: Db) => {
    const before = costCounters();
    await db.query('SELECT 1');
    await db.transaction(async (tx) => {
      await tx.query('SELECT $1::int AS n', [1]);
      await tx.query('SELECT 2');
    });
    await db.transaction(() => Promise.reject(new Error('rolled back'))).catch(() => undefined);
    const after = costCounters();
    return { statements: after.statements - before.statements, transactions: after.transactions - before.transactions };
  };

  it('given an embedded database, count every statement and every transaction, rolled back or not', async () => {
    const db = await openPglite('cost-test');
    opened.push(db);
    expect(await counted(db)).toEqual({ statements: 3, transactions: 2 });
  });

  it.skipIf(!pgUp)('given PostgreSQL, count the same (BEGIN and COMMIT are not statements of the code)', async () => {
    const db = await openPostgres('cost-test', await ensureDatabase(servers.postgres, database), { max: 2 });
    opened.push(db);
    expect(await counted(db)).toEqual({ statements: 3, transactions: 2 });
  });
});
