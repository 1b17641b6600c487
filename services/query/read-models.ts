// The registry: every read model of the query service, in the order a batch loads,
// folds and saves them (a view after the model it folds). The consumer, the rebuild,
// the lag figures and the invariant checker's fold all go through this list; a new
// read model is a module in projections/ and a line here (and its table's migration).
import { orderCounts } from './projections/order-counts.ts';
import { orderSummary, type OrderSummary } from './projections/order-summary.ts';
import { availabilityOf, productAvailability, type Availability } from './projections/product-availability.ts';
import { userOrders, type UserOrder } from './projections/user-orders.ts';
import { foldEvents, type ReadModel, type SourceEvent } from './read-model.ts';

const models = [orderSummary, userOrders, productAvailability, orderCounts] as const;
export type ReadModelName = (typeof models)[number]['name'];
/** As the loops over it see it: each model's documents are its own business. */
export const readModels: readonly ReadModel<ReadModelName>[] = models;

export type ReadModels = {
  summaries: Map<string, OrderSummary>;
  userOrders: Map<string, UserOrder>;
  availability: Map<string, Availability>;
  counts: Record<string, number>;
};

/**
 * Every read model folded in memory from a list of events: what the read models must
 * equal once the query service has applied those events (DESIGN.md invariant 6). The
 * invariant checker folds the services' feeds with it; the projections' tests fold
 * given events with it.
 */
export function foldReadModels(events: readonly SourceEvent[]): ReadModels {
  const run = foldEvents(readModels, events);
  return {
    summaries: new Map(orderSummary.documents(run)),
    userOrders: new Map(userOrders.documents(run)),
    availability: new Map([...productAvailability.documents(run)].map(([id, sum]) => [id, availabilityOf(sum)])),
    counts: Object.fromEntries(
      [...orderCounts.documents(run).values()].filter((c) => c.by !== 0).map((c) => [c.status, c.by]),
    ),
  };
}
