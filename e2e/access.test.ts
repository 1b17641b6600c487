// Who may do what, route by route. The table below says, for every route of every
// service, which roles it admits, whether its object belongs to a user, and what an
// admitted call answers. Each route is called as every kind of caller: nobody (401),
// each role, and for a user's objects their owner (alice) and another customer (bob),
// who must get 404 — the object's existence is not revealed. The routes come from the
// running services themselves, so a route added without an entry here fails the test,
// and so does an entry whose route is gone.
import crypto from 'node:crypto';
import { createIdentities, type Identity, type Role } from '@converge/platform';
import { beforeAll, expect, it } from 'vitest';
import { customer, describeSystem, merchant, operator } from './harness.ts';

type Service = 'order' | 'inventory' | 'payment' | 'orchestrator' | 'query';
type Fixtures = { product: string; aliceOrder: string };
type Call = { url: string; body?: object; headers?: Record<string, string> };
type Entry = {
  /** The roles the route admits. */
  roles: readonly Role[];
  /** The route's object belongs to a user (alice): another customer must not see it. */
  owned?: boolean;
  /** What an admitted call may answer (a missing saga is still an admitted call). */
  ok: readonly number[];
  call: (f: Fixtures) => Call;
};

const everyone: readonly Role[] = ['customer', 'merchant', 'operator', 'service'];
const readers: readonly Role[] = ['customer', 'operator', 'service'];
const operations: readonly Role[] = ['operator', 'service'];
const uuid = () => crypto.randomUUID();
const get = (url: string) => () => ({ url });

/** What every service serves besides its own API: its feed, its dead letters, its figures. */
const platformRoutes: Record<string, Entry> = {
  'GET /events': { roles: operations, ok: [200], call: get('/events?limit=1') },
  'GET /events/marks': { roles: operations, ok: [200], call: get('/events/marks?limit=1') },
  'GET /dead-letters': { roles: ['operator'], ok: [200], call: get('/dead-letters') },
  'POST /dead-letters/:id/replay': {
    roles: ['operator'],
    ok: [404],
    call: () => ({ url: `/dead-letters/${uuid()}/replay` }),
  },
  'POST /dead-letters/replay': {
    roles: ['operator'],
    ok: [404],
    call: () => ({ url: '/dead-letters/replay', body: { ids: [uuid()] } }),
  },
  'GET /status': { roles: operations, ok: [200], call: get('/status') },
  'GET /metrics': { roles: operations, ok: [200], call: get('/metrics') },
};

const table: Record<Service, Record<string, Entry>> = {
  order: {
    'POST /orders': {
      roles: ['customer'],
      ok: [201],
      call: (f) => ({
        url: '/orders',
        body: { items: [{ productId: f.product, quantity: 1 }] },
        headers: { 'idempotency-key': uuid() },
      }),
    },
    'GET /orders/:id': { roles: readers, owned: true, ok: [200], call: (f) => ({ url: `/orders/${f.aliceOrder}` }) },
    'GET /orders': { roles: readers, owned: true, ok: [200], call: get('/orders?userId=alice') },
    'POST /orders/:id/cancel': {
      roles: readers,
      owned: true,
      // The order completed long ago: an admitted cancel is refused as a conflict, not as unknown.
      ok: [409],
      call: (f) => ({ url: `/orders/${f.aliceOrder}/cancel`, body: {} }),
    },
    ...platformRoutes,
  },
  inventory: {
    'GET /products': { roles: everyone, ok: [200], call: get('/products?limit=1') },
    'GET /products/:id': { roles: everyone, ok: [200], call: (f) => ({ url: `/products/${f.product}` }) },
    'POST /products': {
      roles: ['merchant'],
      ok: [201],
      call: () => ({ url: '/products', body: { name: 'access widget', price: 100, stockQuantity: 1 } }),
    },
    'POST /products/:id/restock': {
      roles: ['merchant'],
      ok: [200],
      call: (f) => ({ url: `/products/${f.product}/restock`, body: { quantity: 1 } }),
    },
    ...platformRoutes,
  },
  payment: {
    'GET /payments': { roles: readers, owned: true, ok: [200], call: get('/payments?userId=alice') },
    'GET /users/:id/credit': { roles: readers, owned: true, ok: [200], call: get('/users/alice/credit') },
    'POST /users/:id/credit': {
      roles: ['operator'],
      ok: [200],
      call: () => ({ url: '/users/alice/credit', body: { amount: 1 } }),
    },
    ...platformRoutes,
  },
  orchestrator: {
    'GET /sagas/:id': { roles: ['operator'], ok: [404], call: () => ({ url: `/sagas/${uuid()}` }) },
    'GET /sagas': { roles: ['operator'], ok: [200], call: get('/sagas') },
    'POST /sagas/:id/retry': {
      roles: ['operator'],
      ok: [404],
      call: () => ({ url: `/sagas/${uuid()}/retry`, body: { note: 'n' } }),
    },
    'POST /sagas/:id/resolve': {
      roles: ['operator'],
      ok: [404],
      call: () => ({ url: `/sagas/${uuid()}/resolve`, body: { note: 'n' } }),
    },
    ...platformRoutes,
  },
  query: {
    'POST /projections/catch-up': { roles: ['operator'], ok: [200], call: () => ({ url: '/projections/catch-up' }) },
    'POST /projections/:name/rebuild': {
      roles: ['operator'],
      ok: [200],
      call: () => ({ url: '/projections/order-counts/rebuild' }),
    },
    'GET /projections': { roles: operations, ok: [200], call: get('/projections') },
    'GET /orders/:id': { roles: readers, owned: true, ok: [200], call: (f) => ({ url: `/orders/${f.aliceOrder}` }) },
    'GET /users/:id/orders': { roles: readers, owned: true, ok: [200], call: get('/users/alice/orders') },
    'GET /products/:id': { roles: everyone, ok: [200], call: (f) => ({ url: `/products/${f.product}` }) },
    'GET /products': { roles: everyone, ok: [200], call: get('/products?limit=1') },
    'GET /system': { roles: operations, ok: [200], call: get('/system') },
    ...platformRoutes,
  },
};

type Caller = { name: string; identity?: Identity };
const callers: Caller[] = [
  { name: 'nobody' },
  { name: 'alice (customer, owner)', identity: customer('alice') },
  { name: 'bob (another customer)', identity: customer('bob') },
  { name: 'merchant', identity: merchant },
  { name: 'operator', identity: operator },
  { name: 'service', identity: { subject: 'service:query', roles: ['service'] } },
];

function expected(entry: Entry, caller: Caller): readonly number[] {
  const identity = caller.identity;
  if (identity === undefined) return [401];
  if (!entry.roles.some((role) => identity.roles.includes(role))) return [403];
  if (entry.owned === true && identity.roles.includes('customer') && identity.subject !== 'alice') return [404];
  return entry.ok;
}

const rows = (Object.keys(table) as Service[]).flatMap((service) =>
  Object.entries(table[service]).flatMap(([route, entry]) =>
    callers.map((caller) => ({
      service,
      method: route.startsWith('POST ') ? ('POST' as const) : ('GET' as const),
      entry,
      caller,
      label: `${service} ${route} as ${caller.name}`,
    })),
  ),
);

describeSystem('access', ['embedded'], (h) => {
  let f: Fixtures;
  beforeAll(async () => {
    const product = await h.product(1_000, 100);
    for (const userId of ['alice', 'bob']) {
      const response = await h.system.services.payment.app.inject({
        method: 'POST',
        url: `/users/${userId}/credit`,
        headers: await h.auth(operator),
        payload: { amount: 1_000_000 },
      });
      expect(response.statusCode).toBe(200);
    }
    const placed = await h.place('alice', [{ productId: product, quantity: 1 }]);
    expect((await h.waitFinal(placed.orderId)).status).toBe('COMPLETED');
    await h.quiet();
    f = { product, aliceOrder: placed.orderId };
  }, 60_000);

  it('every route of every service has an entry in the table, and every entry a route', () => {
    for (const service of Object.keys(table) as Service[]) {
      const served = h.system.services[service].routes.map((r) => `${r.method} ${r.url}`).sort();
      expect(served, `${service}'s routes`).toEqual(Object.keys(table[service]).sort());
    }
  });

  it.each(rows)('$label', async ({ service, method, entry, caller }) => {
    const { url, body, headers } = entry.call(f);
    const response = await h.system.services[service].app.inject({
      method,
      url,
      headers: { ...headers, ...(caller.identity === undefined ? {} : await h.auth(caller.identity)) },
      ...(body === undefined ? {} : { payload: body }),
    });
    const summary = `${response.statusCode} ${response.body.slice(0, 300)}`;
    expect(expected(entry, caller), summary).toContain(response.statusCode);
    if (response.statusCode >= 400)
      expect(response.headers['content-type'], summary).toMatch(/^application\/problem\+json/);
    if (response.statusCode === 401) expect(response.headers['www-authenticate'], summary).toMatch(/^Bearer /);
  });

  it('a token signed by another key, an expired token and a malformed header are 401', async () => {
    const stranger = await createIdentities();
    const forged = await stranger.token(operator);
    const expired = await h.system.identities.issuer.sign(operator, -60);
    for (const authorization of [`Bearer ${forged}`, `Bearer ${expired}`, 'Basic b3A6b3A=', 'Bearer']) {
      const response = await h.system.services.payment.app.inject({
        method: 'GET',
        url: '/payments',
        headers: { authorization },
      });
      expect(response.statusCode, authorization.slice(0, 20)).toBe(401);
    }
  });

  it("a customer's order list and payments name only their own, whatever the query asks", async () => {
    const bob = await h.auth(customer('bob'));
    const orders = await h.system.services.order.app.inject({ method: 'GET', url: '/orders', headers: bob });
    expect(orders.statusCode).toBe(200);
    for (const order of orders.json<{ items: { userId: string }[] }>().items) expect(order.userId).toBe('bob');
    const payments = await h.system.services.payment.app.inject({
      method: 'GET',
      url: `/payments?orderId=${f.aliceOrder}`,
      headers: bob,
    });
    expect(payments.json()).toEqual({ items: [] });
    const own = await h.system.services.payment.app.inject({
      method: 'GET',
      url: `/payments?orderId=${f.aliceOrder}`,
      headers: await h.auth(customer('alice')),
    });
    expect(own.json<{ items: unknown[] }>().items).toHaveLength(1);
  });
});
