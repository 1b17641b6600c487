// The read models, pure: given events, when they are folded, then this document. The
// events of different sources reach the query service in any interleaving (each
// source's own events in order); every interleaving must give the same documents.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { DomainEvent } from '@converge/contracts';
import { memoryCache, migrate, openPglite, type Db, type Message } from '@converge/platform';
import { describe, expect, it } from 'vitest';
import { projectBatch, queryHandler } from './consumers.ts';
import { foldEvents, type SourceEvent } from './read-model.ts';
import { foldReadModels, readModels } from './read-models.ts';
import { createLagTracker } from './lag.ts';
import { addUpCounts, countChanges } from './projections/order-counts.ts';
import {
  addUpDeltas,
  availabilityDeltas,
  emptyAvailability,
  evolveAvailability,
} from './projections/product-availability.ts';

const orderId = '00000000-0000-4000-8000-00000000000a';
const productA = '00000000-0000-4000-8000-0000000000a1';
const productB = '00000000-0000-4000-8000-0000000000b2';
const paymentId = '00000000-0000-4000-8000-0000000000cc';
let clock = Date.parse('2026-11-22T10:00:00.000Z');
const at = () => new Date((clock += 10)).toISOString();
const from = (source: string, event: DomainEvent): SourceEvent => ({ ...event, source, time: at() });

const catalogue = [
  from('inventory', {
    type: 'ProductAdded',
    data: { productId: productA, name: 'Beans', price: 500, currency: 'EUR', stockQuantity: 10 },
  }),
  from('inventory', {
    type: 'ProductAdded',
    data: { productId: productB, name: 'Mill', price: 9000, currency: 'EUR', stockQuantity: 2 },
  }),
];
const items = [
  { productId: productA, quantity: 2 },
  { productId: productB, quantity: 1 },
];
const orderEvents = [
  from('order', {
    type: 'OrderCreated',
    data: {
      orderId,
      userId: 'ada',
      items: items.map((i) => ({ ...i, unitPrice: i.productId === productA ? 500 : 9000 })),
      totalAmount: 10_000,
      currency: 'EUR',
      createdAt: new Date(clock).toISOString(),
    },
  }),
  from('order', { type: 'OrderCompleted', data: { orderId, userId: 'ada', totalAmount: 10_000, currency: 'EUR' } }),
];
const inventoryEvents = [
  from('inventory', {
    type: 'InventoryReserved',
    data: { orderId, userId: 'ada', items, totalAmount: 10_000, currency: 'EUR' },
  }),
  from('inventory', { type: 'InventoryCommitted', data: { orderId, items } }),
];
const paymentEvents = [
  from('payment', {
    type: 'PaymentProcessed',
    data: { orderId, paymentId, userId: 'ada', amount: 10_000, currency: 'EUR' },
  }),
];

/** Every interleaving of the lists that keeps each list's own order. */
function interleavings<T>(lists: T[][]): T[][] {
  const nonEmpty = lists.filter((l) => l.length > 0);
  if (nonEmpty.length === 0) return [[]];
  return nonEmpty.flatMap((list, i) => {
    const [head, ...tail] = list as [T, ...T[]];
    const rest = nonEmpty.map((l, j) => (j === i ? tail : l));
    return interleavings(rest).map((r) => [head, ...r]);
  });
}

describe('read models', () => {
  it(
    'given a completed order, when its events are folded, then the summary has ' +
      'lines, stock outcome, payment and the timeline in time order',
    () => {
      const { summaries, userOrders, counts } = foldReadModels([
        ...catalogue,
        ...orderEvents,
        ...inventoryEvents,
        ...paymentEvents,
      ]);
      expect(summaries.get(orderId)).toMatchObject({
        orderId,
        userId: 'ada',
        status: 'COMPLETED',
        totalAmount: 10_000,
        currency: 'EUR',
        reason: null,
        stock: { outcome: 'COMMITTED' },
        payment: { paymentId, outcome: 'PROCESSED', amount: 10_000 },
      });
      expect(summaries.get(orderId)?.timeline.map((e) => e.type)).toEqual([
        'OrderCreated',
        'OrderCompleted',
        'InventoryReserved',
        'InventoryCommitted',
        'PaymentProcessed',
      ]);
      expect(userOrders.get(orderId)).toMatchObject({
        userId: 'ada',
        status: 'COMPLETED',
        lines: 2,
        totalAmount: 10_000,
      });
      expect(counts).toEqual({ COMPLETED: 1 });
    },
  );

  it(
    'given the three sources interleaved in every possible way, when ' +
      'folded, then every read model comes out the same',
    () => {
      const orders = interleavings([orderEvents, inventoryEvents, paymentEvents]);
      expect(orders).toHaveLength(30);
      const results = orders.map((o) => foldReadModels([...catalogue, ...o]));
      const canonical = (m: ReturnType<typeof foldReadModels>) =>
        JSON.stringify({
          summaries: [...m.summaries.values()],
          users: [...m.userOrders.values()],
          products: [...m.availability.values()].sort((a, b) => (a.productId < b.productId ? -1 : 1)),
          counts: m.counts,
        });
      for (const result of results)
        expect(canonical(result)).toBe(canonical(results[0] as ReturnType<typeof foldReadModels>));
    },
  );

  it(
    'given stock moves on several products, when folded in any order, ' + 'then availability is the sum of the deltas',
    () => {
      const restock = from('inventory', {
        type: 'StockAdjusted',
        data: { productId: productA, delta: 5, reason: 'restock', stockQuantity: 15, reserved: 0, sold: 0 },
      });
      const released = from('inventory', {
        type: 'InventoryReleased',
        data: { orderId, items: [{ productId: productB, quantity: 1 }], reason: 'payment failed' },
      });
      const moves = [...inventoryEvents, restock, released];
      for (const order of [moves, [...moves].reverse()]) {
        const { availability } = foldReadModels([...order, ...catalogue]);
        expect(availability.get(productA)).toEqual({
          productId: productA,
          name: 'Beans',
          price: 500,
          currency: 'EUR',
          stockQuantity: 13,
          reserved: 0,
          sold: 2,
        });
        expect(availability.get(productB)).toEqual({
          productId: productB,
          name: 'Mill',
          price: 9000,
          currency: 'EUR',
          stockQuantity: 2,
          reserved: -1,
          sold: 1,
        });
      }
    },
  );

  it('given a declined payment, when folded, then the summary says why and the stock went back', () => {
    const declined = [
      from('order', orderEvents[0] as DomainEvent),
      from('inventory', inventoryEvents[0] as DomainEvent),
      from('payment', {
        type: 'PaymentFailed',
        data: { orderId, paymentId, userId: 'ada', amount: 10_000, reason: 'insufficient credit' },
      }),
      from('inventory', {
        type: 'InventoryReleased',
        data: { orderId, items, reason: 'payment failed: insufficient credit' },
      }),
      from('order', {
        type: 'OrderFailed',
        data: { orderId, userId: 'ada', reason: 'payment failed: insufficient credit' },
      }),
    ];
    const { summaries, counts, availability } = foldReadModels([...catalogue, ...declined]);
    expect(summaries.get(orderId)).toMatchObject({
      status: 'FAILED',
      reason: 'payment failed: insufficient credit',
      stock: { outcome: 'RELEASED' },
      payment: { outcome: 'FAILED', reason: 'insufficient credit' },
    });
    expect(counts).toEqual({ FAILED: 1 });
    expect(availability.get(productA)).toMatchObject({ stockQuantity: 10, reserved: 0, sold: 0 });
  });

  it('given a status change, when counted, then the old status loses one and the new gains one', () => {
    expect(countChanges(null, 'PENDING')).toEqual([{ status: 'PENDING', by: 1 }]);
    expect(countChanges('PENDING', 'COMPLETED')).toEqual([
      { status: 'PENDING', by: -1 },
      { status: 'COMPLETED', by: 1 },
    ]);
    expect(countChanges('FAILED', 'FAILED')).toEqual([]);
  });

  it("given many orders' status changes, when added up, then each status moves once by the net amount", () => {
    const changes = [
      ...countChanges(null, 'PENDING'),
      ...countChanges('PENDING', 'COMPLETED'),
      ...countChanges(null, 'PENDING'),
      ...countChanges(null, 'PENDING'),
      ...countChanges('PENDING', 'FAILED'),
    ];
    expect(addUpCounts(changes).sort((a, b) => (a.status < b.status ? -1 : 1))).toEqual([
      { status: 'COMPLETED', by: 1 },
      { status: 'FAILED', by: 1 },
      { status: 'PENDING', by: 1 },
    ]);
    expect(
      addUpCounts(
        countChanges(null, 'PENDING').concat(
          countChanges('PENDING', 'CANCELLED'),
          countChanges('CANCELLED', 'CANCELLED'),
        ),
      ),
    ).toEqual([{ status: 'CANCELLED', by: 1 }]);
  });

  it(
    "given a batch's stock moves, when added up per product, then " +
      'applying the sums equals applying each move in turn',
    () => {
      const events = [
        ...catalogue,
        ...inventoryEvents,
        from('inventory', {
          type: 'StockAdjusted',
          data: { productId: productA, delta: -3, reason: 'count', stockQuantity: 5, reserved: 0, sold: 2 },
        }),
      ];
      const deltas = events.flatMap((e) => availabilityDeltas(e));
      const oneByOne = (productId: string) =>
        deltas.filter((d) => d.productId === productId).reduce(evolveAvailability, emptyAvailability(productId));
      const summed = addUpDeltas(deltas);
      expect(summed).toHaveLength(2);
      for (const sum of summed)
        expect(evolveAvailability(emptyAvailability(sum.productId), sum)).toEqual(oneByOne(sum.productId));
    },
  );
});

// The consumer hands the projection a batch of due events at once; a batch must leave
// the read models exactly as the same events applied one at a time.
describe('the projection on a database', () => {
  const migrations = path.join(path.dirname(fileURLToPath(import.meta.url)), 'migrations');
  const open = async (name: string) => {
    const db = await openPglite(name);
    await migrate(db, { query: migrations });
    return db;
  };
  const tables = async (db: Db, suffix = '') => ({
    summaries: await db.query(`SELECT order_id, status, document FROM order_summaries${suffix} ORDER BY order_id`),
    users: await db.query(
      `SELECT order_id, user_id, status, total_amount, lines FROM user_orders${suffix} ORDER BY order_id`,
    ),
    products: await db.query(
      `SELECT product_id, name, price, stock_quantity, reserved, sold
         FROM product_availability${suffix} ORDER BY product_id`,
    ),
    counts: await db.query(`SELECT status, n FROM order_counts${suffix} WHERE n <> 0 ORDER BY status`),
  });
  const secondOrder = '00000000-0000-4000-8000-00000000000b';
  const messages = (events: SourceEvent[]): Message[] =>
    events.map((e, i): Message => ({
      ...e,
      specversion: '1.0',
      id: `m${i}`,
      subject: 'orderId' in e.data ? e.data.orderId : 'productId' in e.data ? e.data.productId : 'x',
      sequence: 1,
      datacontenttype: 'application/json',
      dataversion: 1,
      correlationid: 'c',
      causationid: 'c',
    }));

  it(
    'given events of two orders and the catalogue, when applied as batches, ' +
      'then the read models equal those of the same events one by one',
    async () => {
      const events = [
        ...catalogue,
        ...orderEvents,
        ...inventoryEvents,
        ...paymentEvents,
        from('order', {
          type: 'OrderCreated',
          data: {
            orderId: secondOrder,
            userId: 'bob',
            items: [{ productId: productA, quantity: 1, unitPrice: 500 }],
            totalAmount: 500,
            currency: 'EUR',
            createdAt: new Date(clock).toISOString(),
          },
        }),
        from('order', {
          type: 'OrderCancelled',
          data: { orderId: secondOrder, userId: 'bob', reason: 'changed mind' },
        }),
      ];
      const project = projectBatch(createLagTracker(), memoryCache());
      const single = await open('one-by-one');
      const batched = await open('batched');
      try {
        for (const message of messages(events))
          await single.transaction((tx) =>
            queryHandler(project)(tx, message, { now: new Date(clock), emit: () => Promise.resolve() }),
          );
        const all = messages(events);
        // Two batches, the second with several events of one order (as a closed gap releases them).
        await batched.transaction((tx) => project(tx, all.slice(0, 4), { now: new Date(clock) }));
        await batched.transaction((tx) => project(tx, all.slice(4), { now: new Date(clock) }));
        const expected = await tables(single);
        expect(expected.counts).toEqual([
          { status: 'CANCELLED', n: 1 },
          { status: 'COMPLETED', n: 1 },
        ]);
        expect(await tables(batched)).toEqual(expected);
      } finally {
        await single.close();
        await batched.close();
      }
    },
  );

  it(
    'given the events the consumer applied, when every read model is filled from their fold ' +
      'through its own save into an empty table (a rebuild), then each equals the live table',
    async () => {
      const events = [...catalogue, ...orderEvents, ...inventoryEvents, ...paymentEvents];
      const db = await open('filled');
      try {
        await db.transaction((tx) =>
          projectBatch(createLagTracker(), memoryCache())(tx, messages(events), { now: new Date(clock) }),
        );
        const run = foldEvents(readModels, events);
        await db.transaction(async (tx) => {
          for (const model of readModels) {
            await tx.query(`CREATE TABLE ${model.table}_filled (LIKE ${model.table} INCLUDING ALL)`);
            await model.save(tx, run, { table: `${model.table}_filled`, now: new Date(clock) });
          }
        });
        expect(await tables(db, '_filled')).toEqual(await tables(db));
      } finally {
        await db.close();
      }
    },
  );

  it('given a batch, when it is projected, then each read model counts the events that changed it', async () => {
    const lag = createLagTracker();
    const db = await open('lag');
    try {
      await db.transaction((tx) =>
        projectBatch(lag, memoryCache())(
          tx,
          messages([...catalogue, ...orderEvents, ...inventoryEvents, ...paymentEvents]),
          { now: new Date(clock) },
        ),
      );
      // Five events about the order; two from the order service; three stock moves (and
      // the catalogue); the counts move on OrderCreated and OrderCompleted.
      expect(Object.fromEntries(readModels.map(({ name }) => [name, lag.report(name).applied]))).toEqual({
        'order-summary': 5,
        'user-orders': 2,
        'product-availability': 4,
        'order-counts': 2,
      });
    } finally {
      await db.close();
    }
  });
});
