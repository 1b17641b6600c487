// The order event store. An order is a stream in the outbox; `orders` holds its folded
// state, written in the same transaction as every append, so a row's version is its
// stream's version. One command on one order (a cancel) locks the row, folds the stream,
// decides and appends at the expected version. A consumer batch loads the rows of every
// order it touches in one statement (locked, in id order), decides in memory, and writes
// them back in one; its events are appended at the versions it loaded. The row lock
// serialises writers of one order; the (subject, sequence) key catches anything else.
import type { Envelope, OrderStatus } from '@converge/contracts';
import {
  appendToOutbox,
  ConflictError,
  NotFoundError,
  type AppendContext,
  type Db,
  type Sql,
} from '@converge/platform';
import { decide, evolve, initialOrder, type Order, type OrderCommand, type OrderEvent } from './order.ts';

export async function loadOrder(tx: Sql, orderId: string, lock: boolean): Promise<Order> {
  // Locking the folded row and reading the stream is one statement; no row, no stream.
  const rows = await tx.query<{ envelope: Envelope<OrderEvent['type'], OrderEvent['data']> }>(
    lock
      ? `SELECT e.envelope FROM orders o JOIN outbox e ON e.subject = o.order_id::text
          WHERE o.order_id = $1 ORDER BY e.sequence FOR UPDATE OF o`
      : 'SELECT envelope FROM outbox WHERE subject = $1 ORDER BY sequence',
    [orderId],
  );
  return rows.reduce<Order>(
    (state, { envelope }) => evolve(state, { type: envelope.type, data: envelope.data } as OrderEvent),
    initialOrder,
  );
}

/** Loads, decides, appends and saves: one command on one order, inside `tx`. */
export async function executeOrderCommand(
  tx: Sql,
  orderId: string,
  command: OrderCommand,
  context: AppendContext,
): Promise<{ order: Order; events: OrderEvent[] }> {
  // A new order's id was just drawn at random: there is no stream to load or lock.
  const state = command.type === 'PlaceOrder' ? initialOrder : await loadOrder(tx, orderId, true);
  if (command.type !== 'PlaceOrder' && state.status === 'NONE') throw new NotFoundError(`no order ${orderId}`);
  const events = decide(command, state);
  if (events.length === 0) return { order: state, events };
  await appendToOutbox(
    tx,
    context,
    events.map((e) => ({ ...e, subject: orderId })),
    state.version,
  );
  const order = events.reduce(evolve, state);
  await saveOrder(tx, order, context.now);
  return { order, events };
}

async function saveOrder(tx: Sql, order: Order, now: Date): Promise<void> {
  if (order.status === 'NONE') return;
  const reason = order.status === 'FAILED' || order.status === 'CANCELLED' ? order.reason : null;
  await tx.query(
    `INSERT INTO orders
            (order_id, user_id, status, items, total_amount, currency, reason, version, created_at, updated_at)
     VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, $10)
     ON CONFLICT (order_id) DO UPDATE SET status = $3, reason = $7, version = $8, updated_at = $10`,
    [
      order.orderId,
      order.userId,
      order.status,
      JSON.stringify(order.items),
      order.totalAmount,
      order.currency,
      reason,
      order.version,
      order.createdAt,
      now,
    ],
  );
}

/** An order's ETag: its id and version, so any write since changes it. */
export const etagOf = (order: OrderView): string => `"${order.orderId}:${order.version}"`;

/**
 * Cancels an order, inside one transaction: 404 when there is none, 412 when `ifMatch`
 * is given and is not its current ETag; cancelling a cancelled order changes nothing.
 */
export async function cancelOrder(
  db: Db,
  orderId: string,
  reason: string,
  ifMatch: string | undefined,
  now: Date,
  /** Whether the caller may see this order; one they may not is not found. */
  visible: (order: OrderView) => boolean = () => true,
): Promise<OrderView> {
  const view = await db.transaction(async (tx) => {
    const current = await getOrder(tx, orderId);
    if (current === undefined || !visible(current)) throw new NotFoundError(`no order ${orderId}`);
    if (ifMatch !== undefined && ifMatch !== etagOf(current))
      throw new ConflictError(`order is at ${etagOf(current)}, not ${ifMatch}`, 412);
    await executeOrderCommand(tx, orderId, { type: 'CancelOrder', reason }, { source: 'order', now });
    return getOrder(tx, orderId);
  });
  if (view === undefined) throw new NotFoundError(`no order ${orderId}`);
  return view;
}

/** The folded state of each of `orderIds` that exists, its row locked (one statement). */
export async function loadOrders(tx: Sql, orderIds: readonly string[]): Promise<Map<string, Order>> {
  if (orderIds.length === 0) return new Map();
  const rows = await tx.query<OrderRow>(
    'SELECT * FROM orders WHERE order_id = ANY($1::uuid[]) ORDER BY order_id FOR UPDATE',
    [orderIds],
  );
  return new Map(rows.map((r) => [r.order_id, orderOf(r)]));
}

/** Writes back the state of orders that exist (one statement). */
export async function saveOrders(tx: Sql, orders: readonly Order[], now: Date): Promise<void> {
  const changes = orders.flatMap((o) =>
    o.status === 'NONE'
      ? []
      : [{ order_id: o.orderId, status: o.status, reason: 'reason' in o ? o.reason : null, version: o.version }],
  );
  if (changes.length === 0) return;
  // `= ANY($3)` gives the planner an index condition on orders itself: joined only to
  // the recordset, a young table's stale statistics make it scan every order.
  await tx.query(
    `UPDATE orders o SET status = x.status, reason = x.reason, version = x.version, updated_at = $2
       FROM jsonb_to_recordset($1::jsonb) AS x(order_id uuid, status text, reason text, version int)
      WHERE o.order_id = x.order_id AND o.order_id = ANY($3::uuid[])`,
    [JSON.stringify(changes), now, changes.map((c) => c.order_id)],
  );
}

export type OrderView = {
  orderId: string;
  userId: string;
  status: OrderStatus;
  items: { productId: string; quantity: number; unitPrice: number }[];
  totalAmount: number;
  currency: string;
  reason?: string;
  version: number;
  createdAt: string;
  updatedAt: string;
};

type OrderRow = {
  order_id: string;
  user_id: string;
  status: OrderView['status'];
  items: OrderView['items'];
  total_amount: number;
  currency: string;
  reason: string | null;
  version: number;
  created_at: Date;
  updated_at: Date;
};

const toView = (r: OrderRow): OrderView => ({
  orderId: r.order_id,
  userId: r.user_id,
  status: r.status,
  items: r.items,
  totalAmount: r.total_amount,
  currency: r.currency,
  ...(r.reason === null ? {} : { reason: r.reason }),
  version: r.version,
  createdAt: r.created_at.toISOString(),
  updatedAt: r.updated_at.toISOString(),
});

function orderOf(r: OrderRow): Order {
  const placed = {
    orderId: r.order_id,
    userId: r.user_id,
    items: r.items,
    totalAmount: r.total_amount,
    currency: r.currency,
    createdAt: r.created_at.toISOString(),
    version: r.version,
  };
  switch (r.status) {
    case 'PENDING':
    case 'COMPLETED':
      return { ...placed, status: r.status };
    case 'FAILED':
    case 'CANCELLED':
      return { ...placed, status: r.status, reason: r.reason ?? '' };
    default: {
      const status: never = r.status;
      throw new Error(`order ${r.order_id} has status ${String(status)}`);
    }
  }
}

export async function getOrder(db: Sql, orderId: string): Promise<OrderView | undefined> {
  const [row] = await db.query<OrderRow>('SELECT * FROM orders WHERE order_id = $1', [orderId]);
  return row === undefined ? undefined : toView(row);
}

export async function listOrders(db: Sql, userId: string, limit: number, before?: string): Promise<OrderView[]> {
  const rows = await db.query<OrderRow>(
    `SELECT * FROM orders WHERE user_id = $1 AND ($2::timestamptz IS NULL OR created_at < $2)
      ORDER BY created_at DESC, order_id LIMIT $3`,
    [userId, before ?? null, limit],
  );
  return rows.map(toView);
}

/**
 * Products reach the order service's catalogue through events, a moment after they are
 * created. Waits until it can price every one of `productIds`; resolves to how many it
 * knows when `timeoutMs` runs out first.
 */
export async function waitUntilPriced(
  db: Sql,
  productIds: readonly string[],
  timeoutMs: number,
  pollMs = 50,
): Promise<{ ok: boolean; known: number }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const [row] = await db.query<{ n: number }>(
      'SELECT count(*)::int AS n FROM catalogue WHERE product_id = ANY($1::uuid[])',
      [productIds],
    );
    const known = row?.n ?? 0;
    if (known >= new Set(productIds).size) return { ok: true, known };
    if (Date.now() > deadline) return { ok: false, known };
    await new Promise((resolve) => setTimeout(resolve, pollMs));
  }
}

export type Product = { productId: string; name: string; price: number; currency: string };

/** Enters products into the catalogue, the last of each id winning (one statement). */
export async function upsertCatalogue(tx: Sql, products: readonly Product[]): Promise<void> {
  // One statement may not update a row twice, so each id goes in once.
  const rows = [
    ...new Map(
      products.map((p) => [
        p.productId,
        { product_id: p.productId, name: p.name, price: p.price, currency: p.currency },
      ]),
    ).values(),
  ];
  if (rows.length === 0) return;
  await tx.query(
    `INSERT INTO catalogue (product_id, name, price, currency)
     SELECT product_id, name, price, currency
       FROM jsonb_to_recordset($1::jsonb) AS x(product_id uuid, name text, price bigint, currency text)
     ON CONFLICT (product_id) DO UPDATE SET name = excluded.name, price = excluded.price, currency = excluded.currency`,
    [JSON.stringify(rows)],
  );
}

/** The API's view of an order, from its folded state. */
export function viewOf(order: Exclude<Order, { status: 'NONE' }>, updatedAt: Date): OrderView {
  return {
    orderId: order.orderId,
    userId: order.userId,
    status: order.status,
    items: order.items,
    totalAmount: order.totalAmount,
    currency: order.currency,
    ...('reason' in order ? { reason: order.reason } : {}),
    version: order.version,
    createdAt: order.createdAt,
    updatedAt: updatedAt.toISOString(),
  };
}
