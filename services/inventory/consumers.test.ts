// The inventory shell on a real (embedded) database, through the platform's consumer:
// a batch loads what it touches once, decides in order in memory and writes back once,
// so the statements a batch costs do not grow with the number of messages in it.
import crypto from 'node:crypto';
import type { DomainEvent, Envelope } from '@converge/contracts';
import {
  costCounters,
  createLocalBus,
  dropDatabase,
  ensureDatabase,
  migrate,
  openPglite,
  openPostgres,
  platformMigrations,
  silentLogger,
  startConsumer,
  type Consumer,
  type Db,
  type Message,
  type SagaMode,
} from '@converge/platform';
import { serverAvailable, servers, uniqueName } from '@converge/platform/testing';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { inventoryService } from './service.ts';

const pgUp = await serverAvailable('postgres');
const cleanups: (() => Promise<void>)[] = [];
const databases: string[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});
afterAll(async () => {
  for (const database of databases) await dropDatabase(servers.postgres, database);
});

const backends = [
  { name: 'pglite', up: true, open: () => openPglite('inventory-test') },
  {
    name: 'postgres',
    up: pgUp,
    open: async () => {
      const database = uniqueName('inventory_test');
      databases.push(database);
      return openPostgres('inventory-test', await ensureDatabase(servers.postgres, database));
    },
  },
];
type Backend = (typeof backends)[number];
let backend: Backend | undefined;

async function started(mode: SagaMode = 'choreography'): Promise<{ db: Db; consumer: Consumer }> {
  if (backend === undefined) throw new Error('no backend');
  const db = await backend.open();
  const busDb = await openPglite('inventory-test-bus');
  cleanups.push(
    () => db.close(),
    () => busDb.close(),
  );
  const definition = inventoryService(mode);
  await migrate(db, { platform: platformMigrations, inventory: definition.migrations });
  const bus = await createLocalBus(busDb);
  cleanups.push(() => bus.close());
  const consumer = await startConsumer(
    {
      name: 'inventory',
      db,
      bus,
      log: silentLogger,
      sources: definition.sources,
      maxAttempts: 2,
      backoff: { baseMs: 1, capMs: 5 },
      ...(definition.handle === undefined ? {} : { handle: definition.handle }),
      ...(definition.handleBatch === undefined ? {} : { handleBatch: definition.handleBatch }),
    },
    false,
  );
  cleanups.push(() => consumer.stop());
  return { db, consumer };
}

async function addProduct(db: Db, stock: number): Promise<string> {
  const productId = crypto.randomUUID();
  await db.query(
    `INSERT INTO products (product_id, name, price, currency, stock_quantity, created_at, updated_at)
     VALUES ($1, 'thing', 500, 'EUR', $2, now(), now())`,
    [productId, stock],
  );
  return productId;
}

function message(source: string, event: DomainEvent, subject: string, sequence = 1): Message {
  const id = crypto.randomUUID();
  const envelope: Envelope = {
    specversion: '1.0',
    id,
    source,
    type: event.type,
    subject,
    time: new Date().toISOString(),
    datacontenttype: 'application/json',
    dataversion: 1,
    sequence,
    correlationid: `c-${id}`,
    data: event.data,
  };
  return { ...envelope, ...event };
}

const orderCreated = (productId: string, quantity = 1, orderId: string = crypto.randomUUID()): Message =>
  message(
    'order',
    {
      type: 'OrderCreated',
      data: {
        orderId,
        userId: 'ada',
        items: [{ productId, quantity, unitPrice: 500 }],
        totalAmount: 500 * quantity,
        currency: 'EUR',
        createdAt: new Date().toISOString(),
      },
    },
    orderId,
  );

const stock = async (db: Db, productId: string) =>
  (
    await db.query<{ stock_quantity: number; reserved: number; sold: number }>(
      'SELECT stock_quantity, reserved, sold FROM products WHERE product_id = $1',
      [productId],
    )
  )[0];

const emitted = async (db: Db) =>
  await db.query<{ type: string; subject: string }>('SELECT type, subject FROM outbox ORDER BY position');

/** Runs `messages` as one batch: a first message keeps the consumer busy while the rest queue up behind it. */
async function oneBatch(consumer: Consumer, pacer: Message, messages: readonly Message[]) {
  // The consumer settles its previous batch just after the caller saw its outcome.
  await new Promise((resolve) => setImmediate(resolve));
  const before = consumer.stats.batches;
  const outcomes = await Promise.all([pacer, ...messages].map((m) => consumer.process(m)));
  expect(consumer.stats.batches - before).toBe(messages.length === 0 ? 1 : 2);
  return outcomes;
}

describe.each(backends)('the inventory consumer on $name', (current) => {
  beforeAll(() => {
    backend = current;
  });
  if (!current.up) return;
  it(
    'given products, when a batch of one and a batch of 50 ' +
      'OrderCreated arrive, then both cost the same statements',
    async () => {
      const { db, consumer } = await started();
      const products = await Promise.all(Array.from({ length: 10 }, () => addProduct(db, 100)));
      const product = (i: number) => products[i % products.length] ?? '';

      const single = costCounters().statements;
      expect(await consumer.process(orderCreated(product(0)))).toBe('applied');
      const perSingle = costCounters().statements - single;

      const batch = costCounters().statements;
      const outcomes = await oneBatch(
        consumer,
        orderCreated(product(0)),
        Array.from({ length: 50 }, (_, i) => orderCreated(product(i))),
      );
      const perBatch = costCounters().statements - batch - perSingle;

      console.log(`inventory statements per batch: N=1 ${perSingle}, N=50 ${perBatch}`);
      expect(new Set(outcomes)).toEqual(new Set(['applied']));
      expect((await emitted(db)).filter((e) => e.type === 'InventoryReserved')).toHaveLength(52);
      expect(await stock(db, product(0))).toEqual({ stock_quantity: 93, reserved: 7, sold: 0 });
      expect(perBatch).toBe(perSingle);
    },
  );

  it(
    'given the last item, when two orders for it, a payment failure before its order and a completion ' +
      'without reservation share a batch, then each takes effect alone as the rules say',
    async () => {
      const { db, consumer } = await started();
      const last = await addProduct(db, 1);
      const other = await addProduct(db, 5);
      const [first, second, late] = [orderCreated(last), orderCreated(last), crypto.randomUUID()];
      const failedFirst = message(
        'payment',
        {
          type: 'PaymentFailed',
          data: { orderId: late, paymentId: late, userId: 'ada', amount: 500, reason: 'declined' },
        },
        late,
      );
      const stray = crypto.randomUUID();
      const completed = message(
        'order',
        { type: 'OrderCompleted', data: { orderId: stray, userId: 'ada', totalAmount: 500, currency: 'EUR' } },
        stray,
      );

      const outcomes = await oneBatch(consumer, orderCreated(other), [first, second, failedFirst, completed]);
      expect(outcomes).toEqual(['applied', 'applied', 'applied', 'applied', 'dead-lettered']);
      expect(await consumer.process(orderCreated(other, 2, late))).toBe('applied');

      const events = await emitted(db);
      expect(
        events.filter((e) => e.subject === first.subject || e.subject === second.subject).map((e) => e.type),
      ).toEqual(['InventoryReserved', 'InventoryRejected']);
      expect(events.filter((e) => e.subject === late || e.subject === stray)).toEqual([]);
      expect(await stock(db, last)).toEqual({ stock_quantity: 0, reserved: 1, sold: 0 });
      expect(await stock(db, other)).toEqual({ stock_quantity: 4, reserved: 1, sold: 0 });
      const [tombstone] = await db.query('SELECT status, items FROM reservations WHERE order_id = $1', [late]);
      expect(tombstone).toEqual({ status: 'RELEASED', items: [{ productId: other, quantity: 2 }] });
      const parked = await db.query<{ reason: string }>('SELECT reason FROM dead_letters');
      expect(parked).toEqual([{ reason: 'invariant violation' }]);
    },
  );

  it(
    'given orchestration and a rejected order, when the saga asks to release ' +
      'it in a batch and again alone, then it is answered once',
    async () => {
      const { db, consumer } = await started('orchestration');
      const productId = await addProduct(db, 0);
      const orderId = crypto.randomUUID();
      const command = (type: 'ReleaseInventory' | 'ReserveInventory', sequence: number): Message =>
        message(
          'orchestrator',
          type === 'ReleaseInventory'
            ? { type, data: { orderId, reason: 'out of stock' } }
            : {
                type,
                data: {
                  orderId,
                  userId: 'ada',
                  items: [{ productId, quantity: 1 }],
                  totalAmount: 500,
                  currency: 'EUR',
                },
              },
          orderId,
          sequence,
        );

      expect(await consumer.process(command('ReserveInventory', 1))).toBe('applied');
      const other = crypto.randomUUID();
      const alsoRejected = message(
        'orchestrator',
        {
          type: 'ReserveInventory',
          data: {
            orderId: other,
            userId: 'ada',
            items: [{ productId, quantity: 1 }],
            totalAmount: 500,
            currency: 'EUR',
          },
        },
        other,
      );
      await oneBatch(consumer, alsoRejected, [command('ReleaseInventory', 2)]);
      expect(await consumer.process(command('ReleaseInventory', 3))).toBe('applied');

      expect((await emitted(db)).filter((e) => e.subject === orderId).map((e) => e.type)).toEqual([
        'InventoryRejected',
        'InventoryReleased',
      ]);
      const [row] = await db.query('SELECT status, release_answered FROM reservations WHERE order_id = $1', [orderId]);
      expect(row).toEqual({ status: 'REJECTED', release_answered: true });
    },
  );
});
