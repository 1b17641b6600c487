// How the query service reacts: every event of the order, inventory and payment
// services goes through each read model's fold, in the consumer's transaction (inbox,
// per-subject order). An event about an order updates its summary, its row in the
// user's list and the status counts; a stock move updates the products it touches.
// The consumer hands over a batch of due events at once (one per subject, except what
// a closed gap releases, in order): each model loads the rows the batch touches in one
// statement, folds every event onto them in memory and writes them back in one
// statement, so a batch costs a handful of round trips rather than a handful per event.
import type { Handler, Message, ReadCache, Sql } from '@converge/platform';
import type { LagTracker, ReadModel } from './lag.ts';
import { addUpCounts, countChanges, type CountChange } from './projections/order-counts.ts';
import { emptySummary, evolveSummary, orderOf, summarises, type OrderSummary } from './projections/order-summary.ts';
import { addUpDeltas, availabilityDeltas } from './projections/product-availability.ts';
import { evolveUserOrder, type UserOrder } from './projections/user-orders.ts';
import { applyAvailability, loadSummaries, loadUserOrders, moveCounts, saveSummaries, saveUserOrders } from './store.ts';

export const querySources = ['order', 'inventory', 'payment'] as const;

export const summaryKey = (orderId: string) => `order:${orderId}`;
export const productKey = (productId: string) => `product:${productId}`;

/** The events of a batch that are about an order's summary, with the order. */
const aboutOrders = (messages: readonly Message[]) =>
  messages.flatMap((message) => {
    const orderId = orderOf(message);
    return orderId !== undefined && summarises(message.type) ? [{ orderId, message }] : [];
  });

// Cached rows are invalidated at their new versions inside the transaction, before the
// commit: a reader in between reads the old row and offers an older version, which the
// cache refuses; were the transaction to roll back, the keys would only miss until the
// next write. (Invalidated after the commit instead, a read carrying a consistency
// token could meet the old cached value in between.)
/** A batch handler that emits nothing: a projection only folds. */
export type Projector = (tx: Sql, messages: readonly Message[], context: { now: Date }) => Promise<void>;

export const projectBatch = (lag: LagTracker, cache: ReadCache): Projector => async (tx, messages, { now }) => {
  const changed = new Map<Message, ReadModel[]>(messages.map((m) => [m, []]));
  const orders = aboutOrders(messages);
  const orderIds = [...new Set(orders.map((o) => o.orderId))];
  const fromOrderService = [...new Set(orders.filter((o) => o.message.source === 'order').map((o) => o.orderId))];
  const storedSummaries = await loadSummaries(tx, orderIds);
  const storedUserOrders = await loadUserOrders(tx, fromOrderService);

  const summaries = new Map<string, OrderSummary>();
  const userOrders = new Map<string, UserOrder>();
  const counts: CountChange[] = [];
  for (const { orderId, message } of orders) {
    const models = changed.get(message) ?? [];
    const before = summaries.get(orderId) ?? storedSummaries.get(orderId) ?? emptySummary(orderId, message.time);
    const after = evolveSummary(before, message);
    summaries.set(orderId, after);
    models.push('order-summary');
    const moved = countChanges(before.status, after.status);
    counts.push(...moved);
    if (moved.length > 0) models.push('order-counts');
    if (message.source === 'order') {
      const row = evolveUserOrder(userOrders.get(orderId) ?? storedUserOrders.get(orderId), message);
      if (row !== undefined) {
        userOrders.set(orderId, row);
        models.push('user-orders');
      }
    }
  }
  const summaryVersions = await saveSummaries(tx, [...summaries.values()]);
  await moveCounts(tx, addUpCounts(counts));
  await saveUserOrders(tx, [...userOrders.values()]);

  const deltas = messages.flatMap((message) => {
    const found = availabilityDeltas(message);
    if (found.length > 0) changed.get(message)?.push('product-availability');
    return found;
  });
  const productVersions = await applyAvailability(tx, addUpDeltas(deltas), now);

  await cache.invalidate([
    ...summaryVersions.map(({ orderId, version }) => ({ key: summaryKey(orderId), version })),
    ...productVersions.map(({ productId, version }) => ({ key: productKey(productId), version })),
  ]);
  // Recorded as the transaction ends; a transaction that then fails is retried and
  // records again, so the figures may count a retried event twice, never miss one.
  const appliedAt = new Date();
  for (const [message, models] of changed) lag.record(models, message.time, appliedAt);
};

/** One event alone (retries, a drained hold, replays): the batch fold of one. */
export const queryHandler = (project: Projector): Handler => (tx, message, { now }) => project(tx, [message], { now });
