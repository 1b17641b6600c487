// How the order service reacts. Choreography (events):
//   InventoryRejected → FAILED      PaymentFailed → FAILED      PaymentProcessed → COMPLETED
// Orchestration (the saga's commands): FailOrder → FAILED      CompleteOrder → COMPLETED
// Both modes:
//   ProductAdded      → its price enters the local catalogue used to price new orders
// A reply or command about an order that is no longer PENDING (cancelled meanwhile)
// decides nothing: its OrderCancelled already told everyone, the saga included.
// A batch is handled as a set: the orders it touches are loaded in one statement,
// each message is decided in turn in memory, the orders and the catalogue are written
// back in one statement each, and the consumer appends every message's events in one.
import { PermanentError, type BatchHandler, type Message, type SagaMode } from '@converge/platform';
import { decide, evolve, type OrderCommand } from './order.ts';
import { loadOrders, saveOrders, upsertCatalogue, type Product } from './store.ts';

export const orderSources = (mode: SagaMode): readonly string[] =>
  mode === 'choreography' ? ['inventory', 'payment'] : ['inventory', 'orchestrator'];

/** What a message asks of this service: a command on an order, a catalogue entry, or nothing. */
type Reaction =
  { kind: 'order'; orderId: string; command: OrderCommand } | { kind: 'product'; product: Product } | { kind: 'none' };

// Ids as the database spells them, so a row is found under the id a message gives.
const onOrder = (orderId: string, command: OrderCommand): Reaction => ({
  kind: 'order',
  orderId: orderId.toLowerCase(),
  command,
});

function reactionTo(mode: SagaMode, message: Message): Reaction {
  const choreography = mode === 'choreography';
  switch (message.type) {
    case 'ProductAdded': {
      const { productId, name, price, currency } = message.data;
      return { kind: 'product', product: { productId, name, price, currency } };
    }
    case 'CompleteOrder':
      return onOrder(message.data.orderId, { type: 'CompleteOrder' });
    case 'FailOrder':
      return onOrder(message.data.orderId, { type: 'FailOrder', reason: message.data.reason });
    case 'InventoryRejected':
      if (!choreography) return { kind: 'none' };
      return onOrder(message.data.orderId, { type: 'FailOrder', reason: message.data.reason });
    case 'PaymentFailed':
      if (!choreography) return { kind: 'none' };
      return onOrder(message.data.orderId, { type: 'FailOrder', reason: `payment failed: ${message.data.reason}` });
    case 'PaymentProcessed':
      if (!choreography) return { kind: 'none' };
      return onOrder(message.data.orderId, { type: 'CompleteOrder' });
    default:
      return { kind: 'none' };
  }
}

export const orderBatchHandler =
  (mode: SagaMode): BatchHandler =>
  async (tx, messages, { now, emit }) => {
    const reactions = messages.map((message) => ({ message, reaction: reactionTo(mode, message) }));
    const loaded = await loadOrders(tx, [
      ...new Set(reactions.flatMap(({ reaction }) => (reaction.kind === 'order' ? [reaction.orderId] : []))),
    ]);
    const current = new Map(loaded);
    const products: Product[] = [];
    for (const { message, reaction } of reactions) {
      if (reaction.kind === 'none') continue;
      if (reaction.kind === 'product') {
        products.push(reaction.product);
        continue;
      }
      const { orderId, command } = reaction;
      const state = current.get(orderId);
      const base = loaded.get(orderId);
      if (state === undefined || base === undefined)
        throw new PermanentError(`${message.type} for unknown order ${orderId}`, 'unknown order');
      const events = decide(command, state);
      if (events.length === 0) continue;
      current.set(orderId, events.reduce(evolve, state));
      // The version it was loaded at: the append numbers a stream's events across the
      // whole batch, and a concurrent writer (a cancel) makes it fail.
      emit(
        message,
        events.map((e) => ({ ...e, subject: orderId })),
        base.version,
      );
    }
    await saveOrders(
      tx,
      [...current].filter(([orderId, order]) => order !== loaded.get(orderId)).map(([, order]) => order),
      now,
    );
    await upsertCatalogue(tx, products);
  };
