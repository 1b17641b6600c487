// Balancing over real instances: node:http servers on ephemeral ports stand for a
// service's instances, and one is stopped, broken or made unready while requests flow.
// Given instances, when requests go through, then they take turns, they go on to another
// instance only when that cannot do a write twice, and none healthy is a 503 at once.
import http from 'node:http';
import type net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createIdentities, silentLogger } from '@converge/platform';
import { createGateway } from './http.ts';
import { createPool, forward, parseBases, pick, watchHealth, type Outgoing, type Pool } from './upstreams.ts';

type Instance = {
  url: string;
  hits: string[];
  ready: number;
  stop(): Promise<void>;
  start(): Promise<void>;
};

const started: Instance[] = [];
afterEach(async () => {
  for (const instance of started.splice(0)) await instance.stop();
});

/** A service instance: /readyz answers `ready`; anything else is counted and answered, or the socket cut. */
async function instance(name: string, behaviour: 'answer' | 'cut' | 'silent' = 'answer'): Promise<Instance> {
  const hits: string[] = [];
  let server: http.Server | undefined;
  let port = 0;
  const self: Instance = {
    url: '',
    hits,
    ready: 200,
    async start() {
      server = http.createServer((request, response) => {
        if (request.url === '/readyz') {
          if (behaviour === 'silent') return; // never answers
          response.writeHead(self.ready, { 'content-type': 'application/json' }).end('{}');
          return;
        }
        hits.push(`${request.method ?? ''} ${request.url ?? ''}`);
        request.resume();
        request.on('end', () => {
          if (behaviour === 'cut') request.socket.destroy();
          else response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ from: name }));
        });
      });
      const listening = server;
      await new Promise<void>((resolve) => listening.listen(port, '127.0.0.1', resolve));
      port = (listening.address() as net.AddressInfo).port;
      self.url = `http://127.0.0.1:${port}`;
    },
    async stop() {
      const stopping = server;
      server = undefined;
      if (stopping === undefined) return;
      stopping.closeAllConnections();
      await new Promise((resolve) => stopping.close(resolve));
    },
  };
  await self.start();
  started.push(self);
  return self;
}

const get = (path = '/things'): Outgoing => ({
  method: 'GET',
  path,
  headers: new Headers(),
  body: undefined,
  timeoutMs: 2_000,
});
const post = (idempotencyKey?: string): Outgoing => ({
  method: 'POST',
  path: '/things',
  headers: new Headers({
    'content-type': 'application/json',
    ...(idempotencyKey === undefined ? {} : { 'idempotency-key': idempotencyKey }),
  }),
  body: Buffer.from('{"n":1}'),
  timeoutMs: 2_000,
});

async function answeredBy(pool: Pool, outgoing: Outgoing): Promise<string> {
  const forwarded = await forward(pool, outgoing, silentLogger);
  if (forwarded.outcome !== 'answered') throw new Error(`not answered: ${forwarded.outcome}`);
  return (JSON.parse(forwarded.payload.toString()) as { from: string }).from;
}

describe('parseBases', () => {
  it('given one URL, a comma-separated list or an array, when parsed, then bases without trailing slashes', () => {
    expect(parseBases('http://127.0.0.1:3001/')).toEqual(['http://127.0.0.1:3001']);
    expect(parseBases(' http://a:1 , http://b:2/api/ ,')).toEqual(['http://a:1', 'http://b:2/api']);
    expect(parseBases(['http://a:1', 'http://b:2,http://c:3'])).toEqual(['http://a:1', 'http://b:2', 'http://c:3']);
  });

  it('given something that is not an http base URL, when parsed, then it is refused with the culprit named', () => {
    expect(() => parseBases('')).toThrow(/no base URL/);
    expect(() => parseBases('http://a:1,localhost:3001')).toThrow(/"localhost:3001" is not an http/);
    expect(() => parseBases('127.0.0.1:3001')).toThrow(/not a URL/);
    expect(() => parseBases('http://a:1/?x=1')).toThrow(/query/);
  });
});

describe('forward', () => {
  it('given two healthy instances, when requests go through, then they take turns', async () => {
    const [a, b] = [await instance('a'), await instance('b')];
    const pool = createPool('order', [a.url, b.url]);
    const answers = [];
    for (let i = 0; i < 6; i++) answers.push(await answeredBy(pool, get()));
    expect(answers).toEqual(['a', 'b', 'a', 'b', 'a', 'b']);
  });

  it(
    'given one of two instances stopped, when requests go on, then every one succeeds on the other ' +
      'and the stopped one is marked down and no longer tried',
    async () => {
      const [a, b] = [await instance('a'), await instance('b')];
      const pool = createPool('order', `${a.url},${b.url}`);
      expect([await answeredBy(pool, get()), await answeredBy(pool, get())]).toEqual(['a', 'b']);
      await a.stop();
      expect(await answeredBy(pool, get())).toBe('b');
      expect(await answeredBy(pool, post('key-1'))).toBe('b');
      expect(pool.instances.map((i) => i.healthy)).toEqual([false, true]);
      for (let i = 0; i < 5; i++) expect(await answeredBy(pool, i % 2 === 0 ? get() : post())).toBe('b');
      expect(a.hits).toEqual(['GET /things']);
      expect(b.hits).toHaveLength(8);
    },
  );

  it(
    'given an instance that refuses connections, when a POST without a key is its turn, ' +
      'then it goes on to the next instance (nothing was sent)',
    async () => {
      const [gone, b] = [await instance('gone'), await instance('b')];
      const pool = createPool('order', [gone.url, b.url]);
      await gone.stop(); // never connected to: nothing pooled
      expect(await answeredBy(pool, post())).toBe('b');
      expect(pool.instances.map((i) => i.healthy)).toEqual([false, true]);
    },
  );

  it('given every instance known down, when a request comes, then none-healthy without a connection', async () => {
    const [a, b] = [await instance('a'), await instance('b')];
    const pool = createPool('order', [a.url, b.url]);
    await a.stop();
    await b.stop();
    expect((await forward(pool, get(), silentLogger)).outcome).toBe('unreachable');
    expect(pool.instances.every((i) => !i.healthy)).toBe(true);
    expect((await forward(pool, get(), silentLogger)).outcome).toBe('none-healthy');
    expect(pick(pool)).toBeUndefined();
  });

  it(
    'given an instance that cuts the connection after reading the request, when a POST without a key ' +
      'goes to it, then it is not repeated elsewhere (it may have taken effect)',
    async () => {
      const [cutter, good] = [await instance('cutter', 'cut'), await instance('good')];
      const pool = createPool('order', [cutter.url, good.url]);
      const forwarded = await forward(pool, post(), silentLogger);
      expect(forwarded.outcome).toBe('broken');
      expect(cutter.hits).toEqual(['POST /things']);
      expect(good.hits).toEqual([]);
      // A broken connection alone does not mark the instance down.
      expect(pool.instances.map((i) => i.healthy)).toEqual([true, true]);
    },
  );

  it(
    'given an instance that cuts the connection, when a GET or a POST with an Idempotency-Key goes to it, ' +
      'then it is tried once more over a new connection, then on the next instance, and answered',
    async () => {
      const [cutter, good] = [await instance('cutter', 'cut'), await instance('good')];
      const pool = createPool('order', [cutter.url, good.url]);
      expect(await answeredBy(pool, get())).toBe('good');
      pool.next = 0;
      expect(await answeredBy(pool, post('key-1'))).toBe('good');
      expect(cutter.hits).toEqual(['GET /things', 'GET /things', 'POST /things', 'POST /things']);
      expect(good.hits).toEqual(['GET /things', 'POST /things']);
    },
  );

  it('given every instance cuts, when a GET goes through, then one spare try, each once, and broken', async () => {
    const [x, y] = [await instance('x', 'cut'), await instance('y', 'cut')];
    const pool = createPool('order', [x.url, y.url]);
    expect((await forward(pool, get(), silentLogger)).outcome).toBe('broken');
    expect([x.hits.length, y.hits.length]).toEqual([2, 1]);
  });
});

describe('watchHealth', () => {
  it(
    'given an instance whose /readyz says 503 or does not answer in time, when health is checked, ' +
      'then it is down and gets no requests; when it is ready again, then it is back in turn',
    async () => {
      const [a, b, silent] = [await instance('a'), await instance('b'), await instance('silent', 'silent')];
      const pool = createPool('order', [a.url, b.url, silent.url]);
      const watch = watchHealth([pool], { intervalMs: 60_000, timeoutMs: 200, log: silentLogger });
      try {
        a.ready = 503;
        await watch.check();
        expect(pool.instances.map((i) => i.healthy)).toEqual([false, true, false]);
        for (let i = 0; i < 3; i++) expect(await answeredBy(pool, get())).toBe('b');

        a.ready = 200;
        await watch.check();
        expect(pool.instances.map((i) => i.healthy)).toEqual([true, true, false]);
        const answers = new Set<string>();
        for (let i = 0; i < 4; i++) answers.add(await answeredBy(pool, get()));
        expect([...answers].sort()).toEqual(['a', 'b']);
      } finally {
        watch.stop();
      }
    },
  );

  it('given a stopped instance restarted on its port, when health is checked, then it is up again', async () => {
    const [a, b] = [await instance('a'), await instance('b')];
    const pool = createPool('order', [a.url, b.url]);
    const watch = watchHealth([pool], { intervalMs: 50, timeoutMs: 200, log: silentLogger });
    try {
      await a.stop();
      await watch.check();
      expect(pool.instances[0]?.healthy).toBe(false);
      await a.start();
      // The timer's own rounds find it.
      await expect.poll(() => pool.instances[0]?.healthy, { timeout: 2_000, interval: 20 }).toBe(true);
    } finally {
      watch.stop();
    }
  });
});

describe('the gateway over several instances', () => {
  it(
    'given two instances of a service, when one stops, then requests through the gateway keep succeeding; ' +
      'when both are down, then 503 problem+json with Retry-After',
    async () => {
      const [a, b, elsewhere] = [await instance('a'), await instance('b'), await instance('elsewhere')];
      const gateway = await createGateway({
        log: silentLogger,
        auth: { verify: (await createIdentities()).verify },
        upstreams: {
          order: [a.url, b.url],
          inventory: elsewhere.url,
          payment: elsewhere.url,
          orchestrator: elsewhere.url,
          query: elsewhere.url,
        },
        health: { intervalMs: 3_000 },
      });
      try {
        const through = async () => {
          const response = await gateway.inject({ method: 'GET', url: '/api/order/things?x=1' });
          const from = response.statusCode === 200 ? response.json<{ from: string }>().from : '';
          return { status: response.statusCode, from };
        };
        expect([(await through()).from, (await through()).from]).toEqual(['a', 'b']);
        expect(a.hits).toEqual(['GET /things?x=1']);
        await a.stop();
        for (let i = 0; i < 4; i++) expect(await through()).toEqual({ status: 200, from: 'b' });
        await b.stop();
        const none = await gateway.inject({ method: 'GET', url: '/api/order/things' });
        expect(none.statusCode).toBe(503);
        expect(none.headers['content-type']).toContain('application/problem+json');
        expect(none.headers['retry-after']).toBe('3');
        expect(none.json()).toMatchObject({ status: 503, title: 'Unavailable' });
        // Both are known down now: refused at the gateway until a probe finds one ready.
        const known = await gateway.inject({ method: 'POST', url: '/api/order/things', payload: {} });
        expect(known.statusCode).toBe(503);
        expect(known.headers['retry-after']).toBe('3');
        expect(known.json<{ detail: string }>().detail).toContain('no instance of the order service is ready');
        // The other services are not touched by it.
        expect((await gateway.inject({ method: 'GET', url: '/api/inventory/things' })).statusCode).toBe(200);
      } finally {
        await gateway.close();
      }
    },
  );

  it('given a list with a bad URL, when the gateway is made, then it is refused with the service named', async () => {
    await expect(
      createGateway({
        log: silentLogger,
        auth: { verify: (await createIdentities()).verify },
        upstreams: { order: 'http://a:1,nope', inventory: 'x', payment: 'x', orchestrator: 'x', query: 'x' },
      }),
    ).rejects.toThrow(/upstream order: "nope" is not a URL/);
  });
});
