// Inventory state in its own database. The API's writes (addProduct, restock) are one
// transaction each, the change with its event; every other function takes the caller's
// transaction, so a stock move, the reservation it belongs to and the events it emits
// commit together. A batch locks its reservations (in order-id order), then its products (in
// product-id order), so two batches never wait on each other in a cycle; every update
// is conditional with its row count checked.
import type { ReservationStatus, StockLine } from '@converge/contracts';
import { ConflictError, NotFoundError, appendToOutbox, streamVersion, type Db, type Sql } from '@converge/platform';
import type { Move, Product, Reservation } from './inventory.ts';

type ProductRow = {
  product_id: string;
  name: string;
  price: number;
  currency: string;
  stock_quantity: number;
  reserved: number;
  sold: number;
};

const toProduct = (r: ProductRow): Product => ({
  productId: r.product_id,
  name: r.name,
  price: r.price,
  currency: r.currency,
  stockQuantity: r.stock_quantity,
  reserved: r.reserved,
  sold: r.sold,
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
  const rows = await db.query<ProductRow>(
    `SELECT ${productColumns} FROM products ORDER BY name, product_id LIMIT $1 OFFSET $2`,
    [limit, offset],
  );
  return rows.map(toProduct);
}

/**
 * Adds a product and its ProductAdded in one transaction. An id taken before answers the
 * product it has (a retried request), or 409 when that one has other attributes.
 */
export async function addProduct(db: Db, product: Product, now: Date): Promise<{ product: Product; created: boolean }> {
  const created = await db.transaction(async (tx) => {
    if (!(await insertProduct(tx, product, now))) return false;
    await appendToOutbox(tx, { source: 'inventory', now }, [
      {
        type: 'ProductAdded',
        subject: product.productId,
        data: {
          productId: product.productId,
          name: product.name,
          price: product.price,
          currency: product.currency,
          stockQuantity: product.stockQuantity,
        },
      },
    ]);
    return true;
  });
  if (created) return { product, created };
  const existing = await getProduct(db, product.productId);
  if (existing?.name !== product.name || existing.price !== product.price || existing.currency !== product.currency) {
    throw new ConflictError(`product ${product.productId} exists with other attributes`);
  }
  return { product: existing, created };
}

async function insertProduct(tx: Sql, product: Product, now: Date): Promise<boolean> {
  const inserted = await tx.query(
    `INSERT INTO products (product_id, name, price, currency, stock_quantity, created_at, updated_at)
     VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT DO NOTHING RETURNING 1`,
    [product.productId, product.name, product.price, product.currency, product.stockQuantity, now],
  );
  if (inserted.length === 0) return false;
  await tx.query('INSERT INTO stock_adjustments (product_id, delta, reason, at) VALUES ($1, $2, $3, $4)', [
    product.productId,
    product.stockQuantity,
    'initial stock',
    now,
  ]);
  return true;
}

/**
 * Adds stock and its StockAdjusted in one transaction; under an Idempotency-Key seen
 * before it counts once and answers the product as it stands. `version` is the product's
 * stream as it stands: this restock, or (a retried key) the first one and anything since.
 */
export async function restock(
  db: Db,
  productId: string,
  quantity: number,
  reason: string,
  idempotencyKey: string | undefined,
  now: Date,
): Promise<{ product: Product; version: number }> {
  const adjusted = await db.transaction(async (tx) => {
    const [exists] = await tx.query('SELECT 1 FROM products WHERE product_id = $1 FOR UPDATE', [productId]);
    if (exists === undefined) throw new NotFoundError(`no product ${productId}`);
    const product = await adjustStock(tx, productId, quantity, reason, idempotencyKey, now);
    if (product === undefined) return undefined;
    await appendToOutbox(tx, { source: 'inventory', now }, [
      {
        type: 'StockAdjusted',
        subject: productId,
        data: {
          productId,
          delta: quantity,
          reason,
          stockQuantity: product.stockQuantity,
          reserved: product.reserved,
          sold: product.sold,
        },
      },
    ]);
    return product;
  });
  const version = await streamVersion(db, productId);
  const product = adjusted ?? (await getProduct(db, productId));
  if (product === undefined) throw new NotFoundError(`no product ${productId}`);
  return { product, version };
}

/** Records a restock; returns undefined when this idempotency key was already used. */
async function adjustStock(
  tx: Sql,
  productId: string,
  delta: number,
  reason: string,
  idempotencyKey: string | undefined,
  now: Date,
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

/**
 * Applies stock moves, at most one per product, in one statement. `= ANY($3)` gives the
 * UPDATE an index condition: joined to a set-returning function the planner guesses 100
 * rows for, it would otherwise scan the whole catalogue once the catalogue is larger.
 */
export async function applyMoves(tx: Sql, moves: readonly Move[], now: Date): Promise<void> {
  if (moves.length === 0) return;
  const updated = await tx.query<{ product_id: string }>(
    `UPDATE products p SET stock_quantity = p.stock_quantity + m.available, reserved = p.reserved + m.reserved,
                           sold = p.sold + m.sold, updated_at = $2
       FROM jsonb_to_recordset($1::jsonb) AS m("productId" uuid, available int, reserved int, sold int)
      WHERE p.product_id = m."productId" AND p.product_id = ANY($3::uuid[])
        AND p.stock_quantity + m.available >= 0 AND p.reserved + m.reserved >= 0
     RETURNING p.product_id`,
    [JSON.stringify(moves), now, moves.map((m) => m.productId)],
  );
  // The rules checked this under the same row locks; reaching here means a bug, and
  // failing the transaction keeps the stock consistent.
  if (updated.length !== moves.length)
    throw new Error(`stock moves on ${moves.map((m) => m.productId).join(', ')} would break conservation`);
}

type ReservationRow = {
  order_id: string;
  user_id: string | null;
  status: ReservationStatus;
  items: StockLine[];
  reason: string | null;
  release_answered: boolean;
};

function toReservation(row: ReservationRow): Reservation {
  const base = { orderId: row.order_id, userId: row.user_id, items: row.items };
  switch (row.status) {
    case 'RESERVED':
    case 'COMMITTED':
      return { ...base, status: row.status };
    case 'REJECTED':
      return { ...base, status: row.status, reason: row.reason ?? '', answered: row.release_answered };
    case 'RELEASED':
      return { ...base, status: row.status, reason: row.reason ?? '' };
  }
}

/** The reservations of these orders, locked in order-id order; a missing order has none. */
export async function lockReservations(tx: Sql, orderIds: readonly string[]): Promise<Map<string, Reservation>> {
  const rows = await tx.query<ReservationRow>(
    `SELECT order_id, user_id, status, items, reason, release_answered FROM reservations
      WHERE order_id = ANY($1::uuid[]) ORDER BY order_id FOR UPDATE`,
    [orderIds],
  );
  return new Map(rows.map((r) => [r.order_id, toReservation(r)]));
}

/**
 * Writes a batch's reservations in one statement: each updated only if it still has the
 * status it was read with, each new one inserted only if no other writer got there
 * first; anything else is a conflict and the batch rolls back.
 */
export async function saveReservations(
  tx: Sql,
  changes: readonly { from: ReservationStatus | undefined; to: Reservation }[],
  now: Date,
): Promise<void> {
  if (changes.length === 0) return;
  const rows = changes.map(({ from, to }) => ({
    order_id: to.orderId,
    user_id: to.userId,
    status: to.status,
    items: to.items,
    from: from ?? null,
    reason: 'reason' in to ? to.reason : null,
    release_answered: to.status === 'REJECTED' && to.answered,
  }));
  // `= ANY($3)` gives the UPDATE an index condition of its own, whatever the statistics
  // of a young reservations table say.
  const [written] = await tx.query<{ n: number }>(
    `WITH x AS (
       SELECT * FROM jsonb_to_recordset($1::jsonb)
         AS x(order_id uuid, user_id text, status text, items jsonb, reason text, release_answered boolean, "from" text)
     ), updated AS (
       UPDATE reservations r SET user_id = x.user_id, status = x.status, items = x.items, reason = x.reason,
              release_answered = x.release_answered, updated_at = $2
         FROM x WHERE r.order_id = x.order_id AND r.status = x."from" AND r.order_id = ANY($3::uuid[])
       RETURNING 1
     ), inserted AS (
       INSERT INTO reservations (order_id, user_id, status, items, reason, release_answered, created_at, updated_at)
       SELECT order_id, user_id, status, items, reason, release_answered, $2, $2 FROM x WHERE x."from" IS NULL
       ON CONFLICT DO NOTHING
       RETURNING 1
     )
     SELECT (SELECT count(*) FROM updated)::int + (SELECT count(*) FROM inserted)::int AS n`,
    [JSON.stringify(rows), now, rows.map((r) => r.order_id)],
  );
  if (written?.n !== changes.length)
    throw new ConflictError(`reservations of ${changes.map((c) => c.to.orderId).join(', ')} were written concurrently`);
}
