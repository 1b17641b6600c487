// The HTTP edge when a dependency cannot take a request: every database error that a
// later retry may not meet (server gone, hung, full, a statement timed out, a
// transaction that lost a race) answers 503 problem+json with Retry-After, never 500;
// an error of the request itself stays what it is. The edge also bounds how long a
// client may take to send its request. When the database goes away for real: a real
// PostgreSQL reached through a TCP proxy the test can cut, so the driver fails exactly
// as it does when the server dies.
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openPostgres, type Db } from './db.ts';
import { isUnavailable, isUnreachable, UnavailableError } from './errors.ts';
import { createHttpApp, type HttpApp } from './http.ts';
import { silentLogger } from './log.ts';
import { serverAvailable, servers, stallingProxy, type StallingProxy } from './testing.ts';

const pgUp = await serverAvailable('postgres');

/** An error as node-postgres gives it: the server's SQLSTATE in `code`. */
const sqlError = (code: string, message = `failed with ${code}`, severity = 'ERROR') =>
  Object.assign(new Error(message), { code, severity });

const transient: [string, Error][] = [
  ['connection failure (08006)', sqlError('08006')],
  ['server closed the connection (08003)', sqlError('08003')],
  ['disk full (53100)', sqlError('53100', 'could not extend file: No space left on device')],
  ['out of memory (53200)', sqlError('53200')],
  ['too many connections (53300)', sqlError('53300', 'sorry, too many clients already', 'FATAL')],
  ['statement timeout (57014)', sqlError('57014', 'canceling statement due to statement timeout')],
  ['server shutting down (57P01)', sqlError('57P01', 'terminating connection', 'FATAL')],
  ['server starting up (57P03)', sqlError('57P03', 'the database system is starting up', 'FATAL')],
  ['idle transaction ended (25P03)', sqlError('25P03', 'terminating connection due to idle-in-transaction timeout')],
  ['lock timeout (55P03)', sqlError('55P03')],
  ['serialization failure (40001)', sqlError('40001', 'could not serialize access')],
  ['deadlock (40P01)', sqlError('40P01', 'deadlock detected')],
  ['pool wait timeout', new Error('timeout exceeded when trying to connect')],
  ['connect timeout', new Error('Connection terminated due to connection timeout')],
  ['no answer to a statement', new Error('Query read timeout')],
  ['refused', Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' })],
];

const permanent: [string, Error][] = [
  ['unique violation (23505)', sqlError('23505', 'duplicate key value violates unique constraint')],
  ['undefined table (42P01)', sqlError('42P01', 'relation "nope" does not exist')],
  ['check violation (23514)', sqlError('23514')],
  ['a bug', new TypeError('cannot read properties of undefined')],
];

describe('which errors mean "try again later"', () => {
  it.each(transient)('given %s, then it is unavailable', (_name, error) => {
    expect(isUnavailable(error)).toBe(true);
  });

  it.each(permanent)('given %s, then it is not', (_name, error) => {
    expect(isUnavailable(error)).toBe(false);
  });

  it('given a server that is there but busy, then it is unavailable without being unreachable', () => {
    expect(isUnreachable(sqlError('40001'))).toBe(false);
    expect(isUnreachable(sqlError('53100'))).toBe(false);
    expect(isUnreachable(sqlError('08006'))).toBe(true);
  });
});

describe('the HTTP edge, a dependency that cannot take the request', () => {
  let app: HttpApp;
  let thrown: Error = new Error('unset');

  beforeAll(async () => {
    app = await createHttpApp({ service: 'test', log: silentLogger });
    app.get('/fail', () => Promise.reject(thrown));
    await app.ready();
  });
  afterAll(() => app.close());

  it.each(transient)('given %s, then 503 problem+json with Retry-After, never 500', async (_name, error) => {
    thrown = error;
    const response = await app.inject({ method: 'GET', url: '/fail' });
    expect(response.statusCode).toBe(503);
    expect(response.headers['content-type']).toContain('application/problem+json');
    expect(response.headers['retry-after']).toBe('1');
    expect(response.json()).toMatchObject({ status: 503, title: 'Unavailable' });
    expect(response.body).not.toContain(error.message);
  });

  it.each(permanent)('given %s, then 500 without its details', async (_name, error) => {
    thrown = error;
    const response = await app.inject({ method: 'GET', url: '/fail' });
    expect(response.statusCode).toBe(500);
    expect(response.body).not.toContain(error.message);
  });

  it('given an UnavailableError that says when to come back, then Retry-After says so', async () => {
    thrown = new UnavailableError('the outbox is 9000 events behind', 7);
    const response = await app.inject({ method: 'GET', url: '/fail' });
    expect(response.statusCode).toBe(503);
    expect(response.headers['retry-after']).toBe('7');
    expect(response.json()).toMatchObject({ status: 503, detail: 'the outbox is 9000 events behind' });
  });
});

describe('the HTTP edge, a slow client', () => {
  it(
    'given a client that sends half a request and stops, then the server ends it ' + 'within the request timeout',
    async () => {
      const app = await createHttpApp({ service: 'test', log: silentLogger, requestTimeoutMs: 300 });
      app.post('/echo', (request) => request.body);
      const address = new URL(await app.listen({ port: 0, host: '127.0.0.1' }));
      try {
        const started = performance.now();
        const answer = await new Promise<string>((resolve) => {
          let received = '';
          const socket = net.connect(Number(address.port), address.hostname, () => {
            socket.write(
              'POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"a"',
            );
          });
          socket.on('data', (chunk: Buffer) => (received += chunk.toString()));
          socket.on('error', () => undefined);
          socket.on('close', () => resolve(received));
        });
        expect(performance.now() - started).toBeLessThan(2000);
        expect(answer).toMatch(/^HTTP\/1\.1 408/);
      } finally {
        await app.close();
      }
    },
  );
});

describe.skipIf(!pgUp)('the HTTP edge, database out of reach', () => {
  let proxy: StallingProxy;
  let db: Db;
  let app: HttpApp;

  beforeAll(async () => {
    proxy = await stallingProxy(servers.postgres);
    db = await openPostgres('http-test', proxy.url, { max: 2 });
    app = await createHttpApp({ service: 'test', log: silentLogger });
    app.get('/now', async () => (await db.query<{ now: Date }>('SELECT now() AS now'))[0]);
    await app.ready();
  });

  afterAll(async () => {
    await app.close();
    await db.close().catch(() => undefined);
  });

  it(
    'given a working database, when the proxy is cut, then reads ' +
      'answer 503 problem+json with Retry-After instead of 500',
    async () => {
      expect((await app.inject({ method: 'GET', url: '/now' })).statusCode).toBe(200);

      await proxy.close();
      const cut = await app.inject({ method: 'GET', url: '/now' });
      const refused = await app.inject({ method: 'GET', url: '/now' });

      for (const response of [cut, refused]) {
        expect(response.statusCode).toBe(503);
        expect(response.headers['content-type']).toContain('application/problem+json');
        expect(response.headers['retry-after']).toBe('1');
        expect(response.json()).toMatchObject({ status: 503, title: 'Unavailable' });
      }
    },
  );
});
