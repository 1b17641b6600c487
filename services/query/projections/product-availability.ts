// Product availability: per product, stock available, reserved and sold, folded from
// inventory's events. Product events (subject: the product) and reservation events
// (subject: an order) are ordered per subject only, so the fold uses deltas alone —
// additions commute, and the document is the same in any interleaving. (StockAdjusted
// carries the new totals too, but a snapshot applied after a later delta would undo it.)
import type { DomainEvent, StockLine } from '@converge/contracts';

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
export type AvailabilityDelta = { productId: string; name?: string; price?: number; currency?: string; stockQuantity: number; reserved: number; sold: number };

const lines = (items: readonly StockLine[], sign: { stockQuantity: number; reserved: number; sold: number }): AvailabilityDelta[] =>
  items.map(({ productId, quantity }) => ({
    productId, stockQuantity: sign.stockQuantity * quantity, reserved: sign.reserved * quantity, sold: sign.sold * quantity,
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

export const emptyAvailability = (productId: string): Availability => ({ productId, name: null, price: null, currency: null, stockQuantity: 0, reserved: 0, sold: 0 });

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
    byProduct.set(d.productId, sum === undefined ? { ...d } : {
      productId: d.productId,
      ...((d.name ?? sum.name) === undefined ? {} : { name: d.name ?? sum.name }),
      ...((d.price ?? sum.price) === undefined ? {} : { price: d.price ?? sum.price }),
      ...((d.currency ?? sum.currency) === undefined ? {} : { currency: d.currency ?? sum.currency }),
      stockQuantity: sum.stockQuantity + d.stockQuantity,
      reserved: sum.reserved + d.reserved,
      sold: sum.sold + d.sold,
    });
  }
  return [...byProduct.values()];
}
