// Inventory rules, pure: given the products an order touches and its lines, reserve
// every line or none; a reservation moves RESERVED → RELEASED (compensation) or
// COMMITTED (sold). No I/O, no clock: the shell loads state and persists the result.
import type { StockLine } from '@converge/contracts';

export type Product = {
  productId: string;
  name: string;
  price: number;
  currency: string;
  stockQuantity: number;
  reserved: number;
  sold: number;
};

export type Reservation =
  | { status: 'RESERVED'; orderId: string; items: StockLine[] }
  | { status: 'REJECTED'; orderId: string; items: StockLine[]; reason: string }
  | { status: 'RELEASED'; orderId: string; items: StockLine[]; reason: string }
  | { status: 'COMMITTED'; orderId: string; items: StockLine[] };

export type Shortage = { productId: string; requested: number; available: number };

export type ReserveDecision = { ok: true; lines: StockLine[] } | { ok: false; reason: string; shortages: Shortage[] };

/** Sums lines per product and sorts them, so locks are always taken in the same order. */
export function combineLines(lines: readonly StockLine[]): StockLine[] {
  const totals = new Map<string, number>();
  for (const line of lines) totals.set(line.productId, (totals.get(line.productId) ?? 0) + line.quantity);
  return [...totals].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([productId, quantity]) => ({ productId, quantity }));
}

export function decideReservation(products: ReadonlyMap<string, Product>, lines: readonly StockLine[]): ReserveDecision {
  const combined = combineLines(lines);
  const shortages: Shortage[] = [];
  for (const line of combined) {
    const available = products.get(line.productId)?.stockQuantity ?? 0;
    if (available < line.quantity) shortages.push({ productId: line.productId, requested: line.quantity, available });
  }
  if (shortages.length === 0) return { ok: true, lines: combined };
  const unknown = shortages.filter((s) => !products.has(s.productId));
  const reason =
    unknown.length > 0
      ? `unknown product ${unknown.map((s) => s.productId).join(', ')}`
      : `insufficient stock for ${shortages.map((s) => `${s.productId} (requested ${s.requested}, available ${s.available})`).join(', ')}`;
  return { ok: false, reason, shortages };
}

/** Stock moves of a reservation's lifecycle, as deltas on (available, reserved, sold). */
export type Move = { productId: string; available: number; reserved: number; sold: number };

export const reserveMoves = (lines: readonly StockLine[]): Move[] =>
  lines.map((l) => ({ productId: l.productId, available: -l.quantity, reserved: l.quantity, sold: 0 }));
export const releaseMoves = (lines: readonly StockLine[]): Move[] =>
  lines.map((l) => ({ productId: l.productId, available: l.quantity, reserved: -l.quantity, sold: 0 }));
export const commitMoves = (lines: readonly StockLine[]): Move[] =>
  lines.map((l) => ({ productId: l.productId, available: 0, reserved: -l.quantity, sold: l.quantity }));

/** What a release request (payment failed, order cancelled) does to a reservation. */
export type ReleaseDecision =
  | { kind: 'release'; lines: StockLine[] }
  | { kind: 'tombstone' }
  | { kind: 'nothing' };

export function decideRelease(reservation: Reservation | undefined): ReleaseDecision {
  if (reservation === undefined) return { kind: 'tombstone' };
  switch (reservation.status) {
    case 'RESERVED':
      return { kind: 'release', lines: reservation.items };
    case 'REJECTED':
    case 'RELEASED':
      return { kind: 'nothing' };
    case 'COMMITTED':
      // Stock already sold: only a return flow could give it back; never silently.
      return { kind: 'nothing' };
    default:
      return assertNever(reservation);
  }
}

export function assertNever(value: never): never {
  throw new Error(`unexpected ${JSON.stringify(value)}`);
}
