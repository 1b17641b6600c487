// Product availability: per product, stock available, reserved and sold, folded from
// inventory's events. Product events (subject: the product) and reservation events
// (subject: an order) are ordered per subject only, so the fold uses deltas alone —
// additions commute, and the document is the same in any interleaving. (StockAdjusted
// carries the new totals too, but a snapshot applied after a later delta would undo it.)
// A batch loads nothing: it sums its deltas per product and adds them to the stored rows.
// Cached by product (`product:<id>`), each row with a version raised by every write.
import type { DomainEvent, StockLine } from '@converge/contracts';
import type { Sql } from '@converge/platform';
import { readModel, type SaveTo } from '../read-model.ts';

export type Availability = {
  productId: string;
  /** Known once ProductAdded has been applied. */
  name: string | null;
  price: number | null;
  currency: string | null;
  stockQuantity: number;
  reserved: number;
  sold: number;
};

/** A change to one product's figures. */
export type AvailabilityDelta = {
  productId: string;
  name?: string;
  price?: number;
  currency?: string;
  stockQuantity: number;
  reserved: number;
  sold: number;
};

const lines = (
  items: readonly StockLine[],
  sign: { stockQuantity: number; reserved: number; sold: number },
): AvailabilityDelta[] =>
  items.map(({ productId, quantity }) => ({
    productId,
    stockQuantity: sign.stockQuantity * quantity,
    reserved: sign.reserved * quantity,
    sold: sign.sold * quantity,
  }));

/** What an event changes, product by product; nothing for events this model ignores. */
export function availabilityDeltas(event: DomainEvent): AvailabilityDelta[] {
  switch (event.type) {
    case 'ProductAdded': {
      const { productId, name, price, currency, stockQuantity } = event.data;
      return [{ productId, name, price, currency, stockQuantity, reserved: 0, sold: 0 }];
    }
    case 'StockAdjusted':
      return [{ productId: event.data.productId, stockQuantity: event.data.delta, reserved: 0, sold: 0 }];
    case 'InventoryReserved':
      return lines(event.data.items, { stockQuantity: -1, reserved: 1, sold: 0 });
    case 'InventoryReleased':
      return lines(event.data.items, { stockQuantity: 1, reserved: -1, sold: 0 });
    case 'InventoryCommitted':
      return lines(event.data.items, { stockQuantity: 0, reserved: -1, sold: 1 });
    default:
      return [];
  }
}

export const emptyAvailability = (productId: string): Availability => ({
  productId,
  name: null,
  price: null,
  currency: null,
  stockQuantity: 0,
  reserved: 0,
  sold: 0,
});

export function evolveAvailability(doc: Availability, delta: AvailabilityDelta): Availability {
  return {
    productId: doc.productId,
    name: delta.name ?? doc.name,
    price: delta.price ?? doc.price,
    currency: delta.currency ?? doc.currency,
    stockQuantity: doc.stockQuantity + delta.stockQuantity,
    reserved: doc.reserved + delta.reserved,
    sold: doc.sold + delta.sold,
  };
}

/** Many deltas as one per product (additions commute; a later name or price wins). */
export function addUpDeltas(deltas: readonly AvailabilityDelta[]): AvailabilityDelta[] {
  const byProduct = new Map<string, AvailabilityDelta>();
  for (const d of deltas) {
    const sum = byProduct.get(d.productId);
    byProduct.set(
      d.productId,
      sum === undefined
        ? { ...d }
        : {
            productId: d.productId,
            ...((d.name ?? sum.name) === undefined ? {} : { name: d.name ?? sum.name }),
            ...((d.price ?? sum.price) === undefined ? {} : { price: d.price ?? sum.price }),
            ...((d.currency ?? sum.currency) === undefined ? {} : { currency: d.currency ?? sum.currency }),
            stockQuantity: sum.stockQuantity + d.stockQuantity,
            reserved: sum.reserved + d.reserved,
            sold: sum.sold + d.sold,
          },
    );
  }
  return [...byProduct.values()];
}

export const productKey = (productId: string) => `product:${productId}`;

/** Adds the deltas to their products (at most one per product), in product order. */
async function addAvailability(
  tx: Sql,
  deltas: readonly AvailabilityDelta[],
  { table, now }: SaveTo,
): Promise<{ id: string; version: number }[]> {
  if (deltas.length === 0) return [];
  const rows = await tx.query<{ product_id: string; version: number }>(
    `INSERT INTO ${table} (product_id, name, price, currency, stock_quantity, reserved, sold, updated_at, version)
     SELECT x.product_id, x.name, x.price, x.currency, x.stock_quantity, x.reserved, x.sold, $2, 1
       FROM jsonb_to_recordset($1::jsonb)
         AS x(product_id uuid, name text, price bigint, currency text, stock_quantity int, reserved int, sold int)
      ORDER BY x.product_id
     ON CONFLICT (product_id) DO UPDATE SET
       name = coalesce(excluded.name, ${table}.name), price = coalesce(excluded.price, ${table}.price),
       currency = coalesce(excluded.currency, ${table}.currency),
       stock_quantity = ${table}.stock_quantity + excluded.stock_quantity,
       reserved = ${table}.reserved + excluded.reserved,
       sold = ${table}.sold + excluded.sold, updated_at = excluded.updated_at, version = ${table}.version + 1
     RETURNING product_id, version`,
    [
      JSON.stringify(
        deltas.map((d) => ({
          product_id: d.productId,
          name: d.name ?? null,
          price: d.price ?? null,
          currency: d.currency ?? null,
          stock_quantity: d.stockQuantity,
          reserved: d.reserved,
          sold: d.sold,
        })),
      ),
      now,
    ],
  );
  return rows.map((r) => ({ id: r.product_id, version: r.version }));
}

// A document here is the sum of a batch's deltas to a product; folded from nothing, it
// is the product's figures (availabilityOf).
export const productAvailability = readModel({
  name: 'product-availability',
  table: 'product_availability',
  cached: { column: 'product_id', key: productKey },
  keysOf: (event) => [...new Set(availabilityDeltas(event).map((d) => d.productId))],
  evolve: (sum: AvailabilityDelta | undefined, event, productId) =>
    addUpDeltas([
      ...(sum === undefined ? [] : [sum]),
      ...availabilityDeltas(event).filter((d) => d.productId === productId),
    ])[0],
  save: addAvailability,
});

/** A product's figures from the sum of all its deltas. */
export const availabilityOf = (sum: AvailabilityDelta): Availability =>
  evolveAvailability(emptyAvailability(sum.productId), sum);

type AvailabilityRow = {
  product_id: string;
  name: string | null;
  price: number | null;
  currency: string | null;
  stock_quantity: number;
  reserved: number;
  sold: number;
  version: number;
};
const toAvailability = (r: AvailabilityRow): Availability => ({
  productId: r.product_id,
  name: r.name,
  price: r.price,
  currency: r.currency,
  stockQuantity: r.stock_quantity,
  reserved: r.reserved,
  sold: r.sold,
});

/** Every stored row, as documents (the invariant checker compares them with the fold). */
export async function allAvailability(db: Sql): Promise<Map<string, Availability>> {
  const rows = await db.query<AvailabilityRow>('SELECT * FROM product_availability');
  return new Map(rows.map((r) => [r.product_id, toAvailability(r)]));
}

export async function getAvailability(
  db: Sql,
  productId: string,
): Promise<{ version: number; value: Availability } | undefined> {
  const [row] = await db.query<AvailabilityRow>('SELECT * FROM product_availability WHERE product_id = $1', [
    productId,
  ]);
  return row === undefined ? undefined : { version: row.version, value: toAvailability(row) };
}

export async function listAvailability(db: Sql, limit: number, after?: string): Promise<Availability[]> {
  const rows = await db.query<AvailabilityRow>(
    'SELECT * FROM product_availability WHERE ($1::uuid IS NULL OR product_id > $1) ORDER BY product_id LIMIT $2',
    [after ?? null, limit],
  );
  return rows.map(toAvailability);
}
