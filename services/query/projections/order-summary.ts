// Order summary: one document per order, folded from the events of the order,
// inventory and payment services: the order and its lines, the stock outcome, the
// payment, and the full status timeline. Events of one source arrive in order per
// order; events of different sources may interleave in any order, so every field is
// owned by one source and the timeline is kept sorted by event time: the document is
// the same whatever the interleaving. Cached by order (`order:<id>`), each row with a
// version raised by every write.
import type { DomainEvent, OrderLine, OrderStatus } from '@converge/contracts';
import type { Sql } from '@converge/platform';
import { readModel, type SaveTo } from '../read-model.ts';

export type { OrderStatus };
export type StockOutcome = 'RESERVED' | 'REJECTED' | 'RELEASED' | 'COMMITTED';
export type PaymentOutcome = 'PROCESSED' | 'FAILED' | 'REFUNDED';

export type TimelineEntry = { at: string; source: string; type: string; detail?: string };

export type OrderSummary = {
  orderId: string;
  /** Known once OrderCreated has been applied; other sources may be seen first. */
  userId: string | null;
  status: OrderStatus | null;
  items: OrderLine[];
  totalAmount: number | null;
  currency: string | null;
  reason: string | null;
  stock: { outcome: StockOutcome; reason?: string } | null;
  payment: { paymentId: string; outcome: PaymentOutcome; amount: number; reason?: string } | null;
  timeline: TimelineEntry[];
  createdAt: string | null;
  updatedAt: string;
};

export type Envelope = { source: string; time: string } & DomainEvent;

export const emptySummary = (orderId: string, at: string): OrderSummary => ({
  orderId,
  userId: null,
  status: null,
  items: [],
  totalAmount: null,
  currency: null,
  reason: null,
  stock: null,
  payment: null,
  timeline: [],
  createdAt: null,
  updatedAt: at,
});

/** The order an event is about, when it is about one (its subject otherwise). */
export function orderOf(event: DomainEvent): string | undefined {
  return 'orderId' in event.data ? event.data.orderId : undefined;
}

const orderEvents = new Set(['OrderCreated', 'OrderCompleted', 'OrderFailed', 'OrderCancelled']);
const stockEvents = new Set(['InventoryReserved', 'InventoryRejected', 'InventoryReleased', 'InventoryCommitted']);
const paymentEvents = new Set(['PaymentProcessed', 'PaymentFailed', 'PaymentRefunded']);

/** Whether this projection folds the event. */
export const summarises = (type: string): boolean =>
  orderEvents.has(type) || stockEvents.has(type) || paymentEvents.has(type);

function withTimeline(doc: OrderSummary, entry: TimelineEntry): OrderSummary {
  const timeline = [...doc.timeline, entry].sort((a, b) =>
    a.at < b.at ? -1 : a.at > b.at ? 1 : a.type < b.type ? -1 : a.type > b.type ? 1 : 0,
  );
  return { ...doc, timeline, updatedAt: doc.updatedAt > entry.at ? doc.updatedAt : entry.at };
}

export function evolveSummary(doc: OrderSummary, event: Envelope): OrderSummary {
  const entry = { at: event.time, source: event.source, type: event.type };
  switch (event.type) {
    case 'OrderCreated': {
      const { userId, items, totalAmount, currency, createdAt } = event.data;
      return withTimeline(
        { ...doc, userId, items, totalAmount, currency, createdAt, status: doc.status ?? 'PENDING' },
        entry,
      );
    }
    case 'OrderCompleted':
      return withTimeline({ ...doc, status: 'COMPLETED' }, entry);
    case 'OrderFailed':
      return withTimeline(
        { ...doc, status: 'FAILED', reason: event.data.reason },
        { ...entry, detail: event.data.reason },
      );
    case 'OrderCancelled':
      return withTimeline(
        { ...doc, status: 'CANCELLED', reason: event.data.reason },
        { ...entry, detail: event.data.reason },
      );
    case 'InventoryReserved':
      return withTimeline({ ...doc, stock: { outcome: 'RESERVED' } }, entry);
    case 'InventoryRejected':
      return withTimeline(
        { ...doc, stock: { outcome: 'REJECTED', reason: event.data.reason } },
        { ...entry, detail: event.data.reason },
      );
    case 'InventoryReleased':
      return withTimeline(
        { ...doc, stock: { outcome: 'RELEASED', reason: event.data.reason } },
        { ...entry, detail: event.data.reason },
      );
    case 'InventoryCommitted':
      return withTimeline({ ...doc, stock: { outcome: 'COMMITTED' } }, entry);
    case 'PaymentProcessed':
      return withTimeline(
        { ...doc, payment: { paymentId: event.data.paymentId, outcome: 'PROCESSED', amount: event.data.amount } },
        entry,
      );
    case 'PaymentFailed':
      return withTimeline(
        {
          ...doc,
          payment: {
            paymentId: event.data.paymentId,
            outcome: 'FAILED',
            amount: event.data.amount,
            reason: event.data.reason,
          },
        },
        { ...entry, detail: event.data.reason },
      );
    case 'PaymentRefunded':
      return withTimeline(
        { ...doc, payment: { paymentId: event.data.paymentId, outcome: 'REFUNDED', amount: event.data.amount } },
        entry,
      );
    default:
      return doc;
  }
}

export const summaryKey = (orderId: string) => `order:${orderId}`;

// Rows are locked and written in key order, so two instances lock them in the same order.
async function loadSummaries(tx: Sql, orderIds: readonly string[]): Promise<Map<string, OrderSummary>> {
  const rows = await tx.query<{ order_id: string; document: OrderSummary }>(
    'SELECT order_id, document FROM order_summaries WHERE order_id = ANY($1::uuid[]) ORDER BY order_id FOR UPDATE',
    [[...orderIds]],
  );
  return new Map(rows.map((r) => [r.order_id, r.document]));
}

async function saveSummaries(
  tx: Sql,
  docs: readonly OrderSummary[],
  { table }: SaveTo,
): Promise<{ id: string; version: number }[]> {
  if (docs.length === 0) return [];
  const rows = await tx.query<{ order_id: string; version: number }>(
    `INSERT INTO ${table} (order_id, status, document, updated_at, version)
     SELECT x.order_id, x.status, x.document, x.updated_at, 1
       FROM jsonb_to_recordset($1::jsonb) AS x(order_id uuid, status text, document jsonb, updated_at timestamptz)
      ORDER BY x.order_id
     ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, document = excluded.document,
       updated_at = excluded.updated_at, version = ${table}.version + 1
     RETURNING order_id, version`,
    [
      JSON.stringify(
        docs.map((d) => ({ order_id: d.orderId, status: d.status, document: d, updated_at: d.updatedAt })),
      ),
    ],
  );
  return rows.map((r) => ({ id: r.order_id, version: r.version }));
}

export const orderSummary = readModel({
  name: 'order-summary',
  table: 'order_summaries',
  cached: { column: 'order_id', key: summaryKey },
  keysOf: (event) => {
    const orderId = orderOf(event);
    return orderId !== undefined && summarises(event.type) ? [orderId] : [];
  },
  evolve: (doc: OrderSummary | undefined, event, orderId) =>
    evolveSummary(doc ?? emptySummary(orderId, event.time), event),
  load: loadSummaries,
  save: saveSummaries,
});

export async function getSummary(
  db: Sql,
  orderId: string,
): Promise<{ version: number; value: OrderSummary } | undefined> {
  const [row] = await db.query<{ document: OrderSummary; version: number }>(
    'SELECT document, version FROM order_summaries WHERE order_id = $1',
    [orderId],
  );
  return row === undefined ? undefined : { version: row.version, value: row.document };
}
