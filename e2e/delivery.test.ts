// Delivery faults end to end: every event delivered a second time changes nothing, and
// the events of one order delivered to a service in any order lead to the same final
// state as in-order delivery. The reference run is a real system; each shuffle is
// played into a fresh instance of one service through its consumer.
import crypto from 'node:crypto';
import { eventTypes, isCommandType, type Envelope } from '@converge/contracts';
import {
  dropDatabase,
  ensureDatabase,
  openPglite,
  openPostgres,
  createLocalBus,
  silentLogger,
  startService,
  type Db,
  type RunningService,
  type Verifier,
} from '@converge/platform';
import { servers, uniqueName } from '@converge/platform/testing';
import { expect, it } from 'vitest';
import { inventoryService } from '../services/inventory/service.ts';
import { orderService, executeOrderCommand } from '../services/order/service.ts';
import { openSimulatedProvider, paymentService } from '../services/payment/service.ts';
import { backendOf, describeSystem, merchant, modes, sagaModeOf, type Harness, type ModeName } from './harness.ts';

/** Every message the system produced: events, and in orchestration mode the saga's commands. */
async function allEvents(h: Harness): Promise<Envelope[]> {
  const events: Envelope[] = [];
  for (const name of ['order', 'inventory', 'payment', 'orchestrator'] as const) {
    const rows = await h.system.dbs[name].query<{ envelope: Envelope }>(
      'SELECT envelope FROM outbox ORDER BY position',
    );
    events.push(...rows.map((r) => r.envelope));
  }
  return events;
}

/** Rows that describe the outcome, in a stable order, for before/after comparison. */
async function snapshot(h: Harness) {
  const { order, inventory, payment, provider, orchestrator } = h.system.dbs;
  return {
    sagas: await orchestrator.query('SELECT saga_id, status, version FROM sagas ORDER BY saga_id'),
    commands: await orchestrator.query('SELECT count(*)::int AS n FROM outbox'),
    orders: await order.query('SELECT order_id, status, version FROM orders ORDER BY order_id'),
    orderEvents: await order.query('SELECT count(*)::int AS n FROM outbox'),
    products: await inventory.query(
      'SELECT product_id, stock_quantity, reserved, sold FROM products ORDER BY product_id',
    ),
    reservations: await inventory.query('SELECT order_id, status FROM reservations ORDER BY order_id'),
    inventoryEvents: await inventory.query('SELECT count(*)::int AS n FROM outbox'),
    payments: await payment.query('SELECT order_id, status FROM payments ORDER BY order_id'),
    paymentEvents: await payment.query('SELECT count(*)::int AS n FROM outbox'),
    accounts: await provider.query('SELECT user_id, credit FROM provider_accounts ORDER BY user_id'),
  };
}

function shuffled<T>(items: readonly T[], seed: number): T[] {
  const result = [...items];
  let state = seed;
  for (let i = result.length - 1; i > 0; i--) {
    state = (state * 1103515245 + 12345) % 2 ** 31;
    const j = state % (i + 1);
    [result[i], result[j]] = [result[j] as T, result[i] as T];
  }
  return result;
}

type Fresh = { service: RunningService; db: Db; extra?: Db; reset(): Promise<void>; close(): Promise<void> };

/** Empties every table but the migration bookkeeping: a fresh service without a new database. */
async function truncateAll(db: Db): Promise<void> {
  const tables = await db.query<{ table_name: string }>(
    `SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'
        AND table_name NOT IN ('schema_migrations', 'outbox_partitions')`,
  );
  await db.query(`TRUNCATE ${tables.map((t) => `"${t.table_name}"`).join(', ')} RESTART IDENTITY CASCADE`);
}

/** One service alone on a fresh database, its relay off: only what we play into it happens. */
async function freshService(mode: ModeName, name: 'order' | 'inventory' | 'payment', verify: Verifier): Promise<Fresh> {
  const suite = uniqueName('shuffle');
  const open = async (db: string): Promise<Db> =>
    backendOf(mode) === 'embedded'
      ? openPglite(db)
      : openPostgres(db, await ensureDatabase(servers.postgres, `${suite}_${db}`));
  const db = await open(name);
  const busDb = await openPglite('bus');
  const bus = await createLocalBus(busDb);
  const providerDb = name === 'payment' ? await open('provider') : undefined;
  const saga = sagaModeOf(mode);
  const definition =
    name === 'order'
      ? orderService(saga)
      : name === 'inventory'
        ? inventoryService(saga)
        : paymentService(await openSimulatedProvider(providerDb as Db), { mode: saga });
  const service = await startService(definition, { db, bus, log: silentLogger, verify, relay: false });
  return {
    service,
    db,
    ...(providerDb === undefined ? {} : { extra: providerDb }),
    reset: async () => {
      await truncateAll(db);
      if (providerDb !== undefined) await truncateAll(providerDb);
    },
    close: async () => {
      await service.stop();
      await bus.close();
      for (const d of [db, busDb, providerDb]) await d?.close();
      if (backendOf(mode) !== 'embedded')
        for (const d of [name, 'provider']) await dropDatabase(servers.postgres, `${suite}_${d}`);
    },
  };
}

describeSystem('delivery faults', modes, (h, name) => {
  it('given orders of every outcome, when every event is published a second time, then nothing changes', async () => {
    const product = await h.product(20, 900);
    const scarce = await h.product(1);
    const rich = await h.user(1_000_000);
    const poor = await h.user(100);
    const completed = await h.place(rich, [{ productId: product, quantity: 2 }]);
    const rejected = await h.place(rich, [{ productId: scarce, quantity: 5 }]);
    const declined = await h.place(poor, [{ productId: product, quantity: 1 }]);
    await h.waitFinal(completed.orderId);
    await h.waitFinal(rejected.orderId);
    await h.waitFinal(declined.orderId);
    h.system.provider.faults.delayMs = 300;
    const refunded = await h.place(rich, [{ productId: product, quantity: 1 }]);
    await new Promise((r) => setTimeout(r, 150));
    await h.system.services.order.app.inject({
      headers: await h.auth(),
      method: 'POST',
      url: `/orders/${refunded.orderId}/cancel`,
    });
    h.system.provider.faults.delayMs = 0;
    await h.system.services.inventory.app.inject({
      headers: await h.auth(merchant),
      method: 'POST',
      url: `/products/${product}/restock`,
      payload: { quantity: 3 },
    });
    await h.quiet();
    const before = await snapshot(h);
    const events = await allEvents(h);
    const types = new Set(events.map((e) => e.type));
    // Every type this mode produces: the saga's commands only when it is orchestrated.
    const expected = eventTypes.filter((type) => sagaModeOf(name) === 'orchestration' || !isCommandType(type));
    for (const type of expected) expect(types, `no ${type} was produced`).toContain(type);

    await h.system.bus.publish(events);
    await h.quiet();
    const consumers = (['order', 'inventory', 'payment', 'orchestrator'] as const).map(
      (s) => h.system.services[s].consumer,
    );
    expect(await snapshot(h)).toEqual(before);
    const duplicates = consumers.reduce((sum, c) => sum + c.stats.duplicate, 0);
    // Each event comes again to every one of these that binds its type.
    const deliveredAgain = events.reduce((sum, e) => sum + consumers.filter((c) => c.types.includes(e.type)).length, 0);
    expect(deliveredAgain).toBeGreaterThan(events.length / 2);
    expect(duplicates).toBeGreaterThanOrEqual(deliveredAgain);
    await h.check();
  });

  it(
    'given the events of one order, when each service receives them ' +
      'shuffled, then it ends where in-order delivery ends',
    async () => {
      const product = await h.product(10, 400);
      const rich = await h.user(1_000_000);
      const poor = await h.user(100);
      const scenarios: { orderId: string; userId: string; credit: number; amount: number }[] = [];
      const ok = await h.place(rich, [{ productId: product, quantity: 2 }]);
      scenarios.push({ orderId: ok.orderId, userId: rich, credit: 1_000_000, amount: 800 });
      const declined = await h.place(poor, [{ productId: product, quantity: 1 }]);
      scenarios.push({ orderId: declined.orderId, userId: poor, credit: 100, amount: 400 });
      h.system.provider.faults.delayMs = 300;
      const cancelled = await h.place(rich, [{ productId: product, quantity: 1 }]);
      await new Promise((r) => setTimeout(r, 150));
      await h.system.services.order.app.inject({
        headers: await h.auth(),
        method: 'POST',
        url: `/orders/${cancelled.orderId}/cancel`,
      });
      h.system.provider.faults.delayMs = 0;
      scenarios.push({ orderId: cancelled.orderId, userId: rich, credit: 1_000_000, amount: 400 });
      await h.quiet();
      await h.check();
      const events = await allEvents(h);
      const [productRow] = await h.system.dbs.inventory.query<{ name: string }>(
        'SELECT name FROM products WHERE product_id = $1',
        [product],
      );

      const inventory = await freshService(name, 'inventory', h.system.identities.verify);
      const payment = await freshService(name, 'payment', h.system.identities.verify);
      const orders = await freshService(name, 'order', h.system.identities.verify);
      for (const scenario of scenarios) {
        const about = events.filter((e) => e.subject === scenario.orderId);
        const reference = {
          order: await h.system.dbs.order.query<{ status: string }>('SELECT status FROM orders WHERE order_id = $1', [
            scenario.orderId,
          ]),
          reservation: await h.system.dbs.inventory.query(
            'SELECT status, items FROM reservations WHERE order_id = $1',
            [scenario.orderId],
          ),
          payment: await h.system.dbs.payment.query<{ status: string }>(
            'SELECT status FROM payments WHERE order_id = $1',
            [scenario.orderId],
          ),
        };
        for (const seed of [1, 2, 0]) {
          // Seed 0: the exact reverse of the order they were produced in.
          const order = (list: Envelope[]) =>
            seed === 0 ? [...list].reverse() : shuffled(list, seed * 7919 + scenario.orderId.charCodeAt(0));

          await inventory.reset();
          await inventory.service.app.inject({
            headers: await h.auth(merchant),
            method: 'POST',
            url: '/products',
            payload: { productId: product, name: productRow?.name ?? 'x', price: 400, stockQuantity: 10 },
          });
          for (const e of order(about.filter((x) => x.source !== 'inventory')))
            await inventory.service.consumer.process(e);
          await inventory.service.consumer.sweepHeld();
          expect(
            await inventory.db.query('SELECT status, items FROM reservations WHERE order_id = $1', [scenario.orderId]),
          ).toEqual(reference.reservation);
          const [stock] = await inventory.db.query<{ stock_quantity: number; reserved: number; sold: number }>(
            'SELECT stock_quantity, reserved, sold FROM products',
          );
          expect((stock?.stock_quantity ?? 0) + (stock?.reserved ?? 0) + (stock?.sold ?? 0)).toBe(10);
          expect(stock?.reserved).toBe(0);

          await payment.reset();
          await payment.service.app.inject({
            headers: await h.auth(),
            method: 'POST',
            url: `/users/${scenario.userId}/credit`,
            payload: { amount: scenario.credit },
          });
          for (const e of order(about.filter((x) => x.source !== 'payment'))) await payment.service.consumer.process(e);
          await payment.service.consumer.sweepHeld();
          // A cancellation seen before the reservation refuses the charge (FAILED) where
          // in-order delivery charged and refunded (REFUNDED): what must agree is whether
          // money is held, and how much the user has left.
          const [paid] = await payment.db.query<{ status: string }>('SELECT status FROM payments WHERE order_id = $1', [
            scenario.orderId,
          ]);
          expect(paid?.status === 'PROCESSED').toBe(reference.payment[0]?.status === 'PROCESSED');
          const credit = await payment.service.app.inject({
            headers: await h.auth(),
            method: 'GET',
            url: `/users/${scenario.userId}/credit`,
          });
          expect(credit.json<{ credit: number }>().credit).toBe(
            scenario.credit - (reference.order[0]?.status === 'COMPLETED' ? scenario.amount : 0),
          );

          await orders.reset();
          const created = about.find((x) => x.type === 'OrderCreated');
          if (created === undefined) throw new Error('no OrderCreated');
          const data = created.data as {
            userId: string;
            items: { productId: string; quantity: number; unitPrice: number }[];
            currency: string;
          };
          // What the user did (place, and cancel if they did) happens in the order service
          // itself; what other services said about the order arrives shuffled.
          await orders.db.transaction(async (tx) => {
            const context = { source: 'order', now: new Date(), correlationId: crypto.randomUUID() };
            await executeOrderCommand(
              tx,
              scenario.orderId,
              {
                type: 'PlaceOrder',
                orderId: scenario.orderId,
                userId: data.userId,
                items: data.items,
                currency: data.currency,
                now: new Date(),
              },
              context,
            );
            if (about.some((x) => x.type === 'OrderCancelled'))
              await executeOrderCommand(
                tx,
                scenario.orderId,
                { type: 'CancelOrder', reason: 'cancelled by the user' },
                context,
              );
          });
          for (const e of order(about.filter((x) => x.source !== 'order'))) await orders.service.consumer.process(e);
          await orders.service.consumer.sweepHeld();
          expect(await orders.db.query('SELECT status FROM orders WHERE order_id = $1', [scenario.orderId])).toEqual(
            reference.order,
          );
        }
      }
      for (const fresh of [inventory, payment, orders]) await fresh.close();
    },
  );
});
