// How the query service reacts: every event of the order, inventory and payment
// services goes through each read model's fold, in the consumer's transaction (inbox,
// per-subject order). An event about an order updates its summary, its row in the
// user's list and the status counts; a stock move updates the products it touches.
import type { Handler, ReadCache } from '@converge/platform';
import type { LagTracker, ReadModel } from './lag.ts';
import { countChanges } from './projections/order-counts.ts';
import { emptySummary, evolveSummary, orderOf, summarises } from './projections/order-summary.ts';
import { availabilityDeltas } from './projections/product-availability.ts';
import { evolveUserOrder } from './projections/user-orders.ts';
import { applyAvailability, loadSummary, loadUserOrder, moveCounts, saveSummary, saveUserOrder } from './store.ts';

export const querySources = ['order', 'inventory', 'payment'] as const;

export const summaryKey = (orderId: string) => `order:${orderId}`;
export const productKey = (productId: string) => `product:${productId}`;

// A cached row is invalidated at its new version inside the transaction, before the
// commit: a reader in between reads the old row and offers an older version, which the
// cache refuses; were the transaction to roll back, the key would only miss until the
// next write. (Invalidated after the commit instead, a read carrying a consistency
// token could meet the old cached value in between.)
export const queryHandler = (lag: LagTracker, cache: ReadCache): Handler => async (tx, message, { now }) => {
  const changed: ReadModel[] = [];
  const orderId = orderOf(message);
  if (orderId !== undefined && summarises(message.type)) {
    const before = (await loadSummary(tx, orderId)) ?? emptySummary(orderId, message.time);
    const after = evolveSummary(before, message);
    const version = await saveSummary(tx, after);
    await cache.invalidate(summaryKey(orderId), version);
    changed.push('order-summary');
    const counts = countChanges(before.status, after.status);
    await moveCounts(tx, counts);
    if (counts.length > 0) changed.push('order-counts');
    if (message.source === 'order') {
      const row = evolveUserOrder(await loadUserOrder(tx, orderId), message);
      if (row !== undefined) {
        await saveUserOrder(tx, row);
        changed.push('user-orders');
      }
    }
  }
  const deltas = availabilityDeltas(message);
  if (deltas.length > 0) {
    const versions = await applyAvailability(tx, deltas, now);
    for (const { productId, version } of versions) await cache.invalidate(productKey(productId), version);
    changed.push('product-availability');
  }
  // Recorded as the transaction ends; a transaction that then fails is retried and
  // records again, so the figures may count a retried event twice, never miss one.
  lag.record(changed, message.time, new Date());
};
