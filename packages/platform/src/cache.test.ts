// The read caches, in process and on a real Redis: a value is never replaced by an
// older version, an invalidation keeps a stale reader from putting its copy back, and
// with Redis out of reach reads fall through to the database while invalidations wait
// and are delivered once it is back.
import net from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { cached, memoryCache, redisCache, type ReadCache } from './cache.ts';
import { eventually, serverAvailable, servers, uniqueName } from './testing.ts';

const redisUp = await serverAvailable('redis');
const opened: ReadCache[] = [];
afterAll(async () => {
  for (const cache of opened) await cache.close();
});

const caches: { name: string; up: boolean; open: () => ReadCache }[] = [
  { name: 'memory', up: true, open: () => memoryCache() },
  { name: 'redis', up: redisUp, open: () => redisCache({ url: servers.redis, prefix: `${uniqueName('t')}:` }) },
];

describe.each(caches)('$name cache', ({ up, open }) => {
  it.skipIf(!up)(
    'given a value offered at a version, when an older one is offered, then the ' +
      'newer stays; an invalidation hides it until its version is offered',
    async () => {
      const cache = open();
      opened.push(cache);
      expect(await cache.get('k')).toBeUndefined();
      await cache.offer('k', 2, { n: 2 });
      await cache.offer('k', 1, { n: 1 });
      expect(await cache.get('k')).toEqual({ n: 2 });

      await cache.invalidate([{ key: 'k', version: 3 }]);
      expect(await cache.get('k')).toBeUndefined();
      // A reader that fetched version 2 before the write cannot bring it back.
      await cache.offer('k', 2, { n: 2 });
      expect(await cache.get('k')).toBeUndefined();
      await cache.offer('k', 3, { n: 3 });
      expect(await cache.get('k')).toEqual({ n: 3 });
      expect(cache.stats.hits).toBe(2);
    },
  );

  it.skipIf(!up)(
    'given a read through the cache, when the row is read again, then the second comes from the cache',
    async () => {
      const cache = open();
      opened.push(cache);
      let loads = 0;
      const load = () => {
        loads += 1;
        return Promise.resolve({ version: 1, value: 'row' });
      };
      expect(await cached(cache, 'r', load)).toBe('row');
      expect(await cached(cache, 'r', load)).toBe('row');
      expect(loads).toBe(1);
    },
  );
});

it(
  'given more entries than the in-process cache holds, ' + 'when one more arrives, then the least recently used goes',
  async () => {
    const cache = memoryCache({ maxEntries: 2 });
    await cache.offer('a', 1, 'a');
    await cache.offer('b', 1, 'b');
    expect(await cache.get('a')).toBe('a'); // a is now the most recent
    await cache.offer('c', 1, 'c');
    expect(await cache.get('b')).toBeUndefined();
    expect(await cache.get('a')).toBe('a');
    expect(await cache.get('c')).toBe('c');
  },
);

/** A TCP proxy to the real Redis that the test can cut and restore. */
async function proxy(): Promise<{
  url: string;
  cut(): Promise<void>;
  restore(): Promise<void>;
  close(): Promise<void>;
}> {
  const target = new URL(servers.redis);
  const sockets = new Set<net.Socket>();
  let server = net.createServer();
  const serve = (port: number) =>
    new Promise<number>((resolve) => {
      server = net.createServer((client) => {
        const upstream = net.connect({ host: target.hostname, port: Number(target.port || 6379) });
        for (const s of [client, upstream]) {
          sockets.add(s);
          s.on('error', () => s.destroy());
          s.on('close', () => sockets.delete(s));
        }
        client.pipe(upstream).pipe(client);
      });
      server.listen(port, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port));
    });
  const port = await serve(0);
  const cut = async () => {
    const closed = new Promise((resolve) => server.close(resolve));
    for (const s of sockets) s.destroy();
    await closed;
  };
  return {
    url: `redis://127.0.0.1:${port}`,
    cut,
    restore: async () => {
      await serve(port);
    },
    close: cut,
  };
}

it.skipIf(!redisUp)(
  'given Redis out of reach, when reads and writes go on, then reads fall through to ' +
    'the database, and a missed invalidation is delivered once Redis is back',
  async () => {
    const link = await proxy();
    const cache = redisCache({ url: link.url, prefix: `${uniqueName('t')}:`, timeoutMs: 100 });
    opened.push(cache);
    try {
      await cache.offer('p', 1, 'old');
      expect(await cache.get('p')).toBe('old');

      await link.cut();
      let loads = 0;
      const fromDb = () => {
        loads += 1;
        return Promise.resolve({ version: 2, value: 'new' });
      };
      expect(await cached(cache, 'p', fromDb)).toBe('new'); // the database answers
      await cache.invalidate([
        { key: 'p', version: 2 },
        { key: 'q', version: 5 },
      ]); // cannot reach Redis: kept
      expect(cache.stats.pendingInvalidations).toBe(2);
      expect(cache.stats.errors).toBeGreaterThan(0);

      await link.restore();
      // Until the invalidation got through, the key bypasses Redis (which still holds 'old').
      expect(await cached(cache, 'p', fromDb)).toBe('new');
      await eventually(
        () => Promise.resolve(cache.stats.pendingInvalidations === 0 ? true : undefined),
        10_000,
        'the invalidation delivered',
      );
      expect(await cache.get('p')).toBeUndefined();
      expect(await cached(cache, 'p', fromDb)).toBe('new');
      expect(await cache.get('p')).toBe('new');
      expect(loads).toBe(3);
    } finally {
      await link.close();
    }
  },
);
