// Who consumes what. Each consuming service binds only the types it handles, so a
// message it would ignore is never delivered to it. A consumer still has to tell an
// event it never needed from one the broker lost: a subject's sequence counts every
// event of its stream, bound or not. So the producer stamps each event, for every
// consumer that binds a strict subset of its source's types, with the sequence of the
// subject's previous event within that subset (`prev<consumer>`, 0 when none). The
// consumer applies an event once it has applied that one; a later `prev` means an
// event it needs is missing (early → held), and a sequence at or below its position is
// stale. A consumer that binds every type of a source (the query service) needs no
// stamp: the previous one is sequence − 1.
//
// The table is the union over both saga modes; a service binds, in its mode, the types
// of the sources it listens to in that mode. A consumer's set for one source is the same
// in both modes, so the stamp does not depend on the mode.
import { catalogue, eventTypes, type EventType } from './events.ts';

const events = (source: string): EventType[] =>
  eventTypes.filter((type) => catalogue[type].source === source && !('target' in catalogue[type]));

export const subscriptions = {
  order: ['InventoryRejected', 'ProductAdded', 'PaymentProcessed', 'PaymentFailed', 'CompleteOrder', 'FailOrder'],
  inventory: [
    'OrderCreated',
    'OrderCancelled',
    'OrderCompleted',
    'PaymentFailed',
    'ReserveInventory',
    'ReleaseInventory',
    'CommitInventory',
  ],
  payment: ['InventoryReserved', 'OrderCancelled', 'ProcessPayment', 'RefundPayment'],
  orchestrator: [
    ...events('order'),
    ...events('inventory').filter((type) => type !== 'ProductAdded' && type !== 'StockAdjusted'),
    ...events('payment'),
  ],
  query: [...events('order'), ...events('inventory'), ...events('payment')],
} as const satisfies Record<string, readonly EventType[]>;

export type ConsumerName = keyof typeof subscriptions;

const isConsumer = (name: string): name is ConsumerName => Object.hasOwn(subscriptions, name);

/**
 * The types a consumer binds when it listens to `sources`. A consumer the table does not
 * name (a test's, an operator's tool) binds every type of its sources.
 */
export function boundTypes(consumer: string, sources: readonly string[]): EventType[] {
  const all = eventTypes.filter((type) => sources.includes(catalogue[type].source));
  if (!isConsumer(consumer)) return all;
  const wanted = new Set<string>(subscriptions[consumer]);
  return all.filter((type) => wanted.has(type));
}

/** The envelope extension that carries a consumer's previous sequence (CloudEvents names: a–z, 0–9). */
export const prevAttribute = (consumer: string): string => `prev${consumer.replace(/[^a-z0-9]/g, '')}`;

export type Family = { key: string; types: EventType[] };

/**
 * Per source, the consumers that bind a strict subset of its types: each of the
 * source's events carries a `prev` stamp for each family that contains its type.
 */
export function familiesOf(source: string): Family[] {
  const all = eventTypes.filter((type) => catalogue[type].source === source);
  const families: Family[] = [];
  for (const [consumer, types] of Object.entries(subscriptions)) {
    const bound = all.filter((type) => (types as readonly string[]).includes(type));
    if (bound.length > 0 && bound.length < all.length) families.push({ key: prevAttribute(consumer), types: bound });
  }
  return families;
}

/**
 * The sequence a consumer must have applied of a subject before this event: the stamp
 * for it when the producer left one, else the one before (the consumer binds every type).
 */
export function previousSequence(consumer: string, envelope: { sequence: number } & Record<string, unknown>): number {
  const stamped = envelope[prevAttribute(consumer)];
  return typeof stamped === 'number' && Number.isInteger(stamped) && stamped >= 0 && stamped < envelope.sequence
    ? stamped
    : envelope.sequence - 1;
}
