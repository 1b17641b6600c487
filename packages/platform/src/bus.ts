// The bus: one interface, two implementations (RabbitMQ in production, a local durable
// bus for embedded mode and tests). Both give at-least-once delivery with manual ack:
// a message is removed only when the consumer acks it after its transaction committed,
// and a message not acked (crash, nack, lost connection) is delivered again, up to a
// delivery limit: a message handed out more often than that (it crashes its consumer
// every time) is parked in the queue's parking queue instead of looping forever. A
// publish of a type no queue is bound to is refused (UnroutableError), never dropped.
import type { Envelope } from '@converge/contracts';

export type Delivery = {
  /** The parsed JSON body, or the raw text when it is not JSON (a poison message). */
  readonly body: unknown;
  /** A batch (CloudEvents batched mode): the body is an array of envelopes; see eventsOf. */
  readonly batch: boolean;
  /** The broker's message id property, when there is one (for dead-letter evidence). */
  readonly messageId: string | undefined;
  readonly routingKey: string;
  /** true when the broker says this message was handed out before. */
  readonly redelivered: boolean;
  ack(): Promise<void>;
  /** Gives the message back to the queue for redelivery after `delayMs`. */
  nack(delayMs?: number): Promise<void>;
};

/** Redeliveries a message may have before it is parked (RabbitMQ 4 quorum queues default to 20 too). */
export const defaultDeliveryLimit = 20;

/** Where a queue's messages go once they exceed the delivery limit; `depth` reads it like any queue. */
export const parkedQueueOf = (queue: string): string => `${queue}.parked`;

/** The CloudEvents content types: one event (structured mode) and a JSON array of events (batched mode). */
export const eventContentType = 'application/cloudevents+json';
export const batchContentType = 'application/cloudevents-batch+json';

/**
 * How a publish becomes broker messages: one per event type (the routing key), in the
 * order the types first appear, each carrying its events in publish order. A subject's
 * events of one type keep their order; across types a consumer's sequence check puts
 * them back in order.
 */
export function batchesOf(messages: readonly Envelope[]): { type: string; envelopes: Envelope[] }[] {
  const byType = new Map<string, Envelope[]>();
  for (const message of messages) {
    const group = byType.get(message.type);
    if (group === undefined) byType.set(message.type, [message]);
    else group.push(message);
  }
  return [...byType].map(([type, envelopes]) => ({ type, envelopes }));
}

/** The body of one broker message: a lone event as itself, several as a batch. */
export function encodeBatch(envelopes: readonly Envelope[]): { body: string; batch: boolean } {
  return envelopes.length === 1
    ? { body: JSON.stringify(envelopes[0]), batch: false }
    : { body: JSON.stringify(envelopes), batch: true };
}

/**
 * The events a delivery carries: the elements of a batch, or its body. A batch that is not an array is one poison
 * event.
 */
export function eventsOf(delivery: Pick<Delivery, 'body' | 'batch'>): unknown[] {
  return delivery.batch && Array.isArray(delivery.body) ? (delivery.body as unknown[]) : [delivery.body];
}

export type Subscription = {
  readonly queue: string;
  /** Stops receiving; deliveries not acked yet go back to the queue. */
  close(): Promise<void>;
};

export type SubscribeOptions = {
  /** How many unacked deliveries this subscriber may hold at once. */
  prefetch?: number;
};

export interface Bus {
  readonly kind: 'local' | 'rabbitmq';
  /**
   * Publishes in the given order (as batches: see batchesOf) and resolves only when the broker has taken
   * responsibility for every message (publisher confirms). Rejects if any message
   * was not confirmed; the caller then publishes them again (duplicates are harmless).
   * Rejects with UnroutableError, once every other message is confirmed, when some types
   * reached no queue: those were not taken, the others were.
   */
  publish(messages: readonly Envelope[]): Promise<void>;
  /**
   * Declares the consuming service's durable queue, binds it to the given event types
   * and starts delivering. The queue outlives the subscriber: messages published
   * while nobody listens wait for it.
   */
  subscribe(
    queue: string,
    types: readonly string[],
    onDelivery: (delivery: Delivery) => Promise<void>,
    options?: SubscribeOptions,
  ): Promise<Subscription>;
  /** Declares the queue and its bindings without consuming (so nothing is missed before start). */
  declare(queue: string, types: readonly string[]): Promise<void>;
  /** Messages waiting in a queue, ready or unacked (for "is the system quiet" checks). */
  depth(queue: string): Promise<number>;
  /**
   * Drops every ready message of a queue and returns how many: what a broker that lost
   * a queue does to its consumer (operations and fault tests). Optional for wrappers.
   */
  purge?(queue: string): Promise<number>;
  close(): Promise<void>;
}
