// How the query service reacts: every event of the order, inventory and payment
// services goes through each read model's fold, in the consumer's transaction (inbox,
// per-subject order). An event about an order updates its summary, its row in the
// user's list and the status counts; a stock move updates the products it touches.
import type { Handler } from '@converge/platform';
import type { LagTracker, ReadModel } from './lag.ts';
import { countChanges } from './projections/order-counts.ts';
import { emptySummary, evolveSummary, orderOf, summarises } from './projections/order-summary.ts';
import { availabilityDeltas } from './projections/product-availability.ts';
import { evolveUserOrder } from './projections/user-orders.ts';
import { applyAvailability, loadSummary, loadUserOrder, moveCounts, saveSummary, saveUserOrder } from './store.ts';

export const querySources = ['order', 'inventory', 'payment'] as const;

export const queryHandler = (lag: LagTracker): Handler => async (tx, message, { now }) => {
  const changed: ReadModel[] = [];
  const orderId = orderOf(message);
  if (orderId !== undefined && summarises(message.type)) {
    const before = (await loadSummary(tx, orderId)) ?? emptySummary(orderId, message.time);
    const after = evolveSummary(before, message);
    await saveSummary(tx, after);
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
    await applyAvailability(tx, deltas, now);
    changed.push('product-availability');
  }
  // Recorded as the transaction ends; a transaction that then fails is retried and
  // records again, so the figures may count a retried event twice, never miss one.
  lag.record(changed, message.time, new Date());
};
