// The order service's batch handler on PGlite: given orders in the store, when a batch
// of messages is handled as the consumer does it (the handler, then one append of what
// it emitted), then these rows and events, for a number of statements that does not
// grow with the batch.
import crypto from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { DomainEvent, Envelope } from '@converge/contracts';
import {
  appendCaused,
  appendToOutbox,
  ConflictError,
  costCounters,
  createLocalBus,
  migrate,
  openPglite,
  PermanentError,
  platformMigrations,
  silentLogger,
  startConsumer,
  type CausedEvents,
  type Db,
  type Message,
  type SagaMode,
  type Sql,
} from '@converge/platform';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { orderBatchHandler, orderSources } from './consumers.ts';
import { executeOrderCommand, getOrder } from './store.ts';

const migrations = path.join(path.dirname(fileURLToPath(import.meta.url)), 'migrations');
const now = new Date('2026-11-22T10:00:00.000Z');
const productId = '00000000-0000-4000-8000-0000000000a1';
let db: Db;

beforeAll(async () => {
  db = await openPglite('order-consumers-test');
  await migrate(db, { platform: platformMigrations, order: migrations });
});
afterAll(async () => {
  await db.close();
});

async function placed(count: number): Promise<string[]> {
  const ids = Array.from({ length: count }, () => crypto.randomUUID());
  await db.transaction(async (tx) => {
    for (const orderId of ids) {
      await executeOrderCommand(
        tx,
        orderId,
        {
          type: 'PlaceOrder',
          orderId,
          userId: 'ada',
          items: [{ productId, quantity: 2, unitPrice: 500 }],
          currency: 'EUR',
          now,
        },
        { source: 'order', now },
      );
    }
  });
  return ids;
}

function message(source: string, subject: string, event: DomainEvent, sequence = 1): Message {
  const id = crypto.randomUUID();
  const envelope: Envelope = {
    specversion: '1.0',
    id,
    source,
    type: event.type,
    subject,
    time: now.toISOString(),
    datacontenttype: 'application/json',
    dataversion: 1,
    sequence,
    correlationid: `saga-${id}`,
    data: event.data,
  };
  return { ...envelope, ...event };
}

const paymentProcessed = (orderId: string) =>
  message('payment', orderId, {
    type: 'PaymentProcessed',
    data: { orderId, paymentId: crypto.randomUUID(), userId: 'ada', amount: 1000, currency: 'EUR' },
  });
const paymentFailed = (orderId: string) =>
  message('payment', orderId, {
    type: 'PaymentFailed',
    data: { orderId, paymentId: crypto.randomUUID(), userId: 'ada', amount: 1000, reason: 'card declined' },
  });
const inventoryRejected = (orderId: string) =>
  message('inventory', orderId, {
    type: 'InventoryRejected',
    data: { orderId, userId: 'ada', reason: 'out of stock', shortages: [] },
  });
const productAdded = (id: string, price: number) =>
  message('inventory', id, {
    type: 'ProductAdded',
    data: { productId: id, name: 'Beans', price, currency: 'EUR', stockQuantity: 10 },
  });
const completeOrder = (orderId: string) =>
  message('orchestrator', orderId, { type: 'CompleteOrder', data: { orderId } });
const failOrder = (orderId: string) =>
  message('orchestrator', orderId, { type: 'FailOrder', data: { orderId, reason: 'deadline passed' } });

/** Handles `messages` as one batch; resolves to the statements the handler itself sent. */
async function handle(mode: SagaMode, messages: Message[], beforeAppend?: (tx: Sql) => Promise<void>): Promise<number> {
  return db.transaction(async (tx) => {
    const caused: CausedEvents[] = [];
    const before = costCounters().statements;
    await orderBatchHandler(mode)(tx, messages, {
      now,
      emit: (cause, events, expectedVersion) =>
        caused.push({
          context: { source: 'order', now, correlationId: cause.correlationid, causationId: cause.id },
          events,
          expectedVersion,
        }),
    });
    const statements = costCounters().statements - before;
    await beforeAppend?.(tx);
    await appendCaused(tx, caused);
    return statements;
  });
}

/** What the orders' streams got after their OrderCreated, in append order. */
const events = async (ids: string[]) =>
  (
    await db.query<{ envelope: Envelope }>(
      "SELECT envelope FROM outbox WHERE subject = ANY($1) AND type <> 'OrderCreated' ORDER BY position",
      [ids],
    )
  ).map((r) => r.envelope);
const statuses = async (ids: string[]) => Promise.all(ids.map(async (id) => (await getOrder(db, id))?.status));

describe('order batch handler', () => {
  it(
    'given 50 pending orders, when a batch of their PaymentProcessed is handled, then each is COMPLETED at ' +
      'version 2 by one event caused by its message, in as many statements as a batch of one',
    async () => {
      const [alone = ''] = await placed(1);
      const ids = await placed(50);
      const batch = ids.map(paymentProcessed);

      const forOne = await handle('choreography', [paymentProcessed(alone)]);
      const forFifty = await handle('choreography', batch);

      expect(forOne).toBe(2);
      expect(forFifty).toBe(forOne);
      expect(new Set(await statuses([alone, ...ids]))).toEqual(new Set(['COMPLETED']));
      expect(await getOrder(db, ids[0] ?? '')).toMatchObject({ version: 2, updatedAt: now.toISOString() });
      const emitted = await events([alone, ...ids]);
      expect(emitted).toHaveLength(51);
      for (const [k, m] of batch.entries()) {
        expect(emitted[k + 1]).toMatchObject({
          type: 'OrderCompleted',
          subject: m.subject,
          sequence: 2,
          causationid: m.id,
          correlationid: m.correlationid,
          data: { orderId: m.subject, totalAmount: 1000, currency: 'EUR' },
        });
      }
    },
  );

  it(
    'given pending orders, when a choreographed batch mixes failures, a completion, an order already cancelled ' +
      'and products, then each order moves as its message says and the catalogue takes the products',
    async () => {
      const [rejected = '', unpaid = '', paid = '', cancelled = ''] = await placed(4);
      await db.transaction((tx) =>
        executeOrderCommand(
          tx,
          cancelled,
          { type: 'CancelOrder', reason: 'changed my mind' },
          { source: 'order', now },
        ),
      );
      const beans = crypto.randomUUID();
      const mill = crypto.randomUUID();

      await handle('choreography', [
        inventoryRejected(rejected),
        productAdded(beans, 500),
        paymentFailed(unpaid),
        paymentProcessed(paid),
        paymentProcessed(cancelled),
        productAdded(mill, 9000),
      ]);

      expect(await getOrder(db, rejected)).toMatchObject({ status: 'FAILED', reason: 'out of stock', version: 2 });
      expect(await getOrder(db, unpaid)).toMatchObject({
        status: 'FAILED',
        reason: 'payment failed: card declined',
        version: 2,
      });
      expect(await getOrder(db, paid)).toMatchObject({ status: 'COMPLETED', version: 2 });
      expect(await getOrder(db, cancelled)).toMatchObject({
        status: 'CANCELLED',
        reason: 'changed my mind',
        version: 2,
      });
      expect((await events([rejected, unpaid, paid, cancelled])).map((e) => [e.type, e.subject])).toEqual([
        ['OrderCancelled', cancelled],
        ['OrderFailed', rejected],
        ['OrderFailed', unpaid],
        ['OrderCompleted', paid],
      ]);
      const catalogue = await db.query<{ product_id: string; price: number }>(
        'SELECT product_id, price FROM catalogue WHERE product_id = ANY($1) ORDER BY price',
        [[beans, mill]],
      );
      expect(catalogue).toEqual([
        { product_id: beans, price: 500 },
        { product_id: mill, price: 9000 },
      ]);
    },
  );

  it(
    'given a product in the catalogue, when its ProductAdded comes ' +
      'again, then its row is the one of the last message',
    async () => {
      const beans = crypto.randomUUID();
      await handle('choreography', [productAdded(beans, 500)]);

      await handle('choreography', [productAdded(beans, 700)]);

      expect(await db.query('SELECT price FROM catalogue WHERE product_id = $1', [beans])).toEqual([{ price: 700 }]);
    },
  );

  it(
    "given pending orders, when an orchestrated batch holds the saga's commands " +
      'and replies meant for choreography, then only the commands decide',
    async () => {
      const [completed = '', failed = '', untouched = ''] = await placed(3);

      await handle('orchestration', [
        completeOrder(completed),
        failOrder(failed),
        paymentProcessed(untouched),
        inventoryRejected(untouched),
      ]);

      expect(await statuses([completed, failed, untouched])).toEqual(['COMPLETED', 'FAILED', 'PENDING']);
      expect(await getOrder(db, failed)).toMatchObject({ reason: 'deadline passed' });
      expect((await events([completed, failed, untouched])).map((e) => e.type)).toEqual([
        'OrderCompleted',
        'OrderFailed',
      ]);
    },
  );

  it(
    'given a batch with a message about an unknown order, when it is handled, ' +
      'then it fails with a PermanentError and nothing is written',
    async () => {
      const [known = ''] = await placed(1);
      const unknown = crypto.randomUUID();

      const failure = handle('choreography', [paymentProcessed(known), paymentProcessed(unknown)]);

      await expect(failure).rejects.toBeInstanceOf(PermanentError);
      await expect(failure).rejects.toMatchObject({
        reason: 'unknown order',
        message: `PaymentProcessed for unknown order ${unknown}`,
      });
      expect(await statuses([known])).toEqual(['PENDING']);
      expect(await events([known])).toEqual([]);
    },
  );

  it(
    'given an order loaded by a batch, when another writer appends to its stream ' +
      'before the batch does, then the append fails with a conflict',
    async () => {
      const [orderId = ''] = await placed(1);

      const failure = handle('choreography', [paymentProcessed(orderId)], async (tx) => {
        await appendToOutbox(tx, { source: 'order', now }, [
          { type: 'OrderCancelled', subject: orderId, data: { orderId, userId: 'ada', reason: 'raced' } },
        ]);
      });

      await expect(failure).rejects.toBeInstanceOf(ConflictError);
      expect(await statuses([orderId])).toEqual(['PENDING']);
    },
  );

  it(
    'given the consumer with the batch handler, when 20 replies arrive at once and one about an ' +
      'unknown order, then 20 orders complete and the unknown one is parked alone',
    async () => {
      const ids = await placed(20);
      const bus = await createLocalBus(db);
      const consumer = await startConsumer(
        {
          name: 'order',
          db,
          bus,
          log: silentLogger,
          sources: orderSources('choreography'),
          handleBatch: orderBatchHandler('choreography'),
        },
        false,
      );

      try {
        const unknown = crypto.randomUUID();
        const outcomes = await Promise.all(
          [...ids.map(paymentProcessed), paymentProcessed(unknown)].map((m) => consumer.process(m)),
        );

        expect(outcomes.filter((o) => o === 'applied')).toHaveLength(20);
        expect(outcomes.at(-1)).toBe('dead-lettered');
        expect(new Set(await statuses(ids))).toEqual(new Set(['COMPLETED']));
        expect(await db.query('SELECT reason FROM dead_letters WHERE subject = $1', [unknown])).toEqual([
          { reason: 'unknown order' },
        ]);
      } finally {
        await consumer.stop();
        await bus.close();
      }
    },
  );
});
