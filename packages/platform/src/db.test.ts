// The PostgreSQL Db survives its server going away: a connection that dies in the
// middle of a transaction fails that transaction, never the process, and the pool
// serves the next one on a fresh connection (a server restart under load, the chaos
// suite's db-restart).
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { dropDatabase, ensureDatabase, openPostgres, type Db } from './db.ts';
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
  it('given a transaction between two statements, when the server ends its connection, then the transaction fails, the process lives on and the next transaction works', async () => {
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
  });
});
