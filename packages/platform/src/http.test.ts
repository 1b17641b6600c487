// The HTTP edge when the database goes away: a real PostgreSQL reached through a TCP
// proxy the test can cut, so the driver fails exactly as it does when the server dies.
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openPostgres, type Db } from './db.ts';
import { createHttpApp, type HttpApp } from './http.ts';
import { silentLogger } from './log.ts';
import { serverAvailable, servers } from './testing.ts';

const pgUp = await serverAvailable('postgres');

describe.skipIf(!pgUp)('the HTTP edge, database out of reach', () => {
  const sockets = new Set<net.Socket>();
  let proxy: net.Server;
  let db: Db;
  let app: HttpApp;

  beforeAll(async () => {
    const target = new URL(servers.postgres);
    proxy = net.createServer((client) => {
      const upstream = net.connect(Number(target.port || 5432), target.hostname);
      for (const socket of [client, upstream]) {
        sockets.add(socket);
        socket.on('error', () => undefined);
        socket.on('close', () => sockets.delete(socket));
      }
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    const { port } = proxy.address() as net.AddressInfo;
    const url = new URL(servers.postgres);
    url.hostname = '127.0.0.1';
    url.port = String(port);
    db = await openPostgres('http-test', url.toString(), { max: 2 });
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

      proxy.close();
      for (const socket of sockets) socket.destroy();
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
