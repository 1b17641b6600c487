// Placing an order through the API on PGlite: given a priced catalogue, when POST /orders
// comes with an Idempotency-Key, then one order, its first event and the key's response,
// in a fixed number of statements; the same key again replays that response.
import crypto from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Envelope } from '@converge/contracts';
import {
  costCounters,
  createHttpApp,
  createIdentities,
  requireIdentities,
  userIdentity,
  migrate,
  openPglite,
  platformMigrations,
  silentLogger,
  type Db,
  type HttpApp,
} from '@converge/platform';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerOrderRoutes } from './http.ts';

const migrations = path.join(path.dirname(fileURLToPath(import.meta.url)), 'migrations');
const now = new Date('2026-11-22T10:00:00.000Z');
const beans = '00000000-0000-4000-8000-0000000000a1';
const mill = '00000000-0000-4000-8000-0000000000b2';
let db: Db;
let app: HttpApp;
/** The caller's token: the order belongs to its subject. */
let ada: Record<string, string>;

beforeAll(async () => {
  db = await openPglite('order-http-test');
  await migrate(db, { platform: platformMigrations, order: migrations });
  await db.query(
    `INSERT INTO catalogue (product_id, name, price, currency)
     VALUES ($1, 'Beans', 500, 'EUR'), ($2, 'Mill', 9000, 'EUR')`,
    [beans, mill],
  );
  app = await createHttpApp({
    service: 'order',
    log: silentLogger,
    description: 'test',
    ready: () => Promise.resolve({}),
  });
  const identities = await createIdentities();
  requireIdentities(app, identities.verify);
  ada = { authorization: `Bearer ${await identities.token(userIdentity('ada'))}` };
  registerOrderRoutes(app, db, () => now);
  await app.ready();
});
afterAll(async () => {
  await app.close();
  await db.close();
});

const body = {
  items: [
    { productId: beans, quantity: 2 },
    { productId: mill, quantity: 1 },
  ],
};

async function place(key: string, payload: object = body) {
  const before = costCounters();
  const response = await app.inject({
    method: 'POST',
    url: '/orders',
    headers: { ...ada, 'idempotency-key': key },
    payload,
  });
  const after = costCounters();
  return {
    response,
    statements: after.statements - before.statements,
    transactions: after.transactions - before.transactions,
  };
}

const counts = async () =>
  db.query(
    'SELECT (SELECT count(*) FROM orders) AS orders, (SELECT count(*) FROM ' +
      'outbox) AS events, (SELECT count(*) FROM idempotency_keys) AS keys',
  );

describe('POST /orders', () => {
  it(
    'given a priced catalogue, when an order is placed, then it is PENDING at server prices, its row, ' +
      'OrderCreated and key commit together in one transaction of two statements after the price lookup',
    async () => {
      const key = crypto.randomUUID();

      const { response, statements, transactions } = await place(key);

      expect(response.statusCode).toBe(201);
      const order = response.json<{ orderId: string }>();
      expect(order).toMatchObject({
        userId: 'ada',
        status: 'PENDING',
        totalAmount: 10_000,
        currency: 'EUR',
        version: 1,
        createdAt: now.toISOString(),
        updatedAt: now.toISOString(),
        items: [
          { productId: beans, quantity: 2, unitPrice: 500 },
          { productId: mill, quantity: 1, unitPrice: 9000 },
        ],
      });
      expect(response.headers).toMatchObject({ location: `/orders/${order.orderId}`, etag: `"${order.orderId}:1"` });
      expect({ statements, transactions }).toEqual({ statements: 3, transactions: 1 });
      expect((await app.inject({ method: 'GET', url: `/orders/${order.orderId}`, headers: ada })).json()).toEqual(
        order,
      );
      const stream = await db.query<{ envelope: Envelope }>('SELECT envelope FROM outbox WHERE subject = $1', [
        order.orderId,
      ]);
      expect(stream.map((r) => r.envelope)).toMatchObject([
        { type: 'OrderCreated', sequence: 1, source: 'order', data: { orderId: order.orderId, totalAmount: 10_000 } },
      ]);
      expect(await db.query('SELECT order_id, response_body FROM idempotency_keys WHERE key = $1', [key])).toEqual([
        { order_id: order.orderId, response_body: order },
      ]);
    },
  );

  it(
    'given products priced by an earlier order, when another order ' +
      'of them is placed, then no price lookup is sent',
    async () => {
      await place(crypto.randomUUID());

      const { response, statements } = await place(crypto.randomUUID());

      expect(response.statusCode).toBe(201);
      expect(statements).toBe(2);
    },
  );

  it(
    'given a product not in the catalogue, when an order of it is refused and ' +
      'the product arrives, then the next order of it is priced',
    async () => {
      const later = crypto.randomUUID();
      const items = [{ productId: later, quantity: 1 }];
      expect((await place(crypto.randomUUID(), { items })).response.statusCode).toBe(422);

      await db.query(`INSERT INTO catalogue (product_id, name, price, currency) VALUES ($1, 'Grinder', 4200, 'EUR')`, [
        later,
      ]);
      const { response } = await place(crypto.randomUUID(), { items });

      expect(response.statusCode).toBe(201);
      expect(response.json()).toMatchObject({ totalAmount: 4200, items: [{ productId: later, unitPrice: 4200 }] });
    },
  );

  it(
    'given an order placed under a key, when the same request comes again, then ' +
      'the first response is replayed and nothing more is written',
    async () => {
      const key = crypto.randomUUID();
      const first = (await place(key)).response.json<{ orderId: string }>();
      const written = await counts();

      const { response } = await place(key);

      expect(response.statusCode).toBe(201);
      expect(response.headers['idempotent-replayed']).toBe('true');
      expect(response.json()).toEqual(first);
      expect(await counts()).toEqual(written);
    },
  );

  it(
    'given two requests with one key at once, when both are placed, ' + 'then one order exists and both answer it',
    async () => {
      const key = crypto.randomUUID();

      const [a, b] = await Promise.all([place(key), place(key)]);

      expect(a.response.json()).toEqual(b.response.json());
      const orderId = a.response.json<{ orderId: string }>().orderId;
      expect(await db.query('SELECT 1 FROM outbox WHERE subject = $1', [orderId])).toHaveLength(1);
    },
  );

  it(
    'given an order placed under a key, when another body comes with ' +
      'that key, then 422 and the first order stays alone',
    async () => {
      const key = crypto.randomUUID();
      await place(key);

      const { response } = await place(key, { ...body, items: [{ productId: beans, quantity: 3 }] });

      expect(response.statusCode).toBe(422);
      expect(await db.query('SELECT 1 FROM idempotency_keys WHERE key = $1', [key])).toHaveLength(1);
    },
  );
});

describe('POST /orders, placements arriving together', () => {
  let together: HttpApp;
  const tokens: Record<string, Record<string, string>> = {};

  beforeAll(async () => {
    together = await createHttpApp({
      service: 'order',
      log: silentLogger,
      description: 'test',
      ready: () => Promise.resolve({}),
    });
    const identities = await createIdentities();
    requireIdentities(together, identities.verify);
    for (const user of ['ada', 'ben', 'cy', 'mallory'])
      tokens[user] = { authorization: `Bearer ${await identities.token(userIdentity(user))}` };
    registerOrderRoutes(together, db, () => now, { lingerMs: 300 });
    await together.ready();
  });
  afterAll(async () => {
    await together.close();
  });

  const placeAs = (user: string, key: string, payload: object = body) =>
    together.inject({
      method: 'POST',
      url: '/orders',
      headers: { ...tokens[user], 'idempotency-key': key },
      payload,
    });

  it(
    'given ten placements within the linger, when they are placed, then they commit in one transaction ' +
      'and each gets its own order, event and key',
    async () => {
      const before = costCounters();

      const responses = await Promise.all(
        Array.from({ length: 10 }, (_, k) => placeAs(['ada', 'ben', 'cy'][k % 3] ?? 'ada', crypto.randomUUID())),
      );

      expect(costCounters().transactions - before.transactions).toBe(1);
      expect(responses.map((r) => r.statusCode)).toEqual(responses.map(() => 201));
      const orders = responses.map((r) => r.json<{ orderId: string; userId: string }>());
      expect(new Set(orders.map((o) => o.orderId)).size).toBe(10);
      expect(orders.map((o) => o.userId)).toEqual(Array.from({ length: 10 }, (_, k) => ['ada', 'ben', 'cy'][k % 3]));
      const events = await db.query<{ subject: string; sequence: number }>(
        'SELECT subject, sequence FROM outbox WHERE subject = ANY($1::text[])',
        [orders.map((o) => o.orderId)],
      );
      expect(events).toHaveLength(10);
      expect(new Set(events.map((e) => e.sequence))).toEqual(new Set([1]));
    },
  );

  it(
    'given one key twice in one batch, when both are placed, then one order exists and both answer it, ' +
      'the second as a replay; another body under that key in the same batch is refused',
    async () => {
      const key = crypto.randomUUID();
      const other = { items: [{ productId: beans, quantity: 7 }] };

      const [a, b, c] = await Promise.all([placeAs('ada', key), placeAs('ada', key), placeAs('ada', key, other)]);

      const answered = [a, b, c].filter((r) => r.statusCode === 201);
      const refused = [a, b, c].filter((r) => r.statusCode === 422);
      expect(answered.length + refused.length).toBe(3);
      const orderIds = new Set(answered.map((r) => r.json<{ orderId: string }>().orderId));
      expect(orderIds.size).toBe(1);
      expect(answered.filter((r) => r.headers['idempotent-replayed'] === 'true')).toHaveLength(answered.length - 1);
      expect(await db.query('SELECT 1 FROM idempotency_keys WHERE key = $1', [key])).toHaveLength(1);
      expect(await db.query('SELECT 1 FROM outbox WHERE subject = ANY($1::text[])', [[...orderIds]])).toHaveLength(1);
    },
  );

  it(
    'given a batch with one placement the database refuses, when they are placed, then the others are ' +
      'placed and only that one fails, with nothing of it written',
    async () => {
      await db.exec(`CREATE FUNCTION refuse_mallory() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN IF NEW.user_id = 'mallory' THEN RAISE EXCEPTION 'refused for the test'; END IF; RETURN NEW; END $$;
        CREATE TRIGGER refuse_mallory BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION refuse_mallory();`);
      try {
        const keys = [crypto.randomUUID(), crypto.randomUUID(), crypto.randomUUID()];

        const [ada, mallory, ben] = await Promise.all([
          placeAs('ada', keys[0] ?? ''),
          placeAs('mallory', keys[1] ?? ''),
          placeAs('ben', keys[2] ?? ''),
        ]);

        expect([ada.statusCode, mallory.statusCode, ben.statusCode]).toEqual([201, 500, 201]);
        expect(await db.query('SELECT 1 FROM idempotency_keys WHERE key = $1', [keys[1]])).toEqual([]);
        expect(await db.query("SELECT 1 FROM orders WHERE user_id = 'mallory'")).toEqual([]);
      } finally {
        await db.exec('DROP TRIGGER refuse_mallory ON orders; DROP FUNCTION refuse_mallory();');
      }
    },
  );
});
