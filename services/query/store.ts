// Reading and writing the read models, always inside the caller's transaction. Each
// write is the projection's pure fold applied to the stored document (or an additive
// update, for availability), so applying an event is idempotent through the
// consumer's inbox and order-safe through its per-subject positions.
import type { Sql } from '@converge/platform';
import type { Availability, AvailabilityDelta } from './projections/product-availability.ts';
import type { CountChange } from './projections/order-counts.ts';
import type { OrderSummary } from './projections/order-summary.ts';
import type { UserOrder } from './projections/user-orders.ts';

export async function loadSummary(tx: Sql, orderId: string): Promise<OrderSummary | undefined> {
  const [row] = await tx.query<{ document: OrderSummary }>('SELECT document FROM order_summaries WHERE order_id = $1 FOR UPDATE', [orderId]);
  return row?.document;
}

/** Saves the summary; returns the row's new version (for the cache). */
export async function saveSummary(tx: Sql, doc: OrderSummary): Promise<number> {
  const [row] = await tx.query<{ version: number }>(
    `INSERT INTO order_summaries (order_id, status, document, updated_at, version) VALUES ($1, $2, $3::jsonb, $4, 1)
     ON CONFLICT (order_id) DO UPDATE SET status = $2, document = $3::jsonb, updated_at = $4, version = order_summaries.version + 1
     RETURNING version`,
    [doc.orderId, doc.status, JSON.stringify(doc), doc.updatedAt],
  );
  return row?.version ?? 0;
}

export async function moveCounts(tx: Sql, changes: readonly CountChange[]): Promise<void> {
  for (const { status, by } of changes) {
    await tx.query('INSERT INTO order_counts (status, n) VALUES ($1, $2) ON CONFLICT (status) DO UPDATE SET n = order_counts.n + $2', [status, by]);
  }
}

type UserOrderRow = {
  order_id: string; user_id: string; status: UserOrder['status']; total_amount: number; currency: string; lines: number; created_at: Date; updated_at: Date;
};
const toUserOrder = (r: UserOrderRow): UserOrder => ({
  orderId: r.order_id, userId: r.user_id, status: r.status, totalAmount: r.total_amount, currency: r.currency, lines: r.lines,
  createdAt: r.created_at.toISOString(), updatedAt: r.updated_at.toISOString(),
});

export async function loadUserOrder(tx: Sql, orderId: string): Promise<UserOrder | undefined> {
  const [row] = await tx.query<UserOrderRow>('SELECT * FROM user_orders WHERE order_id = $1 FOR UPDATE', [orderId]);
  return row === undefined ? undefined : toUserOrder(row);
}

export async function saveUserOrder(tx: Sql, row: UserOrder): Promise<void> {
  await tx.query(
    `INSERT INTO user_orders (order_id, user_id, status, total_amount, currency, lines, created_at, updated_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
     ON CONFLICT (order_id) DO UPDATE SET status = $3, updated_at = $8`,
    [row.orderId, row.userId, row.status, row.totalAmount, row.currency, row.lines, row.createdAt, row.updatedAt],
  );
}

/** Adds deltas to products, in product order (two instances never deadlock on them); returns each row's new version. */
export async function applyAvailability(tx: Sql, deltas: readonly AvailabilityDelta[], at: Date): Promise<{ productId: string; version: number }[]> {
  const sorted = [...deltas].sort((a, b) => (a.productId < b.productId ? -1 : a.productId > b.productId ? 1 : 0));
  const versions: { productId: string; version: number }[] = [];
  for (const d of sorted) {
    const [row] = await tx.query<{ version: number }>(
      `INSERT INTO product_availability (product_id, name, price, currency, stock_quantity, reserved, sold, updated_at, version)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1)
       ON CONFLICT (product_id) DO UPDATE SET
         name = coalesce($2, product_availability.name), price = coalesce($3, product_availability.price),
         currency = coalesce($4, product_availability.currency),
         stock_quantity = product_availability.stock_quantity + $5, reserved = product_availability.reserved + $6,
         sold = product_availability.sold + $7, updated_at = $8, version = product_availability.version + 1
       RETURNING version`,
      [d.productId, d.name ?? null, d.price ?? null, d.currency ?? null, d.stockQuantity, d.reserved, d.sold, at],
    );
    versions.push({ productId: d.productId, version: row?.version ?? 0 });
  }
  return versions;
}

// ---- reads ----

export async function getSummary(db: Sql, orderId: string): Promise<{ version: number; value: OrderSummary } | undefined> {
  const [row] = await db.query<{ document: OrderSummary; version: number }>('SELECT document, version FROM order_summaries WHERE order_id = $1', [orderId]);
  return row === undefined ? undefined : { version: row.version, value: row.document };
}

export async function listUserOrders(db: Sql, userId: string, limit: number, before?: string): Promise<UserOrder[]> {
  const rows = await db.query<UserOrderRow>(
    `SELECT * FROM user_orders WHERE user_id = $1 AND ($2::timestamptz IS NULL OR created_at < $2)
      ORDER BY created_at DESC, order_id LIMIT $3`,
    [userId, before ?? null, limit],
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
