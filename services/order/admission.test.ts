// Admission control at placement, through the order service's own wiring (its routes
// and metrics as the service definition gives them), on PGlite, with no relay: given an
// outbox backlog past the bound, POST /orders answers 503 + Retry-After and writes
// nothing (no order, no event, no idempotency key); once the backlog is published, 201.
import crypto from 'node:crypto';
import {
  createHttpApp,
  createIdentities,
  createLocalBus,
  migrate,
  openPglite,
  platformMigrations,
  relayBatch,
  requireIdentities,
  silentLogger,
  userIdentity,
  type Bus,
  type Db,
  type HttpApp,
} from '@converge/platform';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { orderService } from './service.ts';

const beans = '00000000-0000-4000-8000-0000000000a1';
let db: Db;
let busDb: Db;
let bus: Bus;
let app: HttpApp;
let metrics: () => Promise<string[]>;
let ada: Record<string, string>;
let first: string | undefined;

beforeAll(async () => {
  const definition = orderService('choreography', { admission: { maxBacklog: 2 } });
  db = await openPglite('order-admission-test');
  await migrate(db, { platform: platformMigrations, order: definition.migrations });
  await db.query("INSERT INTO catalogue (product_id, name, price, currency) VALUES ($1, 'Beans', 500, 'EUR')", [beans]);
  busDb = await openPglite('order-admission-test-bus');
  bus = await createLocalBus(busDb);
  await bus.declare('inventory', ['OrderCreated']);
  app = await createHttpApp({ service: 'order', log: silentLogger });
  const identities = await createIdentities();
  requireIdentities(app, identities.verify);
  ada = { authorization: `Bearer ${await identities.token(userIdentity('ada'))}` };
  const now = () => new Date();
  definition.routes(app, { db, log: silentLogger, now, bus });
  metrics = definition.metrics?.({ db, now, bus }) ?? (() => Promise.resolve([]));
  await app.ready();
});

afterAll(async () => {
  await app.close();
  await bus.close();
  await busDb.close();
  await db.close();
});

const place = () =>
  app.inject({
    method: 'POST',
    url: '/orders',
    headers: { ...ada, 'idempotency-key': crypto.randomUUID() },
    payload: { items: [{ productId: beans, quantity: 1 }] },
  });

const written = async () =>
  (
    await db.query<{ orders: number; events: number; keys: number }>(
      `SELECT (SELECT count(*) FROM orders)::int AS orders, (SELECT count(*) FROM outbox)::int AS events,
              (SELECT count(*) FROM idempotency_keys)::int AS keys`,
    )
  )[0];

/** Past the sample interval, so the next placement sees the backlog as it is now. */
const nextSample = () => new Promise((resolve) => setTimeout(resolve, 250));

describe('POST /orders under admission control', () => {
  it(
    'given no relay and a backlog past the bound, then placements answer 503 problem+json with Retry-After ' +
      'and write nothing; after the backlog is published, 201 again',
    async () => {
      for (let i = 0; i < 3; i++) {
        const placed = await place();
        expect(placed.statusCode).toBe(201);
        first ??= placed.json<{ orderId: string }>().orderId;
        await nextSample();
      }
      const before = await written();
      expect(before).toEqual({ orders: 3, events: 3, keys: 3 });

      const refused = await place();
      expect(refused.statusCode).toBe(503);
      expect(refused.headers['content-type']).toContain('application/problem+json');
      expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1);
      expect(Number(refused.headers['retry-after'])).toBeLessThanOrEqual(30);
      expect(await written()).toEqual(before);
      expect(await metrics()).toContain('converge_admission_shed_total{service="order",reason="backlog"} 1');

      await relayBatch(db, bus, 500);
      await nextSample();
      expect((await place()).statusCode).toBe(201);
      expect(await written()).toEqual({ orders: 4, events: 4, keys: 4 });
    },
  );

  it('given reads while placements are refused, then reads are not', async () => {
    await db.query('UPDATE outbox SET published_at = NULL, feed_position = NULL');
    await nextSample();
    expect((await place()).statusCode).toBe(503);
    expect((await app.inject({ method: 'GET', url: `/orders/${first}`, headers: ada })).statusCode).toBe(200);
  });
});
