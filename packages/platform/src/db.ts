// One database interface over PostgreSQL (node-postgres pool) and PGlite (embedded,
// in-process PostgreSQL). Services see only `Db`: parameterised queries that return
// rows, transactions, LISTEN, and close. bigint columns come back as numbers: every id
// and amount here stays far below 2^53. On a server, every wait is bounded: for a
// connection, for a statement, for a transaction left idle; a database that is hung or
// full fails the request in seconds (503, errors.ts) instead of holding it forever.
import fs from 'node:fs';
import { PGlite } from '@electric-sql/pglite';
import pg from 'pg';
import { countStatement, countTransaction } from './cost.ts';

export type Row = Record<string, unknown>;

export interface Sql {
  /** Runs one parameterised statement and returns its rows (use RETURNING for counts). */
  query<R extends object = Row>(text: string, params?: readonly unknown[]): Promise<R[]>;
}

export type TransactionOptions = {
  /**
   * The statement timeout inside this transaction instead of the database's (0: none),
   * for work known to take long, such as a migration or waiting for one. Servers only.
   */
  statementTimeoutMs?: number;
};

/** How the connection pool is doing, for admission control (admission.ts). */
export type PoolStats = {
  /** Connections open, and of those idle. */
  total: number;
  idle: number;
  /** Callers waiting for a connection, and how long the longest of them has waited. */
  waiting: number;
  oldestWaitMs: number;
};

export interface Db extends Sql {
  readonly kind: 'pglite' | 'postgres';
  readonly name: string;
  /** Runs a script of several statements (migrations only; no parameters). */
  exec(script: string): Promise<void>;
  /** Runs `fn` in one transaction: commit on return, rollback on throw. */
  transaction<T>(fn: (tx: Sql) => Promise<T>, options?: TransactionOptions): Promise<T>;
  /** Calls `onNotify` for every NOTIFY on `channel` until the returned stop is called. */
  listen(channel: string, onNotify: () => void): Promise<() => Promise<void>>;
  close(): Promise<void>;
  /** The pool's figures (servers; an embedded database has no pool). */
  poolStats?(): PoolStats;
}

const int8 = 20;
const numeric = 1700;

/** An embedded database: a directory (kept across restarts) or `memory://` for tests. */
// Most of a PGlite open (and of its initdb) is zeroing its shared buffers, 128MB by
// default; an embedded service's or a test's tables fit in far less.
const pgliteStartParams = [
  ...((PGlite as unknown as { defaultStartParams?: string[] }).defaultStartParams ?? []),
  '-c',
  'shared_buffers=16MB',
];

export async function openPglite(name: string, dataDir?: string): Promise<Db> {
  if (dataDir !== undefined) fs.mkdirSync(dataDir, { recursive: true });
  const lite = await PGlite.create(dataDir ?? 'memory://', {
    ...(pgliteStartParams.length > 2 ? { startParams: pgliteStartParams } : {}),
    parsers: { [int8]: (value: string) => Number(value), [numeric]: (value: string) => Number(value) },
  });
  const run = async <R extends object>(target: Pick<PGlite, 'query'>, text: string, params?: readonly unknown[]) => {
    countStatement();
    return (await target.query<R>(text, params as unknown[] | undefined)).rows;
  };
  return {
    kind: 'pglite',
    name,
    query: (text, params) => run(lite, text, params),
    exec: async (script) => {
      countStatement();
      await lite.exec(script);
    },
    transaction: (fn) => {
      countTransaction();
      return lite.transaction(async (tx) => {
        // As on a server: a statement the caller left in flight belongs to the transaction,
        // and its failure rolls the whole transaction back.
        const inFlight: Promise<unknown>[] = [];
        const result = await fn({
          query: <R extends object>(text: string, params?: readonly unknown[]) => {
            const rows = run<R>(tx, text, params);
            rows.catch(() => undefined);
            inFlight.push(rows);
            return rows;
          },
        });
        await Promise.all(inFlight);
        return result;
      });
    },
    listen: async (channel, onNotify) => {
      const stop = await lite.listen(channel, () => onNotify());
      return stop;
    },
    close: () => lite.close(),
  };
}

function typeParser(oid: number, format?: string): (value: string) => unknown {
  if (oid === int8 || oid === numeric) return (value: string) => Number(value);
  const builtIn = pg.types.getTypeParser as (oid: number, format: string) => (value: string) => unknown;
  return builtIn(oid, format ?? 'text');
}

// Statements with parameters run as named prepared statements: the server parses and
// plans each text once per connection instead of on every call, which is most of a
// small statement's cost. Texts are the constants in the code, so the set stays small.
const statementNames = new Map<string, string>();
function prepared(text: string, params?: readonly unknown[]): pg.QueryConfig {
  if (params === undefined || params.length === 0) return { text };
  let name = statementNames.get(text);
  if (name === undefined) {
    name = `s${String(statementNames.size + 1)}`;
    statementNames.set(text, name);
  }
  return { name, text, values: params as unknown[] };
}

// A round trip costs more than most statements here: on loopback each one wakes the
// server and then the client again. Connections run in pipeline mode, so a transaction
// sends BEGIN together with its first statement, and COMMIT together with whatever the
// caller did not wait for (its last writes, typically); the server still runs them in
// order. A statement that failed in the pipeline aborts the transaction, so the COMMIT
// behind it rolls back, and its error is what the transaction throws.
type Pipeline = {
  send<R extends object>(config: pg.QueryConfig & { query_timeout?: number }): Promise<R[]>;
  /** Sends COMMIT behind every statement still in flight; throws the first failure among them. */
  commit(): Promise<void>;
  /** Waits for every statement sent (after a failure, before ROLLBACK). */
  settle(): Promise<void>;
};

function pipelined(client: pg.PoolClient): Pipeline {
  // What a transaction sends in one turn of the event loop goes out in one write (BEGIN
  // with its first statement, the last writes with COMMIT): a write is a system call and
  // a wake-up of the server, which on this kind of machine cost more than most statements.
  const socket = (client as unknown as pg.Client).connection.stream;
  let corked = false;
  const coalesce = () => {
    if (corked) return;
    corked = true;
    socket.cork();
    setImmediate(() => {
      corked = false;
      socket.uncork();
    });
  };
  coalesce();
  const begun = client.query('BEGIN');
  begun.catch(() => undefined);
  const inFlight = new Set<Promise<unknown>>([begun]);
  void begun.then(
    () => inFlight.delete(begun),
    () => undefined,
  );
  return {
    send: <R extends object>(config: pg.QueryConfig & { query_timeout?: number }) => {
      coalesce();
      const sent = client.query<R & pg.QueryResultRow>(config);
      inFlight.add(sent);
      const done = () => inFlight.delete(sent);
      sent.then(done, done);
      // BEGIN's failure (a broken connection) is this statement's failure too.
      const rows = (inFlight.has(begun) ? begun.then(() => sent) : sent).then((result) => result.rows as R[]);
      // A statement left in flight reports its failure through the transaction; a caller
      // that never awaits it (the transaction threw) must not leave a rejection unhandled.
      rows.catch(() => undefined);
      return rows;
    },
    commit: async () => {
      const pending = [...inFlight];
      coalesce();
      const committed = client.query('COMMIT');
      const outcomes = await Promise.allSettled([...pending, committed]);
      const failed = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
      if (failed !== undefined) throw failed.reason;
    },
    settle: async () => {
      await Promise.allSettled([...inFlight]);
    },
  };
}

export type PostgresOptions = {
  max?: number;
  log?: (msg: string, fields?: Record<string, unknown>) => void;
  /** Longest wait for a connection, new or from the pool (0: none). */
  connectTimeoutMs?: number;
  /** Longest a statement may run on the server (0: none); see TransactionOptions. */
  statementTimeoutMs?: number;
  /** Longest a transaction may sit idle between statements before the server ends it (0: none). */
  idleInTransactionTimeoutMs?: number;
};

export const postgresDefaults = {
  connectTimeoutMs: 5_000,
  statementTimeoutMs: 10_000,
  idleInTransactionTimeoutMs: 60_000,
} as const;

// The statement timeout is the server's; when the server, or the way to it, hangs, no
// cancel ever comes back. The driver then gives up on its own this much later, and drops
// the connection (a pipelined one cannot skip an answer it never got).
const readGraceMs = 1_000;
// What a transaction without a statement timeout waits for an answer (a timer's limit).
const noReadTimeout = 2_147_483_647;
const readTimeoutFor = (statementTimeoutMs: number) =>
  statementTimeoutMs > 0 ? statementTimeoutMs + readGraceMs : noReadTimeout;

/** A database on a PostgreSQL server, through a connection pool. */
export async function openPostgres(name: string, url: string, options: PostgresOptions = {}): Promise<Db> {
  const { connectTimeoutMs, statementTimeoutMs, idleInTransactionTimeoutMs } = { ...postgresDefaults, ...options };
  const pool = new pg.Pool({
    connectionString: url,
    max: options.max ?? 10,
    pipeline: true,
    types: { getTypeParser: typeParser },
    connectionTimeoutMillis: connectTimeoutMs,
    keepAlive: true,
    // Sent at start-up, so each connection has them before its first statement.
    ...(statementTimeoutMs > 0
      ? { statement_timeout: statementTimeoutMs, query_timeout: readTimeoutFor(statementTimeoutMs) }
      : {}),
    ...(idleInTransactionTimeoutMs > 0 ? { idle_in_transaction_session_timeout: idleInTransactionTimeoutMs } : {}),
  });
  // An idle client whose server went away must not crash the process; the pool replaces it.
  pool.on('error', (error) => options.log?.('idle database client failed', { db: name, error: error.message }));
  // The pool listens for errors only on idle clients. A checked-out one whose server goes
  // away between statements (a transaction waiting for the broker), or right after it
  // changed hands (a release and the server's FATAL read in one socket chunk, before the
  // new holder resumed), emits an 'error' nobody hears, and that kills the process. So
  // every client always has a listener; the failing statement reports the error, and a
  // client that failed is discarded on release.
  pool.on('connect', (client) => client.on('error', () => undefined));
  // Every checkout goes through here, so the pool's queue is measured: how many wait,
  // since when (a Set keeps insertion order, and the pool serves in that order).
  const waitingSince = new Set<{ at: number }>();
  const acquire = async (): Promise<pg.PoolClient> => {
    const waiter = { at: performance.now() };
    waitingSince.add(waiter);
    try {
      return await pool.connect();
    } finally {
      waitingSince.delete(waiter);
    }
  };
  // A statement's error from the server (severity ERROR) leaves its connection usable;
  // any other (FATAL, a timeout, a broken socket) may not, and the connection is dropped.
  const release = (client: pg.PoolClient, error?: unknown) =>
    client.release(error === undefined || (error as { severity?: unknown }).severity === 'ERROR' ? undefined : true);
  release(await acquire());
  const listeners = new Set<pg.Client>();
  return {
    kind: 'postgres',
    name,
    query: async <R extends object>(text: string, params?: readonly unknown[]) => {
      countStatement();
      const client = await acquire();
      try {
        const rows = (await client.query<R & pg.QueryResultRow>(prepared(text, params))).rows as R[];
        release(client);
        return rows;
      } catch (error) {
        release(client, error);
        throw error;
      }
    },
    exec: async (script) => {
      countStatement();
      const client = await acquire();
      try {
        await client.query(script);
        release(client);
      } catch (error) {
        release(client, error);
        throw error;
      }
    },
    transaction: async (fn, transactionOptions = {}) => {
      countTransaction();
      const own = transactionOptions.statementTimeoutMs;
      if (own !== undefined && (!Number.isInteger(own) || own < 0)) throw new Error(`invalid statement timeout ${own}`);
      const tx = await acquire();
      const statements = pipelined(tx);
      if (own !== undefined) void statements.send({ text: `SET LOCAL statement_timeout = ${own}` });
      const readTimeout = own === undefined ? {} : { query_timeout: readTimeoutFor(own) };
      try {
        const result = await fn({
          query: <R extends object>(text: string, params?: readonly unknown[]) => {
            countStatement();
            return statements.send<R>({ ...prepared(text, params), ...readTimeout });
          },
        });
        await statements.commit();
        tx.release();
        return result;
      } catch (error) {
        try {
          await statements.settle();
          await tx.query('ROLLBACK');
          tx.release();
        } catch {
          tx.release(true);
        }
        throw error;
      }
    },
    listen: (channel, onNotify) =>
      listenWithReconnect(
        { connectionString: url, connectionTimeoutMillis: connectTimeoutMs, keepAlive: true },
        channel,
        onNotify,
        listeners,
        options.log,
      ),
    close: async () => {
      for (const listener of listeners) await listener.end().catch(() => undefined);
      await pool.end();
    },
    poolStats: () => {
      const oldest = waitingSince.values().next().value;
      return {
        total: pool.totalCount,
        idle: pool.idleCount,
        waiting: pool.waitingCount,
        oldestWaitMs: oldest === undefined ? 0 : performance.now() - oldest.at,
      };
    },
  };
}

// LISTEN needs a connection of its own. If it drops (server restart), reconnect with
// backoff and fire once: notifications sent while we were away are lost, so the caller
// must look for work it may have missed. It has no statement timeout: it runs none but
// LISTEN, and is idle the rest of the time, outside any transaction.
async function listenWithReconnect(
  config: pg.ClientConfig,
  channel: string,
  onNotify: () => void,
  listeners: Set<pg.Client>,
  log?: PostgresOptions['log'],
): Promise<() => Promise<void>> {
  let stopped = false;
  const isStopped = () => stopped;
  let current: pg.Client | undefined;
  let delay = 100;
  const connect = async (): Promise<void> => {
    const client = new pg.Client(config);
    client.on('notification', () => onNotify());
    client.on('error', (error) => {
      log?.('listen connection failed', { channel, error: error.message });
      listeners.delete(client);
      void client.end().catch(() => undefined);
      if (current === client) current = undefined;
      if (!stopped) setTimeout(() => void reconnect(), delay);
    });
    await client.connect();
    await client.query(`LISTEN "${channel.replace(/"/g, '')}"`);
    current = client;
    listeners.add(client);
    delay = 100;
  };
  const reconnect = async (): Promise<void> => {
    if (stopped || current !== undefined) return;
    try {
      await connect();
      onNotify();
    } catch {
      delay = Math.min(delay * 2, 5000);
      if (!isStopped()) setTimeout(() => void reconnect(), delay);
    }
  };
  await connect();
  return async () => {
    stopped = true;
    if (current !== undefined) {
      listeners.delete(current);
      await current.end().catch(() => undefined);
    }
  };
}

/** Creates the database on the server if it does not exist yet (cluster start-up). */
export async function ensureDatabase(serverUrl: string, database: string): Promise<string> {
  if (!/^[a-z_][a-z0-9_]*$/.test(database)) throw new Error(`invalid database name ${database}`);
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  try {
    const found = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [database]);
    if (found.rowCount === 0) {
      try {
        await admin.query(`CREATE DATABASE ${database}`);
      } catch (error) {
        // Another instance created it first.
        if ((error as { code?: string }).code !== '42P04') throw error;
      }
    }
  } finally {
    await admin.end();
  }
  const url = new URL(serverUrl);
  url.pathname = `/${database}`;
  return url.toString();
}

/** Drops a database (tests only). */
export async function dropDatabase(serverUrl: string, database: string): Promise<void> {
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  try {
    await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
  } finally {
    await admin.end();
  }
}
