// How the query service reacts: every event of the order, inventory and payment
// services goes through each read model's fold, in the consumer's transaction (inbox,
// per-subject order). An event about an order updates its summary, its row in the
// user's list and the status counts; a stock move updates the products it touches.
import type { Handler } from '@converge/platform';
import { countChanges } from './projections/order-counts.ts';
import { emptySummary, evolveSummary, orderOf, summarises } from './projections/order-summary.ts';
import { availabilityDeltas } from './projections/product-availability.ts';
import { evolveUserOrder } from './projections/user-orders.ts';
import { applyAvailability, loadSummary, loadUserOrder, moveCounts, saveSummary, saveUserOrder } from './store.ts';

export const querySources = ['order', 'inventory', 'payment'] as const;

export const handleQueryMessage: Handler = async (tx, message, { now }) => {
  const orderId = orderOf(message);
  if (orderId !== undefined && summarises(message.type)) {
    const before = (await loadSummary(tx, orderId)) ?? emptySummary(orderId, message.time);
    const after = evolveSummary(before, message);
    await saveSummary(tx, after);
    await moveCounts(tx, countChanges(before.status, after.status));
    if (message.source === 'order') {
      const row = evolveUserOrder(await loadUserOrder(tx, orderId), message);
      if (row !== undefined) await saveUserOrder(tx, row);
    }
  }
  const deltas = availabilityDeltas(message);
  if (deltas.length > 0) await applyAvailability(tx, deltas, now);
};
