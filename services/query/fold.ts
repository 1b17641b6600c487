// Every read model folded in memory from a list of events: what the read models must
// equal once the query service has applied those events (DESIGN.md invariant 6). The
// invariant checker folds the services' feeds with it; the projections' tests fold
// given events with it.
import type { DomainEvent } from '@converge/contracts';
import { emptyAvailability, evolveAvailability, availabilityDeltas, type Availability } from './projections/product-availability.ts';
import { emptySummary, evolveSummary, orderOf, summarises, type OrderSummary } from './projections/order-summary.ts';
import { evolveUserOrder, type UserOrder } from './projections/user-orders.ts';

export type SourceEvent = DomainEvent & { source: string; time: string };

export type ReadModels = {
  summaries: Map<string, OrderSummary>;
  userOrders: Map<string, UserOrder>;
  availability: Map<string, Availability>;
  counts: Record<string, number>;
};

export function foldReadModels(events: readonly SourceEvent[]): ReadModels {
  const summaries = new Map<string, OrderSummary>();
  const userOrders = new Map<string, UserOrder>();
  const availability = new Map<string, Availability>();
  for (const event of events) {
    const orderId = orderOf(event);
    if (orderId !== undefined && summarises(event.type)) {
      summaries.set(orderId, evolveSummary(summaries.get(orderId) ?? emptySummary(orderId, event.time), event));
      if (event.source === 'order') {
        const row = evolveUserOrder(userOrders.get(orderId), event);
        if (row !== undefined) userOrders.set(orderId, row);
      }
    }
    for (const delta of availabilityDeltas(event)) {
      availability.set(delta.productId, evolveAvailability(availability.get(delta.productId) ?? emptyAvailability(delta.productId), delta));
    }
  }
  const counts: Record<string, number> = {};
  for (const summary of summaries.values()) if (summary.status !== null) counts[summary.status] = (counts[summary.status] ?? 0) + 1;
  return { summaries, userOrders, availability, counts };
}
