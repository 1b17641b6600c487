// The gateway and the dashboard over the real system (embedded, in memory), over real
// sockets: every service and the gateway listen on ephemeral ports and the tests speak
// HTTP to the gateway as a client or a browser would. The browser part drives the
// dashboard in headless Chromium when it is installed (CI must have it). Callers are
// known as they are to a user: by the demo API keys, which the gateway exchanges for
// tokens, or by a bearer token; the dashboard signs in with the demo sign-in.
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger, type HttpApp } from '@converge/platform';
import { demoCatalogue, seedDemo } from '../scripts/demo.ts';
import { serviceNames } from '../system/system.ts';
import type { FastifyRequest } from 'fastify';
import {
  createGateway,
  demoApiKey,
  demoApiKeys,
  demoIdentities,
  type DemoName,
  type GatewayAuth,
  type Overview,
} from '../services/gateway/main.ts';
import { boot, type Harness } from './harness.ts';

const chromiumPath = '/usr/bin/chromium';
const haveChromium = fs.existsSync(chromiumPath);
if (!haveChromium && process.env.CI !== 'true') {
  console.warn(
    `\n  NOTICE: ${chromiumPath} is missing, so the dashboard browser test is skipped (apt-get install -y chromium).\n`,
  );
}

type Json = Record<string, unknown>;

/** The headers of a request made as one of the demo identities, by its API key. */
const as = (name: DemoName): Record<string, string> => ({ 'x-api-key': demoApiKey(name) });

async function call(
  url: string,
  init: RequestInit = {},
  caller?: DemoName,
): Promise<{ status: number; type: string; headers: Headers; body: Json }> {
  const headers = {
    ...(init.headers as Record<string, string> | undefined),
    ...(caller === undefined ? {} : as(caller)),
  };
  const response = await fetch(url, { ...init, headers });
  const text = await response.text();
  return {
    status: response.status,
    type: response.headers.get('content-type') ?? '',
    headers: response.headers,
    body: text === '' ? {} : (JSON.parse(text) as Json),
  };
}

const placeOrder = (site: string, userId: DemoName, productId: string, quantity: number, key: string) =>
  call(
    `${site}/api/order/orders`,
    {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'idempotency-key': key },
      body: JSON.stringify({ items: [{ productId, quantity }] }),
    },
    userId,
  );

/** A port nobody listens on: bind one, then let it go. */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function eventually<T>(probe: () => Promise<T | undefined>, timeoutMs: number, what: string): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe('gateway and dashboard (embedded)', () => {
  let h: Harness;
  let gateway: HttpApp;
  let site: string;
  let upstreams: Record<(typeof serviceNames)[number], string>;
  const product = demoCatalogue[0]?.productId ?? '';

  const gatewayAuth = (): GatewayAuth => ({
    verify: h.system.identities.verify,
    issuer: h.system.identities.issuer,
    apiKeys: demoApiKeys(),
    demo: demoIdentities,
  });
  const parkedDeadLetters = async () => {
    const parked = await Promise.all(
      serviceNames.map(
        async (name) =>
          (await call(`${upstreams[name]}/dead-letters`, { headers: await h.auth() })).body.parked as number,
      ),
    );
    return parked.reduce((a, b) => a + b, 0);
  };

  beforeAll(async () => {
    h = await boot('embedded');
    await seedDemo(h.system);
    const urls: Partial<typeof upstreams> = {};
    for (const name of serviceNames) urls[name] = await h.system.services[name].listen(0, '127.0.0.1');
    upstreams = urls as typeof upstreams;
    gateway = await createGateway({ log: silentLogger, upstreams, auth: gatewayAuth() });
    site = await gateway.listen({ port: 0, host: '127.0.0.1' });
    // The order service prices from its replica of the catalogue, filled by events.
    await eventually(
      async () => {
        const [row] = await h.system.dbs.order.query<{ n: number }>('SELECT count(*)::int AS n FROM catalogue');
        return (row?.n ?? 0) >= demoCatalogue.length ? true : undefined;
      },
      15_000,
      'the demo catalogue in the order service',
    );
  });

  afterAll(async () => {
    await gateway.close();
    await h.stop();
  });

  it(
    'given the system behind the gateway, when an order is posted through ' +
      'it, then it completes and reads back through the gateway',
    async () => {
      const key = crypto.randomUUID();
      const placed = await placeOrder(site, 'alice', product, 2, key);
      expect(placed.status).toBe(201);
      expect(placed.body).toMatchObject({
        userId: 'alice',
        status: 'PENDING',
        items: [{ productId: product, quantity: 2 }],
      });
      const orderId = placed.body.orderId as string;
      h.acknowledged.push({ orderId, userId: 'alice', idempotencyKey: key });
      expect(placed.headers.get('location')).toBe(`/api/order/orders/${orderId}`);
      expect(placed.headers.get('etag')).toBe(`"${orderId}:1"`);

      const final = await eventually(
        async () => {
          const read = await call(`${site}/api/order/orders/${orderId}`, {}, 'alice');
          return read.body.status === 'PENDING' ? undefined : read;
        },
        20_000,
        'the order to leave PENDING',
      );
      expect(final.status).toBe(200);
      expect(final.body).toMatchObject({ orderId, status: 'COMPLETED' });

      const replay = await placeOrder(site, 'alice', product, 2, key);
      expect(replay.status).toBe(201);
      expect(replay.headers.get('idempotent-replayed')).toBe('true');
      expect(replay.body.orderId).toBe(orderId);

      const listed = await call(`${site}/api/order/orders?limit=5`, {}, 'alice');
      expect((listed.body.items as Json[]).map((o) => o.orderId)).toContain(orderId);
    },
  );

  it(
    'given a write through the gateway, when its Consistency-Token comes with a read of the query service ' +
      'through the gateway, then the read shows the write',
    async () => {
      const key = crypto.randomUUID();
      const placed = await placeOrder(site, 'dave', product, 1, key);
      expect(placed.status).toBe(201);
      const orderId = placed.body.orderId as string;
      h.acknowledged.push({ orderId, userId: 'dave', idempotencyKey: key });
      const token = placed.headers.get('consistency-token');
      expect(token).toMatch(/./);

      const read = await call(
        `${site}/api/query/orders/${orderId}`,
        { headers: { 'consistency-token': token ?? '' } },
        'dave',
      );
      expect(read.status).toBe(200);
      expect(read.body).toMatchObject({ orderId, userId: 'dave' });
      expect(read.headers.get('consistency-token')).toBeNull();
      // The token reaches the service: a malformed one is refused there, not dropped on the way.
      const malformed = await call(
        `${site}/api/query/orders/${orderId}`,
        { headers: { 'consistency-token': 'x' } },
        'dave',
      );
      expect(malformed.status).toBe(400);
      expect(malformed.type).toContain('application/problem+json');
    },
  );

  it(
    'given callers with a bad API key, a forged or malformed token, none, or the wrong role, when they call ' +
      'through the gateway, then 401 or 403 problem+json, and an API key becomes a token the service verifies',
    async () => {
      const unknownKey = await call(`${site}/api/order/orders`, { headers: { 'x-api-key': 'demo-mallory' } });
      expect(unknownKey.status).toBe(401);
      expect(unknownKey.type).toContain('application/problem+json');
      expect(unknownKey.headers.get('www-authenticate')).toMatch(/^Bearer /);
      for (const authorization of ['Bearer not.a.jwt', 'Basic YTpi', 'Bearer']) {
        const refused = await call(`${site}/api/order/orders`, { headers: { authorization } });
        expect(refused.status, authorization).toBe(401);
      }
      // No credentials: the gateway lets the service decide, and the service refuses.
      const anonymous = await call(`${site}/api/order/orders`);
      expect(anonymous.status).toBe(401);
      expect(anonymous.body).toMatchObject({ status: 401, title: 'Unauthenticated' });
      // A customer is not an operator: the overview and the dead letters are not theirs.
      expect((await call(`${site}/api/overview`, {}, 'bob')).status).toBe(403);
      expect((await call(`${site}/api/payment/dead-letters`, {}, 'bob')).status).toBe(403);
      // A token signed by the deployment's key works as the key does.
      const token = await h.system.identities.token(demoIdentities.bob);
      const own = await call(`${site}/api/order/orders?limit=1`, { headers: { authorization: `Bearer ${token}` } });
      expect(own.status).toBe(200);
      // Bob asking for alice's orders by name: as if she had none to show.
      expect((await call(`${site}/api/order/orders?userId=alice`, {}, 'bob')).status).toBe(404);
    },
  );

  it(
    'given a bad request, when it goes through the gateway, ' + "then the service's problem+json comes back as it was",
    async () => {
      const invalid = await call(
        `${site}/api/order/orders`,
        {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'idempotency-key': crypto.randomUUID() },
          body: JSON.stringify({}),
        },
        'alice',
      );
      expect(invalid.status).toBe(400);
      expect(invalid.type).toContain('application/problem+json');
      expect(invalid.body).toMatchObject({ status: 400, title: 'Invalid request' });
      expect((invalid.body.errors as string[]).join(' ')).toContain('items');

      const missing = await call(`${site}/api/order/orders/${crypto.randomUUID()}`, {}, 'alice');
      expect(missing.status).toBe(404);
      expect(missing.type).toContain('application/problem+json');

      const notJson = await call(
        `${site}/api/inventory/products`,
        { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'hello' },
        'merchant',
      );
      expect(notJson.status).toBe(415);
      expect(notJson.type).toContain('application/problem+json');

      const noService = await call(`${site}/api/nowhere/things`);
      expect(noService.status).toBe(404);
      expect(noService.body).toMatchObject({ status: 404, title: 'Not found' });
    },
  );

  it(
    'given an If-Match that no longer holds, when a cancel goes through the gateway, ' + 'then the service answers 412',
    async () => {
      const key = crypto.randomUUID();
      const placed = await placeOrder(site, 'carol', product, 1, key);
      const orderId = placed.body.orderId as string;
      h.acknowledged.push({ orderId, userId: 'carol', idempotencyKey: key });
      const stale = await call(
        `${site}/api/order/orders/${orderId}/cancel`,
        { method: 'POST', headers: { 'content-type': 'application/json', 'if-match': `"${orderId}:0"` }, body: '{}' },
        'carol',
      );
      expect(stale.status).toBe(412);
      expect(stale.body).toMatchObject({ status: 412, title: 'Precondition failed' });
    },
  );

  it(
    'given a service that is down or silent, when a request is routed to it, then the ' +
      'gateway answers 503 or 504 problem+json and the overview shows it down',
    async () => {
      const silent = net.createServer(() => undefined); // accepts connections, never answers
      await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
      const silentPort = (silent.address() as net.AddressInfo).port;
      const degraded = await createGateway({
        log: silentLogger,
        upstreams: {
          ...upstreams,
          order: `http://127.0.0.1:${await closedPort()}`,
          payment: `http://127.0.0.1:${silentPort}`,
        },
        auth: gatewayAuth(),
        timeoutMs: 300,
        probeTimeoutMs: 300,
        health: { intervalMs: 60_000 }, // what is seen here is learnt on the way, not from a probe
      });
      try {
        const down = await degraded.inject({
          method: 'POST',
          url: '/api/order/orders',
          headers: { 'idempotency-key': 'k', ...as('alice') },
          payload: { items: [{ productId: product, quantity: 1 }] },
        });
        expect(down.statusCode).toBe(503);
        expect(down.headers['content-type']).toContain('application/problem+json');
        expect(down.headers['retry-after']).toMatch(/^[1-9][0-9]*$/);
        expect(down.json()).toMatchObject({ status: 503, title: 'Unavailable' });
        // That refused connection marked its only instance down: the next request is refused at the gateway.
        const known = await degraded.inject({ method: 'GET', url: '/api/order/orders', headers: as('alice') });
        expect(known.statusCode).toBe(503);
        expect(known.headers['retry-after']).toBe('60');
        expect(known.json<Json>().detail).toContain('no instance of the order service is ready');

        const slow = await degraded.inject({ method: 'GET', url: '/api/payment/payments', headers: as('alice') });
        expect(slow.statusCode).toBe(504);
        expect(slow.json()).toMatchObject({ status: 504, title: 'Gateway timeout' });

        const overview = (
          await degraded.inject({ method: 'GET', url: '/api/overview', headers: as('operator') })
        ).json<Overview>();
        expect(overview.ready).toBe(false);
        const byName = Object.fromEntries(overview.services.map((s) => [s.name, s]));
        expect(byName.order).toMatchObject({ up: false, ready: false, status: null });
        expect(byName.order?.instances).toEqual([{ url: expect.stringMatching(/^http:/) as string, healthy: false }]);
        expect(byName.order?.error).toEqual(expect.any(String));
        expect(byName.payment).toMatchObject({ up: false, ready: false });
        expect(byName.inventory).toMatchObject({ up: true, ready: true });
      } finally {
        await degraded.close();
        silent.close();
      }
    },
  );

  it(
    'given a query service that cannot show a write in time, when the read goes through the gateway, ' +
      'then its 503 and Retry-After come back as they were',
    async () => {
      const ahead = `order:${crypto.randomUUID()}:999`; // a version nobody wrote: the read waits, then gives up
      const read = await call(
        `${site}/api/query/orders/${crypto.randomUUID()}`,
        { headers: { 'consistency-token': ahead } },
        'alice',
      );
      expect(read.status).toBe(503);
      expect(read.type).toContain('application/problem+json');
      expect(read.headers.get('retry-after')).toBe('1');
      expect(read.body.detail).toContain('has not applied');
    },
  );

  describe('rate limits', () => {
    let clock = 0;
    let limited: HttpApp;
    const identityOf = (request: FastifyRequest) => {
      const subject = request.headers['x-test-subject'];
      return typeof subject === 'string' ? subject : undefined;
    };
    const get = (url: string, from: string, subject?: string) =>
      limited.inject({
        method: 'GET',
        url,
        remoteAddress: from,
        headers: { ...as('merchant'), ...(subject === undefined ? {} : { 'x-test-subject': subject }) },
      });

    beforeAll(async () => {
      limited = await createGateway({
        log: silentLogger,
        upstreams,
        auth: gatewayAuth(),
        rateLimits: { perAddress: { perSecond: 1, burst: 2 }, perIdentity: { perSecond: 1, burst: 3 } },
        identityOf,
        now: () => clock,
      });
    });
    afterAll(async () => {
      await limited.close();
    });

    it(
      'given an address that used its burst, when it asks again, then 429 problem+json with Retry-After; ' +
        'another address is served, and so is the first once Retry-After has passed',
      async () => {
        clock = 1_000_000;
        const first = await get('/api/inventory/products', '10.0.0.1');
        expect(first.statusCode).toBe(200);
        expect(first.headers).toMatchObject({ 'ratelimit-limit': '2', 'ratelimit-remaining': '1' });
        expect((await get('/api/inventory/products', '10.0.0.1')).statusCode).toBe(200);

        const refused = await get('/api/inventory/products', '10.0.0.1');
        expect(refused.statusCode).toBe(429);
        expect(refused.headers['content-type']).toContain('application/problem+json');
        expect(refused.headers['retry-after']).toBe('1');
        expect(refused.headers).toMatchObject({ 'ratelimit-remaining': '0', 'ratelimit-reset': '2' });
        expect(refused.json()).toMatchObject({ status: 429, title: 'Too many requests' });
        expect(refused.json<Json>().detail).toContain('address');
        // Any /api route counts, not only the proxied ones; health and the dashboard never do.
        expect((await get('/api/overview', '10.0.0.1')).statusCode).toBe(429);
        for (const url of ['/healthz', '/readyz', '/']) expect((await get(url, '10.0.0.1')).statusCode).toBe(200);

        expect((await get('/api/inventory/products', '10.0.0.2')).statusCode).toBe(200);

        clock += 999;
        expect((await get('/api/inventory/products', '10.0.0.1')).statusCode).toBe(429);
        clock += 1;
        expect((await get('/api/inventory/products', '10.0.0.1')).statusCode).toBe(200);
      },
    );

    it(
      'given an identity that used its burst from several addresses, when it asks from yet another, ' +
        'then 429; another identity from that address is served',
      async () => {
        clock = 2_000_000;
        for (const from of ['10.1.0.1', '10.1.0.2', '10.1.0.3'])
          expect((await get('/api/inventory/products', from, 'alice')).statusCode).toBe(200);
        const refused = await get('/api/inventory/products', '10.1.0.4', 'alice');
        expect(refused.statusCode).toBe(429);
        expect(refused.headers['retry-after']).toBe('1');
        expect(refused.json<Json>().detail).toContain('identity');
        expect((await get('/api/inventory/products', '10.1.0.4', 'bob')).statusCode).toBe(200);
        // No identity: only the address limit counts.
        expect((await get('/api/inventory/products', '10.1.0.4')).statusCode).toBe(429); // its 2 are spent now
        expect((await get('/api/inventory/products', '10.1.0.5')).statusCode).toBe(200);
        clock += 1_000;
        expect((await get('/api/inventory/products', '10.1.0.6', 'alice')).statusCode).toBe(200);
      },
    );
  });

  it(
    'given every service up, when the overview is asked for, then it has each ' +
      "one's readiness, outbox, consumer and dead-letter figures",
    async () => {
      const overview = await call(`${site}/api/overview`, {}, 'operator');
      expect(overview.status).toBe(200);
      const body = overview.body as unknown as Overview;
      expect(body.ready).toBe(true);
      expect(body.services.map((s) => s.name)).toEqual(['order', 'inventory', 'payment', 'orchestrator', 'query']);
      for (const s of body.services) {
        expect(s).toMatchObject({ up: true, ready: true, checks: { database: true }, error: null });
        const status = s.status;
        if (status === null) throw new Error(`${s.name} has no status`);
        expect(status.service).toBe(s.name);
        expect(Object.keys(status.outbox).sort()).toEqual(['backlog', 'oldestAgeSeconds', 'published']);
        for (const outcome of ['applied', 'duplicate', 'stale', 'held', 'dead-lettered', 'retries']) {
          expect(Number.isInteger(status.consumer[outcome]), outcome).toBe(true);
        }
        expect(status.consumer['dead-lettered']).toBe(0);
        expect(status.deadLetters).toBe(0);
      }
    },
  );

  it(
    'given the dashboard, when it is fetched, then it is one ' +
      'self-contained page that loads nothing from elsewhere',
    async () => {
      const response = await fetch(`${site}/`);
      expect(response.status).toBe(200);
      expect(response.headers.get('content-type')).toContain('text/html');
      const policy = response.headers.get('content-security-policy') ?? '';
      expect(policy).toContain("default-src 'none'");
      expect(policy).toContain("connect-src 'self'");
      const html = await response.text();
      expect(html).toContain('<title>Converge</title>');
      expect(html.match(/\b(?:https?:)?\/\/[a-z0-9.-]+\.[a-z]{2,}/gi) ?? []).toEqual([]);
      expect(html).not.toMatch(/<script[^>]+src=|<link[^>]+stylesheet|@import|url\(/i);
    },
  );

  const browserTest = haveChromium || process.env.CI === 'true' ? it : it.skip;
  browserTest(
    'given the dashboard in a browser, when orders are placed, cancelled and ' +
      'a dead letter replayed from it, then each outcome shows',
    async () => {
      if (!haveChromium)
        throw new Error(`${chromiumPath} is missing: CI must install it (apt-get install -y chromium)`);
      const poisonSubject = crypto.randomUUID();
      await h.system.bus.publish([
        {
          specversion: '1.0',
          id: crypto.randomUUID(),
          source: 'order',
          type: 'OrderCompleted',
          subject: poisonSubject,
          time: new Date().toISOString(),
          datacontenttype: 'application/json',
          dataversion: 1,
          sequence: 1,
          correlationid: crypto.randomUUID(),
          data: { orderId: 'not-a-uuid' },
        },
      ]);

      const { chromium } = await import('playwright-core');
      const browser = await chromium.launch({
        executablePath: chromiumPath,
        args: [
          '--headless',
          '--no-sandbox',
          '--disable-gpu',
          '--disable-quic',
          '--no-first-run',
          '--disable-background-networking',
          '--disable-component-update',
          '--disable-sync',
        ],
      });
      const problems: string[] = [];
      const elsewhere: string[] = [];
      const keys = new Map<string, string>();
      try {
        const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
        page.setDefaultTimeout(15_000);
        page.on('pageerror', (error) => problems.push(error.message));
        page.on('console', (message) => {
          // The refused order below is a 400 on purpose; anything else (a script error, a blocked load) is not.
          if (message.type() === 'error' && !message.text().includes('status of 400')) problems.push(message.text());
        });
        page.on('request', (request) => {
          if (!request.url().startsWith(site)) elsewhere.push(request.url());
        });
        page.on('response', async (response) => {
          const key = response.request().headers()['idempotency-key'];
          if (key !== undefined && response.status() === 201)
            keys.set(((await response.json()) as { orderId: string }).orderId, key);
        });
        await page.goto(site);
        await page.locator('#services [data-service="order"] .badge.ok').waitFor();
        await page
          .locator(`#product option[value="${demoCatalogue[1]?.productId ?? ''}"]`)
          .waitFor({ state: 'attached' });

        const placeFromForm = async (user: string, productId: string, quantity: number): Promise<string> => {
          await page.selectOption('#user', user);
          await page.selectOption('#product', productId);
          await page.fill('#quantity', String(quantity));
          const answer = page.locator('#answer [data-order-id]');
          const before = (await answer.count()) > 0 ? await answer.getAttribute('data-order-id') : null;
          await page.click('#place');
          await expect.poll(() => answer.getAttribute('data-order-id'), { timeout: 10_000 }).not.toBe(before);
          return (await answer.getAttribute('data-order-id')) ?? '';
        };

        const completed = await placeFromForm('bob', demoCatalogue[1]?.productId ?? '', 2);
        await page
          .locator(`#orders tr[data-order-id="${completed}"][data-status="COMPLETED"]`)
          .waitFor({ timeout: 20_000 });
        await expect.poll(() => page.locator('#placed-status').textContent()).toBe('COMPLETED');

        h.system.provider.faults.delayMs = 4_000; // keep the next order PENDING long enough to cancel it
        let cancelled = '';
        try {
          cancelled = await placeFromForm('bob', demoCatalogue[2]?.productId ?? '', 1);
          await page.locator(`#orders tr[data-order-id="${cancelled}"] button`).click({ timeout: 3_000 });
          await page
            .locator(`#orders tr[data-order-id="${cancelled}"][data-status="CANCELLED"]`)
            .waitFor({ timeout: 10_000 });
        } finally {
          h.system.provider.faults.delayMs = 0;
        }

        const refused = page.locator('#answer');
        await page.fill('#quantity', '0');
        await page.evaluate("document.getElementById('quantity').removeAttribute('min')"); // let the service refuse it
        await page.click('#place');
        await expect.poll(() => refused.textContent(), { timeout: 10_000 }).toContain('Order refused: Invalid request');

        const letter = page.locator('#dead-letters [data-service="inventory"] [data-id]');
        await letter.waitFor({ timeout: 10_000 });
        await letter.locator('button').click();
        await expect.poll(() => page.locator('#dead-notice').textContent(), { timeout: 10_000 }).toContain('failed');

        for (const orderId of [completed, cancelled]) {
          h.acknowledged.push({ orderId, userId: 'bob', idempotencyKey: keys.get(orderId) ?? 'unknown' });
        }
      } finally {
        await browser.close();
      }
      expect(problems).toEqual([]);
      expect(elsewhere).toEqual([]);
      // The poison message stays parked wherever it was delivered: replaying cannot fix it.
      expect(await parkedDeadLetters()).toBeGreaterThan(0);
    },
  );

  it('given all of the above, when the system is quiet, then every invariant holds', async () => {
    await h.check(await parkedDeadLetters());
  });
});
