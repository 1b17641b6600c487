// Payment rules, pure. A payment's id is derived from its order's id, so however often
// a reservation is delivered, the provider sees one payment id and charges at most once.
import crypto from 'node:crypto';

export type Payment =
  | { status: 'PROCESSED'; paymentId: string; orderId: string; userId: string; amount: number; currency: string }
  | { status: 'FAILED'; paymentId: string; orderId: string; userId: string; amount: number; currency: string; reason: string }
  | { status: 'REFUNDED'; paymentId: string; orderId: string; userId: string; amount: number; currency: string };

const namespace = Buffer.from('6f1c7a52a4f34c0c9d3e0b6a5e8f2d41', 'hex');

/** A name-based (version 5) UUID for the order's payment. */
export function paymentIdFor(orderId: string): string {
  const hash = crypto.createHash('sha1').update(namespace).update(`payment:${orderId}`).digest();
  hash[6] = ((hash[6] ?? 0) & 0x0f) | 0x50;
  hash[8] = ((hash[8] ?? 0) & 0x3f) | 0x80;
  const hex = hash.subarray(0, 16).toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export type ChargeDecision = { kind: 'nothing' } | { kind: 'charge' } | { kind: 'refuse'; reason: string };

/** Stock is reserved for an order: charge it, unless that already happened or it was cancelled. */
export function decideCharge(existing: Payment | undefined, cancelled: boolean): ChargeDecision {
  if (existing !== undefined) return { kind: 'nothing' };
  if (cancelled) return { kind: 'refuse', reason: 'order cancelled before payment' };
  return { kind: 'charge' };
}

export type CancelDecision = { kind: 'refund' } | { kind: 'nothing' };

/** The order was cancelled: give the money back if it was taken. */
export function decideCancel(existing: Payment | undefined): CancelDecision {
  return existing?.status === 'PROCESSED' ? { kind: 'refund' } : { kind: 'nothing' };
}
