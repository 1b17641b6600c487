// Inventory state in its own database. Every function takes the caller's transaction,
// so a stock move, the reservation it belongs to and the events it emits commit
// together. Stock rows are locked in product-id order to avoid deadlocks, and every
// update is conditional with its row count checked.
import type { StockLine } from '@converge/contracts';
import { ConflictError, type Sql } from '@converge/platform';
import type { Move, Product, Reservation } from './inventory.ts';

type ProductRow = {
  product_id: string; name: string; price: number; currency: string; stock_quantity: number; reserved: number; sold: number;
};

const toProduct = (r: ProductRow): Product => ({
  productId: r.product_id, name: r.name, price: r.price, currency: r.currency,
  stockQuantity: r.stock_quantity, reserved: r.reserved, sold: r.sold,
});

const productColumns = 'product_id, name, price, currency, stock_quantity, reserved, sold';

export async function lockProducts(tx: Sql, productIds: readonly string[]): Promise<Map<string, Product>> {
  const rows = await tx.query<ProductRow>(
    `SELECT ${productColumns} FROM products WHERE product_id = ANY($1::uuid[]) ORDER BY product_id FOR UPDATE`,
    [productIds],
  );
  return new Map(rows.map((r) => [r.product_id, toProduct(r)]));
}

export async function getProduct(db: Sql, productId: string): Promise<Product | undefined> {
  const [row] = await db.query<ProductRow>(`SELECT ${productColumns} FROM products WHERE product_id = $1`, [productId]);
  return row === undefined ? undefined : toProduct(row);
}

export async function listProducts(db: Sql, limit: number, offset: number): Promise<Product[]> {
  const rows = await db.query<ProductRow>(`SELECT ${productColumns} FROM products ORDER BY name, product_id LIMIT $1 OFFSET $2`, [limit, offset]);
  return rows.map(toProduct);
}

export async function insertProduct(tx: Sql, product: Product, now: Date): Promise<boolean> {
  const inserted = await tx.query(
    `INSERT INTO products (product_id, name, price, currency, stock_quantity, created_at, updated_at)
     VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT DO NOTHING RETURNING 1`,
    [product.productId, product.name, product.price, product.currency, product.stockQuantity, now],
  );
  if (inserted.length === 0) return false;
  await tx.query('INSERT INTO stock_adjustments (product_id, delta, reason, at) VALUES ($1, $2, $3, $4)', [
    product.productId, product.stockQuantity, 'initial stock', now,
  ]);
  return true;
}

/** Records a restock; returns undefined when this idempotency key was already used. */
export async function adjustStock(
  tx: Sql, productId: string, delta: number, reason: string, idempotencyKey: string | undefined, now: Date,
): Promise<Product | undefined> {
  const recorded = await tx.query(
    `INSERT INTO stock_adjustments (product_id, delta, reason, idempotency_key, at) VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (product_id, idempotency_key) DO NOTHING RETURNING 1`,
    [productId, delta, reason, idempotencyKey ?? null, now],
  );
  if (recorded.length === 0) return undefined;
  const [row] = await tx.query<ProductRow>(
    `UPDATE products SET stock_quantity = stock_quantity + $2, updated_at = $3
      WHERE product_id = $1 AND stock_quantity + $2 >= 0 RETURNING ${productColumns}`,
    [productId, delta, now],
  );
  if (row === undefined) throw new ConflictError(`stock of ${productId} cannot go below zero`);
  return toProduct(row);
}

export async function applyMoves(tx: Sql, moves: readonly Move[], now: Date): Promise<void> {
  if (moves.length === 0) return;
  const updated = await tx.query<{ product_id: string }>(
    `UPDATE products p SET stock_quantity = p.stock_quantity + m.available, reserved = p.reserved + m.reserved, sold = p.sold + m.sold, updated_at = $2
       FROM jsonb_to_recordset($1::jsonb) AS m("productId" uuid, available int, reserved int, sold int)
      WHERE p.product_id = m."productId" AND p.stock_quantity + m.available >= 0 AND p.reserved + m.reserved >= 0
     RETURNING p.product_id`,
    [JSON.stringify(moves), now],
  );
  // The rules checked this under the same row locks; reaching here means a bug, and
  // failing the transaction keeps the stock consistent.
  if (updated.length !== moves.length) throw new Error(`stock moves on ${moves.map((m) => m.productId).join(', ')} would break conservation`);
}

type ReservationRow = { order_id: string; status: Reservation['status']; items: StockLine[]; reason: string | null };

export async function lockReservation(tx: Sql, orderId: string): Promise<Reservation | undefined> {
  const [row] = await tx.query<ReservationRow>(
    'SELECT order_id, status, items, reason FROM reservations WHERE order_id = $1 FOR UPDATE',
    [orderId],
  );
  if (row === undefined) return undefined;
  const base = { orderId: row.order_id, items: row.items };
  switch (row.status) {
    case 'RESERVED':
    case 'COMMITTED':
      return { ...base, status: row.status };
    case 'REJECTED':
    case 'RELEASED':
      return { ...base, status: row.status, reason: row.reason ?? '' };
  }
}

/** Inserts the reservation; false if one exists already (a concurrent duplicate). */
export async function insertReservation(
  tx: Sql, reservation: Reservation, userId: string | null, now: Date,
): Promise<boolean> {
  const inserted = await tx.query(
    `INSERT INTO reservations (order_id, user_id, status, items, reason, created_at, updated_at)
     VALUES ($1, $2, $3, $4::jsonb, $5, $6, $6) ON CONFLICT DO NOTHING RETURNING 1`,
    [reservation.orderId, userId, reservation.status, JSON.stringify(reservation.items), 'reason' in reservation ? reservation.reason : null, now],
  );
  return inserted.length === 1;
}

export async function setReservationStatus(
  tx: Sql, orderId: string, from: Reservation['status'], to: Reservation['status'], reason: string | null, now: Date,
): Promise<void> {
  const updated = await tx.query(
    'UPDATE reservations SET status = $3, reason = coalesce($4, reason), updated_at = $5 WHERE order_id = $1 AND status = $2 RETURNING 1',
    [orderId, from, to, reason, now],
  );
  if (updated.length !== 1) throw new ConflictError(`reservation ${orderId} is no longer ${from}`);
}

export async function recordItems(tx: Sql, orderId: string, items: readonly StockLine[]): Promise<void> {
  await tx.query('UPDATE reservations SET items = $2::jsonb WHERE order_id = $1', [orderId, JSON.stringify(items)]);
}

/** Whether this service already published an event of `type` about `subject`. */
export async function hasEmitted(tx: Sql, subject: string, type: string): Promise<boolean> {
  const [row] = await tx.query('SELECT 1 FROM outbox WHERE subject = $1 AND type = $2 LIMIT 1', [subject, type]);
  return row !== undefined;
}
