// The system view: how many orders are in each status. It moves with the order
// summaries' status changes, in the same transaction, so it always equals a count over
// them; a status is counted once the order itself (OrderCreated) has been seen.
import type { OrderStatus } from './order-summary.ts';

export type CountChange = { status: OrderStatus; by: 1 | -1 };

/** How the counts move when an order's status goes from `before` to `after`. */
export function countChanges(before: OrderStatus | null, after: OrderStatus | null): CountChange[] {
  if (before === after) return [];
  return [...(before === null ? [] : [{ status: before, by: -1 as const }]), ...(after === null ? [] : [{ status: after, by: 1 as const }])];
}

/** A status's count moving by any amount: the changes of many orders added up. */
export type CountMove = { status: OrderStatus; by: number };

export function addUpCounts(changes: readonly CountChange[]): CountMove[] {
  const by = new Map<OrderStatus, number>();
  for (const change of changes) by.set(change.status, (by.get(change.status) ?? 0) + change.by);
  return [...by].filter(([, n]) => n !== 0).map(([status, n]) => ({ status, by: n }));
}
