// Bad input at every write endpoint of every service, on both backends. Each case must be
// refused with a 4xx problem+json that leaks no stack or SQL, and must write nothing in
// any database; afterwards the services still serve valid requests and the invariants
// hold. Bodies are sent as raw strings so that malformed JSON, wrong content types and
// prototype-pollution keys reach the HTTP edge exactly as a hostile client sends them.
import crypto from 'node:crypto';
import { beforeAll, expect, it } from 'vitest';
import { customer, describeSystem, merchant, modes, operator, type Harness } from './harness.ts';

type Service = 'order' | 'inventory' | 'payment' | 'orchestrator';
type Fixtures = { product: string; user: string; order: string; many: string[] };
type Request = { url: string; body?: string; contentType?: string; headers: Record<string, string> };
type Case = { service: Service; what: string; status: number; caller: Caller; request: (f: Fixtures) => Request };
/** Who calls an endpoint: one it admits, so that what is refused is the input. */
type Caller = 'customer' | 'merchant' | 'operator';
type Endpoint = {
  service: Service;
  route: string;
  url: (f: Fixtures) => string;
  /** A body this endpoint accepts, so that each case breaks one thing only. */
  valid: (f: Fixtures) => Record<string, unknown>;
  headers?: () => Record<string, string>;
  caller: Caller;
};

const uuid = () => crypto.randomUUID();
const MiB = 1024 * 1024;

const placeOrder: Endpoint = {
  service: 'order',
  route: 'POST /orders',
  url: () => '/orders',
  valid: (f) => ({ items: [{ productId: f.product, quantity: 1 }] }),
  headers: () => ({ 'idempotency-key': uuid() }),
  caller: 'customer',
};
const cancelOrder: Endpoint = {
  service: 'order',
  route: 'POST /orders/{id}/cancel',
  url: (f) => `/orders/${f.order}/cancel`,
  valid: () => ({ reason: 'no' }),
  caller: 'customer',
};
const addProduct: Endpoint = {
  service: 'inventory',
  route: 'POST /products',
  url: () => '/products',
  valid: () => ({ name: 'widget', price: 100, stockQuantity: 1 }),
  caller: 'merchant',
};
const restock: Endpoint = {
  service: 'inventory',
  route: 'POST /products/{id}/restock',
  url: (f) => `/products/${f.product}/restock`,
  valid: () => ({ quantity: 1 }),
  caller: 'merchant',
};
const addCredit: Endpoint = {
  service: 'payment',
  route: 'POST /users/{id}/credit',
  url: (f) => `/users/${f.user}/credit`,
  valid: () => ({ amount: 1 }),
  caller: 'operator',
};
const replayOne = (service: Service): Endpoint => ({
  service,
  route: `${service} POST /dead-letters/{id}/replay`,
  url: () => `/dead-letters/${uuid()}/replay`,
  valid: () => ({}),
  caller: 'operator',
});
const replayMany = (service: Service): Endpoint => ({
  service,
  route: `${service} POST /dead-letters/replay`,
  url: () => '/dead-letters/replay',
  valid: () => ({ all: true }),
  caller: 'operator',
});
const retrySaga: Endpoint = {
  service: 'orchestrator',
  route: 'POST /sagas/{id}/retry',
  url: () => `/sagas/${uuid()}/retry`,
  valid: () => ({ note: 'fixed' }),
  caller: 'operator',
};
const resolveSaga: Endpoint = {
  service: 'orchestrator',
  route: 'POST /sagas/{id}/resolve',
  url: () => `/sagas/${uuid()}/resolve`,
  valid: () => ({ note: 'settled' }),
  caller: 'operator',
};
const services: Service[] = ['order', 'inventory', 'payment', 'orchestrator'];
const endpoints = [
  placeOrder,
  cancelOrder,
  addProduct,
  restock,
  addCredit,
  retrySaga,
  resolveSaga,
  ...services.flatMap((s) => [replayOne(s), replayMany(s)]),
];

/**
 * A raw body: `text` as is, as JSON unless told otherwise (null: no content type), with the endpoint's headers unless
 * `headers` replaces them.
 */
function raw(
  e: Endpoint,
  what: string,
  status: number,
  text: (f: Fixtures) => string | undefined,
  options: { contentType?: string | null; url?: (f: Fixtures) => string; headers?: Record<string, string> } = {},
): Case {
  return {
    service: e.service,
    what: `${e.route}: ${what}`,
    status,
    caller: e.caller,
    request: (f) => {
      const body = text(f);
      const contentType =
        options.contentType !== undefined ? options.contentType : body === undefined ? null : 'application/json';
      return {
        url: (options.url ?? e.url)(f),
        headers: options.headers ?? e.headers?.() ?? {},
        ...(body === undefined ? {} : { body }),
        ...(contentType === null ? {} : { contentType }),
      };
    },
  };
}
const bad = (
  e: Endpoint,
  what: string,
  status: number,
  body: (f: Fixtures) => unknown,
  options: { url?: (f: Fixtures) => string; headers?: Record<string, string> } = {},
) => raw(e, what, status, (f) => JSON.stringify(body(f)), options);

/** Adds `"key": value` (value already JSON text) in front of the members of a JSON object. */
function withKey(json: string, key: string, value: string): string {
  const members = json.slice(1, -1);
  return `{"${key}":${value}${members === '' ? '' : `,${members}`}}`;
}

const quantities: [string, unknown][] = [
  ['0', 0],
  ['-1', -1],
  ['1.5', 1.5],
  ['2^53', 2 ** 53],
  ['"2" (a string)', '2'],
  ['null', null],
];
/** Prices and stock levels may be 0; every other bad quantity applies to them too. */
const amounts = quantities.filter(([, value]) => value !== 0);

/** The same defects at every endpoint: how the body is framed, not what it says. */
const framing = (e: Endpoint): Case[] => {
  const valid = (f: Fixtures) => JSON.stringify(e.valid(f));
  return [
    raw(e, 'malformed JSON', 400, (f) => valid(f).slice(0, -1)),
    raw(e, 'single-quoted JSON', 400, () => "{'a': 1}"),
    raw(e, 'empty body declared as JSON', 400, () => ''),
    raw(e, 'JSON without a content type', 415, valid, { contentType: null }),
    raw(e, 'text/plain', 415, valid, { contentType: 'text/plain' }),
    raw(e, 'form-urlencoded', 415, () => 'amount=1&quantity=1', { contentType: 'application/x-www-form-urlencoded' }),
    raw(e, 'application/xml', 415, () => '<a/>', { contentType: 'application/xml' }),
    raw(e, 'a 1 MB body', 413, (f) => withKey(valid(f), 'pad', JSON.stringify('x'.repeat(MiB)))),
    raw(e, '__proto__ key', 400, (f) => withKey(valid(f), '__proto__', '{"admin":true}')),
    raw(e, 'constructor.prototype key', 400, (f) => withKey(valid(f), 'constructor', '{"prototype":{"admin":true}}')),
  ];
};

const line = (f: Fixtures, fields: Record<string, unknown>) => ({
  items: [{ productId: f.product, quantity: 1, ...fields }],
});
const product = (fields: Record<string, unknown>) => ({ name: 'widget', price: 100, stockQuantity: 1, ...fields });

const cases: Case[] = [
  ...endpoints.flatMap(framing),

  bad(placeOrder, 'missing Idempotency-Key', 400, placeOrder.valid, { headers: {} }),
  bad(placeOrder, 'empty Idempotency-Key', 400, placeOrder.valid, { headers: { 'idempotency-key': '' } }),
  bad(placeOrder, 'Idempotency-Key of 201 characters', 400, placeOrder.valid, {
    headers: { 'idempotency-key': 'k'.repeat(201) },
  }),
  // The order belongs to the caller: a body that names a user is refused, not obeyed.
  bad(placeOrder, 'a userId in the body', 400, (f) => ({ ...line(f, {}), userId: f.user })),
  bad(placeOrder, 'missing items', 400, () => ({})),
  bad(placeOrder, 'no lines', 400, () => ({ items: [] })),
  bad(placeOrder, 'items as an object', 400, (f) => ({ items: { productId: f.product, quantity: 1 } })),
  bad(placeOrder, 'a JSON array', 400, (f) => [line(f, {})]),
  bad(placeOrder, 'JSON null', 400, () => null),
  bad(placeOrder, 'unknown field', 400, (f) => ({ ...line(f, {}), totalAmount: 1 })),
  bad(placeOrder, 'client-sent unitPrice', 400, (f) => line(f, { unitPrice: 1 })),
  bad(placeOrder, 'productId not a uuid', 400, (f) => line(f, { productId: 'widget' })),
  bad(placeOrder, 'missing quantity', 400, (f) => ({ items: [{ productId: f.product }] })),
  ...quantities.map(([label, quantity]) => bad(placeOrder, `quantity ${label}`, 400, (f) => line(f, { quantity }))),
  bad(placeOrder, '101 lines', 400, (f) => ({
    items: f.many.map((productId) => ({ productId, quantity: 1 })),
  })),
  bad(placeOrder, 'unknown product', 422, (f) => line(f, { productId: uuid() })),
  bad(placeOrder, 'the same product on two lines', 422, (f) => ({
    items: [...line(f, {}).items, ...line(f, {}).items],
  })),
  raw(
    placeOrder,
    '__proto__ key inside a line',
    400,
    (f) => `{"items":[{"__proto__":{"admin":true},"productId":"${f.product}","quantity":1}]}`,
  ),

  bad(cancelOrder, 'id not a uuid', 400, cancelOrder.valid, { url: () => '/orders/42/cancel' }),
  bad(cancelOrder, 'id with broken percent-encoding', 400, cancelOrder.valid, { url: () => '/orders/%zz/cancel' }),
  bad(cancelOrder, 'unknown order', 404, cancelOrder.valid, { url: () => `/orders/${uuid()}/cancel` }),
  bad(cancelOrder, 'unknown field', 400, () => ({ reason: 'no', force: true })),
  bad(cancelOrder, 'empty reason', 400, () => ({ reason: '' })),
  bad(cancelOrder, 'reason as a number', 400, () => ({ reason: 1 })),
  bad(cancelOrder, 'reason of 501 characters', 400, () => ({ reason: 'r'.repeat(501) })),

  bad(addProduct, 'missing name', 400, () => ({ price: 100, stockQuantity: 1 })),
  bad(addProduct, 'missing price', 400, () => ({ name: 'widget', stockQuantity: 1 })),
  bad(addProduct, 'missing stockQuantity', 400, () => ({ name: 'widget', price: 100 })),
  bad(addProduct, 'unknown field', 400, () => product({ sold: 0 })),
  bad(addProduct, 'empty name', 400, () => product({ name: '' })),
  bad(addProduct, 'name as a number', 400, () => product({ name: 7 })),
  bad(addProduct, 'lower-case currency', 400, () => product({ currency: 'eur' })),
  bad(addProduct, 'productId not a uuid', 400, () => product({ productId: 'p-1' })),
  ...amounts.map(([label, price]) => bad(addProduct, `price ${label}`, 400, () => product({ price }))),
  ...amounts.map(([label, stockQuantity]) =>
    bad(addProduct, `stockQuantity ${label}`, 400, () => product({ stockQuantity })),
  ),
  bad(addProduct, 'an existing productId with other attributes', 409, (f) =>
    product({ productId: f.product, name: 'not the same' }),
  ),

  bad(restock, 'id not a uuid', 400, restock.valid, { url: () => '/products/widget/restock' }),
  bad(restock, 'unknown product', 404, restock.valid, { url: () => `/products/${uuid()}/restock` }),
  bad(restock, 'missing quantity', 400, () => ({ reason: 'restock' })),
  bad(restock, 'unknown field', 400, () => ({ quantity: 1, price: 5 })),
  bad(restock, 'empty Idempotency-Key', 400, restock.valid, { headers: { 'idempotency-key': '' } }),
  ...quantities.map(([label, quantity]) => bad(restock, `quantity ${label}`, 400, () => ({ quantity }))),

  bad(addCredit, 'user id with spaces', 400, addCredit.valid, { url: () => '/users/a%20b/credit' }),
  bad(addCredit, 'user id of 101 characters', 414, addCredit.valid, { url: () => `/users/${'u'.repeat(101)}/credit` }),
  bad(addCredit, 'user id with broken percent-encoding', 400, addCredit.valid, { url: () => '/users/%E0%A4%A/credit' }),
  bad(addCredit, 'missing amount', 400, () => ({})),
  bad(addCredit, 'unknown field', 400, () => ({ amount: 1, currency: 'EUR' })),
  ...quantities.map(([label, amount]) => bad(addCredit, `amount ${label}`, 400, () => ({ amount }))),

  ...[retrySaga, resolveSaga].flatMap((e) => [
    bad(e, 'unknown saga', 404, e.valid),
    bad(e, 'missing note', 400, () => ({})),
    bad(e, 'empty note', 400, () => ({ note: '' })),
    bad(e, 'note as a number', 400, () => ({ note: 1 })),
    bad(e, 'note of 1001 characters', 400, () => ({ note: 'n'.repeat(1001) })),
    bad(e, 'unknown field', 400, () => ({ note: 'x', force: true })),
  ]),

  ...services.flatMap((s) => [
    raw(replayOne(s), 'id not a uuid', 400, () => undefined, { url: () => '/dead-letters/42/replay' }),
    raw(replayOne(s), 'unknown dead letter', 404, () => undefined),
    bad(replayMany(s), 'neither ids nor all', 400, () => ({})),
    bad(replayMany(s), 'no ids', 400, () => ({ ids: [] })),
    bad(replayMany(s), 'an id not a uuid', 400, () => ({ ids: ['42'] })),
    bad(replayMany(s), 'all: false', 400, () => ({ all: false })),
    bad(replayMany(s), 'unknown field', 400, () => ({ all: true, force: true })),
    bad(replayMany(s), 'an unknown dead letter', 404, () => ({ ids: [uuid()] })),
  ]),
];

/** Every table a write endpoint could touch, plus the balances an update would move. */
const watched = {
  order: ['orders', 'outbox', 'idempotency_keys', 'dead_letters', 'dead_letter_audit'],
  inventory: ['products', 'stock_adjustments', 'outbox', 'dead_letters', 'dead_letter_audit'],
  payment: ['payments', 'outbox', 'dead_letters', 'dead_letter_audit'],
  orchestrator: ['sagas', 'saga_log', 'outbox', 'dead_letters', 'dead_letter_audit'],
  provider: ['provider_accounts'],
} as const;
const totals = {
  'inventory stock': ['inventory', 'SELECT coalesce(sum(stock_quantity), 0)::int AS n FROM products'],
  'provider credit': ['provider', 'SELECT coalesce(sum(credit), 0)::int AS n FROM provider_accounts'],
} as const;

async function snapshot(h: Harness): Promise<Record<string, number | undefined>> {
  const counts: Record<string, number | undefined> = {};
  for (const [db, tables] of Object.entries(watched) as [keyof typeof watched, readonly string[]][]) {
    for (const table of tables)
      counts[`${db}.${table}`] = (
        await h.system.dbs[db].query<{ n: number }>(`SELECT count(*)::int AS n FROM ${table}`)
      )[0]?.n;
  }
  for (const [name, [db, sql]] of Object.entries(totals))
    counts[name] = (await h.system.dbs[db].query<{ n: number }>(sql))[0]?.n;
  return counts;
}

const identityOf = (caller: Caller, f: Fixtures) =>
  caller === 'customer' ? customer(f.user) : caller === 'merchant' ? merchant : operator;

const leak = /\bat .+:\d+:\d+|"stack"|\b(SELECT|INSERT|UPDATE|DELETE FROM)\b|relation "|violates|node_modules/;

// Validation happens at the HTTP edge, before any saga wiring: one saga mode per backend
// covers both backends and both modes (each of the ~200 cases runs twice, not four times).
const covering = modes.filter((m) => m === 'embedded' || m === 'postgres+rabbitmq · orchestration');

describeSystem('bad input', covering, (h) => {
  let f: Fixtures;
  beforeAll(async () => {
    const user = await h.user(1_000_000);
    const product = await h.product(1000, 100);
    const many = await Promise.all(Array.from({ length: 101 }, () => h.product(10)));
    const placed = await h.place(user, [{ productId: product, quantity: 1 }]);
    await h.waitFinal(placed.orderId);
    await h.quiet();
    f = { product, user, order: placed.orderId, many };
  }, 120_000);

  it.each(cases)('$what → $status', async (c) => {
    const before = await snapshot(h);
    const { url, body, contentType, headers } = c.request(f);
    // Each endpoint is called by a caller it admits, so that what is refused is the input.
    const caller = await h.auth(identityOf(c.caller, f));
    const response = await h.system.services[c.service].app.inject({
      method: 'POST',
      url,
      headers: { ...caller, ...headers, ...(contentType === undefined ? {} : { 'content-type': contentType }) },
      ...(body === undefined ? {} : { payload: body }),
    });
    const summary = `${c.what}: ${response.statusCode} ${response.body.slice(0, 500)}`;
    expect(response.statusCode, summary).toBe(c.status);
    expect(response.headers['content-type'], summary).toMatch(/^application\/problem\+json/);
    const problem = JSON.parse(response.body) as Record<string, unknown>;
    const shape = {
      type: typeof problem.type,
      title: typeof problem.title,
      status: problem.status,
      detail: typeof problem.detail,
    };
    expect(shape, summary).toEqual({ type: 'string', title: 'string', status: c.status, detail: 'string' });
    expect(response.body, summary).not.toMatch(leak);
    expect(({} as Record<string, unknown>).admin, 'Object.prototype was polluted').toBeUndefined();
    expect(await snapshot(h), `${c.what} wrote something`).toEqual(before);
  });

  it('after all of it, every write endpoint still serves a valid request and the invariants hold', async () => {
    const user = await h.user(10_000); // POST /users/{id}/credit
    const product = await h.product(5, 300); // POST /products
    const placed = await h.place(user, [{ productId: product, quantity: 2 }]);
    expect(placed.status).toBe(201);
    expect((await h.waitFinal(placed.orderId)).status).toBe('COMPLETED');
    const restocked = await h.system.services.inventory.app.inject({
      headers: await h.auth(merchant),
      method: 'POST',
      url: `/products/${product}/restock`,
      payload: { quantity: 4 },
    });
    expect(restocked.json()).toMatchObject({ stockQuantity: 7 });
    h.system.provider.faults.delayMs = 300; // keep the next order PENDING long enough to cancel it
    try {
      const pending = await h.place(user, [{ productId: product, quantity: 1 }]);
      const cancelled = await h.system.services.order.app.inject({
        headers: await h.auth(customer(user)),
        method: 'POST',
        url: `/orders/${pending.orderId}/cancel`,
        payload: {},
      });
      expect(cancelled.json()).toMatchObject({ status: 'CANCELLED' });
    } finally {
      h.system.provider.faults.delayMs = 0;
    }
    for (const s of services) {
      const replayed = await h.system.services[s].app.inject({
        headers: await h.auth(),
        method: 'POST',
        url: '/dead-letters/replay',
        payload: { all: true },
      });
      expect(replayed.json()).toEqual({ results: [] });
    }
    await h.check();
  });
});
