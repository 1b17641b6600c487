// How inventory reacts to other services, a batch at a time: the rules are in
// inventory.ts, this is the shell around them. A batch (at most one message per order,
// in arrival order, one transaction) costs the same statements however many messages it
// holds:
//   load  the reservations of every order it names, then every product those messages
//         and reservations touch, each in one statement, locked in id order;
//   decide message by message in memory, each seeing the stock the previous one left;
//   write the net stock moves in one statement and the changed reservations in one;
//   emit  each message's events, which the consumer appends for the whole batch at once.
// If anything throws (a PermanentError for a completed order without a reservation),
// the batch rolls back and the consumer applies each message alone, so only that one
// is parked.
import type { BatchHandler, SagaMode } from '@converge/platform';
import { changedReservations, decide, evolve, netMoves, requestOf, type InventoryState } from './inventory.ts';
import { applyMoves, lockProducts, lockReservations, saveReservations } from './store.ts';

export const inventorySources = (mode: SagaMode): readonly string[] =>
  mode === 'choreography' ? ['order', 'payment'] : ['orchestrator'];

export function inventoryBatchHandler(mode: SagaMode): BatchHandler {
  return async (tx, messages, { now, emit }) => {
    const requests = messages.flatMap((message) => requestOf(message, mode) ?? []);
    if (requests.length === 0) return;
    const reservations = await lockReservations(tx, [...new Set(requests.map((r) => r.orderId))]);
    const productIds = new Set([
      ...requests.flatMap((r) => (r.kind === 'reserve' ? r.items.map((line) => line.productId) : [])),
      ...[...reservations.values()].flatMap((r) => r.items.map((line) => line.productId)),
    ]);
    const products = productIds.size === 0 ? new Map() : await lockProducts(tx, [...productIds]);
    const loaded: InventoryState = { products, reservations };
    let state = loaded;
    for (const message of messages) {
      const decision = decide(state, message, mode);
      state = evolve(state, decision);
      emit(message, decision.events);
    }
    await applyMoves(tx, netMoves(loaded, state), now);
    await saveReservations(tx, changedReservations(loaded, state), now);
  };
}
