// Reading and writing the read models, always inside the caller's transaction. Each
// write is the projection's pure fold applied to the stored document (or an additive
// update, for availability), so applying an event is idempotent through the
// consumer's inbox and order-safe through its per-subject positions.
import type { Sql } from '@converge/platform';
import type { Availability, AvailabilityDelta } from './projections/product-availability.ts';
import type { CountMove } from './projections/order-counts.ts';
import type { OrderSummary } from './projections/order-summary.ts';
import type { UserOrder } from './projections/user-orders.ts';

// Every write takes a batch of rows (the consumer applies many events per transaction)
// in one statement, in key order, so two instances lock rows in the same order.

export async function loadSummaries(tx: Sql, orderIds: readonly string[]): Promise<Map<string, OrderSummary>> {
  if (orderIds.length === 0) return new Map();
  const rows = await tx.query<{ order_id: string; document: OrderSummary }>(
    'SELECT order_id, document FROM order_summaries WHERE order_id = ANY($1::uuid[]) ORDER BY order_id FOR UPDATE', [[...orderIds]],
  );
  return new Map(rows.map((r) => [r.order_id, r.document]));
}

/** Saves the summaries; returns each row's new version (for the cache). */
export async function saveSummaries(tx: Sql, docs: readonly OrderSummary[]): Promise<{ orderId: string; version: number }[]> {
  if (docs.length === 0) return [];
  const rows = await tx.query<{ order_id: string; version: number }>(
    `INSERT INTO order_summaries (order_id, status, document, updated_at, version)
     SELECT x.order_id, x.status, x.document, x.updated_at, 1
       FROM jsonb_to_recordset($1::jsonb) AS x(order_id uuid, status text, document jsonb, updated_at timestamptz)
      ORDER BY x.order_id
     ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, document = excluded.document, updated_at = excluded.updated_at, version = order_summaries.version + 1
     RETURNING order_id, version`,
    [JSON.stringify(docs.map((d) => ({ order_id: d.orderId, status: d.status, document: d, updated_at: d.updatedAt })))],
  );
  return rows.map((r) => ({ orderId: r.order_id, version: r.version }));
}

export async function moveCounts(tx: Sql, changes: readonly CountMove[]): Promise<void> {
  const moves = changes.filter((c) => c.by !== 0);
  if (moves.length === 0) return;
  await tx.query(
    `INSERT INTO order_counts (status, n)
     SELECT x.status, x.by FROM unnest($1::text[], $2::int[]) AS x(status, by) ORDER BY x.status
     ON CONFLICT (status) DO UPDATE SET n = order_counts.n + excluded.n`,
    [moves.map((m) => m.status), moves.map((m) => m.by)],
  );
}

type UserOrderRow = {
  order_id: string; user_id: string; status: UserOrder['status']; total_amount: number; currency: string; lines: number; created_at: Date; updated_at: Date;
};
const toUserOrder = (r: UserOrderRow): UserOrder => ({
  orderId: r.order_id, userId: r.user_id, status: r.status, totalAmount: r.total_amount, currency: r.currency, lines: r.lines,
  createdAt: r.created_at.toISOString(), updatedAt: r.updated_at.toISOString(),
});

export async function loadUserOrders(tx: Sql, orderIds: readonly string[]): Promise<Map<string, UserOrder>> {
  if (orderIds.length === 0) return new Map();
  const rows = await tx.query<UserOrderRow>('SELECT * FROM user_orders WHERE order_id = ANY($1::uuid[]) ORDER BY order_id FOR UPDATE', [[...orderIds]]);
  return new Map(rows.map((r) => [r.order_id, toUserOrder(r)]));
}

export async function saveUserOrders(tx: Sql, rows: readonly UserOrder[]): Promise<void> {
  if (rows.length === 0) return;
  await tx.query(
    `INSERT INTO user_orders (order_id, user_id, status, total_amount, currency, lines, created_at, updated_at)
     SELECT x.order_id, x.user_id, x.status, x.total_amount, x.currency, x.lines, x.created_at, x.updated_at
       FROM jsonb_to_recordset($1::jsonb)
         AS x(order_id uuid, user_id text, status text, total_amount bigint, currency text, lines int, created_at timestamptz, updated_at timestamptz)
      ORDER BY x.order_id
     ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at`,
    [JSON.stringify(rows.map((r) => ({
      order_id: r.orderId, user_id: r.userId, status: r.status, total_amount: r.totalAmount, currency: r.currency, lines: r.lines, created_at: r.createdAt, updated_at: r.updatedAt,
    })))],
  );
}

/** Adds deltas to products (at most one per product), in product order; returns each row's new version. */
export async function applyAvailability(tx: Sql, deltas: readonly AvailabilityDelta[], at: Date): Promise<{ productId: string; version: number }[]> {
  if (deltas.length === 0) return [];
  const rows = await tx.query<{ product_id: string; version: number }>(
    `INSERT INTO product_availability (product_id, name, price, currency, stock_quantity, reserved, sold, updated_at, version)
     SELECT x.product_id, x.name, x.price, x.currency, x.stock_quantity, x.reserved, x.sold, $2, 1
       FROM jsonb_to_recordset($1::jsonb)
         AS x(product_id uuid, name text, price bigint, currency text, stock_quantity int, reserved int, sold int)
      ORDER BY x.product_id
     ON CONFLICT (product_id) DO UPDATE SET
       name = coalesce(excluded.name, product_availability.name), price = coalesce(excluded.price, product_availability.price),
       currency = coalesce(excluded.currency, product_availability.currency),
       stock_quantity = product_availability.stock_quantity + excluded.stock_quantity, reserved = product_availability.reserved + excluded.reserved,
       sold = product_availability.sold + excluded.sold, updated_at = excluded.updated_at, version = product_availability.version + 1
     RETURNING product_id, version`,
    [JSON.stringify(deltas.map((d) => ({
      product_id: d.productId, name: d.name ?? null, price: d.price ?? null, currency: d.currency ?? null, stock_quantity: d.stockQuantity, reserved: d.reserved, sold: d.sold,
    }))), at],
  );
  return rows.map((r) => ({ productId: r.product_id, version: r.version }));
}

// ---- reads ----

export async function getSummary(db: Sql, orderId: string): Promise<{ version: number; value: OrderSummary } | undefined> {
  const [row] = await db.query<{ document: OrderSummary; version: number }>('SELECT document, version FROM order_summaries WHERE order_id = $1', [orderId]);
  return row === undefined ? undefined : { version: row.version, value: row.document };
}

/** Where a page of a user's orders ends: the last order's creation time and id. */
export type UserOrdersCursor = { createdAt: string; orderId: string };

export async function listUserOrders(
  db: Sql, userId: string, options: { limit: number; status?: string | undefined; after?: UserOrdersCursor | undefined },
): Promise<UserOrder[]> {
  const rows = await db.query<UserOrderRow>(
    `SELECT * FROM user_orders
      WHERE user_id = $1 AND ($2::text IS NULL OR status = $2)
        AND ($3::timestamptz IS NULL OR (created_at, order_id) < ($3::timestamptz, $4::uuid))
      ORDER BY created_at DESC, order_id DESC LIMIT $5`,
    [userId, options.status ?? null, options.after?.createdAt ?? null, options.after?.orderId ?? null, options.limit],
  );
  return rows.map(toUserOrder);
}

type AvailabilityRow = { product_id: string; name: string | null; price: number | null; currency: string | null; stock_quantity: number; reserved: number; sold: number; version: number };
const toAvailability = (r: AvailabilityRow): Availability => ({
  productId: r.product_id, name: r.name, price: r.price, currency: r.currency, stockQuantity: r.stock_quantity, reserved: r.reserved, sold: r.sold,
});

export async function getAvailability(db: Sql, productId: string): Promise<{ version: number; value: Availability } | undefined> {
  const [row] = await db.query<AvailabilityRow>('SELECT * FROM product_availability WHERE product_id = $1', [productId]);
  return row === undefined ? undefined : { version: row.version, value: toAvailability(row) };
}

export async function listAvailability(db: Sql, limit: number, after?: string): Promise<Availability[]> {
  const rows = await db.query<AvailabilityRow>(
    'SELECT * FROM product_availability WHERE ($1::uuid IS NULL OR product_id > $1) ORDER BY product_id LIMIT $2', [after ?? null, limit],
  );
  return rows.map(toAvailability);
}

export async function orderCounts(db: Sql): Promise<Record<string, number>> {
  const rows = await db.query<{ status: string; n: number }>('SELECT status, n FROM order_counts WHERE n <> 0 ORDER BY status');
  return Object.fromEntries(rows.map((r) => [r.status, r.n]));
}
