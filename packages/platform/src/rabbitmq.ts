// The Bus on RabbitMQ. Every event goes to one durable topic exchange with its type as
// routing key, as a CloudEvent in structured mode, or, when a publish holds several of
// one type, as one message in batched mode (the CloudEvents AMQP binding's
// application/cloudevents-batch+json): one confirm and one ack per batch, which is
// most of what a message costs the broker. Each consuming service owns a durable
// quorum queue bound to the types it wants. Publishing resolves on publisher confirms and
// consumers ack by hand, so a message leaves its queue only after its effect committed.
//
// Nothing is dropped at the broker without a word. Every publish is mandatory: a type
// bound to no queue comes back (basic.return, just before its confirm) and the publish
// rejects with UnroutableError instead of resolving on a confirm for a message nobody
// will ever get. And each consumer queue has a delivery limit: a message handed out
// that many times more without an ack (it crashes its consumer, again and again) is
// dead-lettered, at least once, through the exchange `<exchange>.dlx` to the queue's
// parking queue `<queue>.parked`, where it waits for an operator instead of looping.
// A queue declared before with other arguments (by an older version) makes the
// declaration fail, saying so: the broker cannot change a queue's arguments, and
// deleting it would lose its messages, so that is an operator's call (README).
//
// The broker goes away now and then (restart, network). amqplib's recovery reconnects
// with capped exponential backoff, but channels die with their connection, so after each
// connect we declare the topology again and reopen every subscription. Without a
// connection, publish, declare and depth fail at once with UnavailableError instead of
// waiting: the caller retries, and a caller that waits forever cannot tell a slow broker
// from a dead one. Deliveries held when a channel dies go back to the queue at the
// broker, so acking them afterwards does nothing, quietly.
import { once, setMaxListeners } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  connect,
  type Channel,
  type ChannelModel,
  type ConfirmChannel,
  type ConsumeMessage,
  type Message,
} from 'amqplib';
import { eventTypes, type Envelope } from '@converge/contracts';
import {
  batchContentType,
  batchesOf,
  defaultDeliveryLimit,
  encodeBatch,
  eventContentType,
  parkedQueueOf,
  type Bus,
  type Delivery,
} from './bus.ts';
import { countDelivery, countPublish } from './cost.ts';
import { UnavailableError, UnroutableError } from './errors.ts';

type Log = (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;

export type RabbitBusOptions = {
  url: string;
  exchange?: string;
  queuePrefix?: string;
  /** How long createRabbitBus keeps trying to reach the broker before it gives up. */
  connectTimeoutMs?: number;
  /** Deliveries beyond the first a message may have before it is parked (default 20). */
  deliveryLimit?: number;
  log?: Log;
};

/** One opening of a subscription's channel; a reconnect starts a new one. */
type Generation = { channel: Channel; held: Set<ConsumeMessage>; dead: AbortController };

type Consumer = {
  readonly name: string;
  readonly types: readonly string[];
  readonly onDelivery: (delivery: Delivery) => Promise<void>;
  readonly prefetch: number;
  live?: Generation;
  starting?: Promise<void>;
  retry?: NodeJS.Timeout;
  stopped: boolean;
};

type QueueOptions = { durable: boolean; arguments: Record<string, unknown> };
const quorum: QueueOptions = { durable: true, arguments: { 'x-queue-type': 'quorum' } };
const ignore = (): void => undefined;
const defaultLog: Log = (level, msg, fields) => {
  if (level !== 'info') console.error(`rabbitmq ${level}: ${msg}`, fields ?? {});
};

const forcedDisconnects = new WeakMap<Bus, () => void>();

/** The exchange a bus's consumer queues dead-letter to (their parking queues are bound to it). */
export const deadLetterExchangeOf = (exchange: string): string => `${exchange}.dlx`;

/** Test hook: drops the bus's TCP connection the way a network failure would. */
export function forceDisconnect(bus: Bus): void {
  forcedDisconnects.get(bus)?.();
}

export async function createRabbitBus(options: RabbitBusOptions): Promise<Bus> {
  const exchange = options.exchange ?? 'converge.events';
  const prefix = options.queuePrefix ?? 'converge.';
  const log = options.log ?? defaultLog;
  const deliveryLimit = options.deliveryLimit ?? defaultDeliveryLimit;
  if (!Number.isInteger(deliveryLimit) || deliveryLimit < 1)
    throw new Error(`deliveryLimit must be a positive integer, not ${deliveryLimit}`);
  const deadLetters = deadLetterExchangeOf(exchange);
  const host = new URL(options.url).host; // never the URL itself: it holds the password
  const topology = new Map<string, Set<string>>();
  const consumers = new Set<Consumer>();
  let model: ChannelModel | undefined;
  let blocked = false;
  let confirmChannel: Promise<ConfirmChannel> | undefined;
  let closing: Promise<void> | undefined;
  let lastError: Error | undefined;
  // Tag of each publish waiting for its confirm → whether the broker returned it.
  const returned = new Map<string, boolean>();
  let tags = 0;

  // The queue keeps a dead-lettered message until its parking queue confirmed it
  // (at-least-once, which needs reject-publish; no length limit is set, so nothing is
  // refused for length). Dead letters are routed by the queue's name.
  const queueOptions = (name: string): QueueOptions => ({
    durable: true,
    arguments: {
      'x-queue-type': 'quorum',
      'x-delivery-limit': deliveryLimit,
      'x-dead-letter-exchange': deadLetters,
      'x-dead-letter-routing-key': name,
      'x-dead-letter-strategy': 'at-least-once',
      'x-overflow': 'reject-publish',
    },
  });

  // The broker cannot change the arguments of a queue that exists: say which queue and
  // what to do, rather than the bare 406.
  const assertQueue = async (channel: Channel, name: string, queue: QueueOptions): Promise<void> => {
    try {
      await channel.assertQueue(name, queue);
    } catch (error) {
      if (!isPreconditionFailed(error)) throw error;
      throw new Error(
        `queue ${name} exists with other arguments than ${JSON.stringify(queue.arguments)}, ` +
          'probably declared by a version without delivery limits and parking queues. ' +
          'With its producers stopped, let it drain, delete it and start again (README, "The broker"). ' +
          `RabbitMQ: ${asError(error).message}`,
        { cause: error },
      );
    }
  };

  // A queue is bound to exactly the types asked for: a catalogue type it no longer
  // handles (a deployment that narrowed its bindings) is unbound, so it stops arriving.
  const declareOn = async (channel: Channel, name: string, types: ReadonlySet<string>): Promise<void> => {
    await channel.assertExchange(exchange, 'topic', { durable: true });
    await channel.assertExchange(deadLetters, 'direct', { durable: true });
    await assertQueue(channel, parkedQueueOf(name), quorum);
    await channel.bindQueue(parkedQueueOf(name), deadLetters, name);
    await assertQueue(channel, name, queueOptions(name));
    for (const type of types) await channel.bindQueue(name, exchange, type);
    for (const type of eventTypes) if (!types.has(type)) await channel.unbindQueue(name, exchange, type);
  };

  const recovering = await connect(options.url, {
    // Without it Nagle's algorithm holds a publish's later frames (and acks) back until
    // the broker ACKs the first one, which its delayed ACK puts off by up to 40 ms:
    // every publisher confirm would wait that long.
    noDelay: true,
    recovery: {
      initialDelay: 100,
      maxDelay: 5_000,
      waitForConnect: false,
      // Runs before the connection is handed out; if it fails, recovery drops the
      // connection and tries again, so nobody publishes into a half-declared topology.
      setup: async (fresh: ChannelModel) => {
        fresh.on('error', ignore); // it surfaces again as 'connect-failed' or 'disconnect'
        const channel = await fresh.createChannel();
        channel.on('error', ignore); // the failing call rejects with the same error
        await channel.assertExchange(exchange, 'topic', { durable: true });
        for (const [name, types] of topology) await declareOn(channel, name, types);
        await channel.close();
      },
    },
  });
  recovering.on('error', ignore);
  recovering.on('connect', (fresh: ChannelModel) => {
    model = fresh;
    blocked = false;
    log('info', 'connected to RabbitMQ', { host });
    for (const consumer of consumers) void start(consumer).catch(ignore);
  });
  recovering.on('disconnect', (error: Error) => {
    model = undefined;
    confirmChannel = undefined;
    log('warn', 'lost the RabbitMQ connection; reconnecting', { host, error: error.message });
  });
  recovering.on('connect-failed', (error: Error) => {
    lastError = error;
    log('warn', 'cannot reach RabbitMQ; retrying', { host, error: error.message });
  });
  // A blocked connection (broker memory or disk alarm) takes publishes but confirms none
  // until the alarm clears; failing fast lets the caller back off. Consumers go on.
  recovering.on('blocked', (reason: string) => {
    blocked = true;
    log('warn', 'RabbitMQ blocked the connection', { host, reason });
  });
  recovering.on('unblocked', () => {
    blocked = false;
  });

  const connected = (): ChannelModel => {
    if (closing !== undefined) throw new UnavailableError('the bus is closed');
    if (model === undefined) throw new UnavailableError(`RabbitMQ at ${host} is unavailable`);
    return model;
  };

  const withChannel = async <T>(work: (channel: Channel) => Promise<T>): Promise<T> => {
    const channel = await connected().createChannel();
    channel.on('error', ignore); // the failing call rejects with the same error
    try {
      return await work(channel);
    } finally {
      void channel.close().catch(ignore);
    }
  };

  const publisherChannel = (): Promise<ConfirmChannel> => {
    const current = connected();
    if (blocked) throw new UnavailableError(`RabbitMQ at ${host} blocks publishing (resource alarm)`);
    if (confirmChannel !== undefined) return confirmChannel;
    const opening = current.createConfirmChannel();
    const forget = (): void => {
      if (confirmChannel === opening) confirmChannel = undefined;
    };
    void opening.then((channel) => {
      setMaxListeners(0, channel); // every publisher waiting for 'drain' listens
      channel.on('error', (error: Error) => log('error', 'publisher channel failed', { error: error.message }));
      channel.on('close', forget);
      channel.on('return', (message: Message) => {
        const tag: unknown = message.properties.correlationId;
        if (typeof tag === 'string' && returned.has(tag)) returned.set(tag, true);
      });
    }, forget);
    return (confirmChannel = opening);
  };

  // Each message waits for its own confirm rather than waitForConfirms(), which would
  // also wait for, and fail with, whatever concurrent callers put on the shared channel.
  // A returned message is confirmed too, after its return: its confirm rejects.
  const publish = async (messages: readonly Envelope[]): Promise<void> => {
    if (messages.length === 0) return;
    const channel = await publisherChannel();
    const confirms: Promise<void>[] = [];
    for (const { type, envelopes } of batchesOf(messages)) {
      let settle: (error: unknown) => void = ignore;
      const confirmed = new Promise<void>((resolve, reject) => {
        settle = (error) => (error === null || error === undefined ? resolve() : reject(asError(error)));
      });
      void confirmed.catch(ignore); // awaited below; this covers leaving the loop early
      confirms.push(confirmed);
      const encoded = encodeBatch(envelopes);
      const body = Buffer.from(encoded.body);
      const timestamp = Math.floor(Date.now() / 1000);
      const tag = (tags++).toString(36);
      const properties = {
        contentType: encoded.batch ? batchContentType : eventContentType,
        persistent: true,
        mandatory: true,
        type,
        timestamp,
        // Names the publish a returned message came from: a batch has no message id of its
        // own, and an event id may be in flight twice. A header would do as well, but
        // costs a table to encode per message (a third more client CPU per publish).
        correlationId: tag,
        ...(encoded.batch ? {} : { messageId: envelopes[0]?.id }),
      };
      const confirm = (error: unknown): void => {
        const wasReturned = returned.get(tag) === true;
        returned.delete(tag);
        settle(error ?? (wasReturned ? new UnroutableError([type]) : undefined));
      };
      countPublish(envelopes.length, body.length);
      returned.set(tag, false);
      let flowing: boolean;
      try {
        flowing = channel.publish(exchange, type, body, properties, confirm);
      } catch (error) {
        returned.delete(tag);
        throw error;
      }
      if (!flowing) await drained(channel);
    }
    const unroutable: string[] = [];
    for (const outcome of await Promise.allSettled(confirms)) {
      if (outcome.status === 'fulfilled') continue;
      const error: unknown = outcome.reason;
      if (!(error instanceof UnroutableError)) throw error;
      unroutable.push(...error.types);
    }
    if (unroutable.length > 0) throw new UnroutableError(unroutable);
  };

  const open = async (consumer: Consumer): Promise<void> => {
    if (consumer.stopped || consumer.live !== undefined) return;
    const channel = await connected().createChannel();
    const live: Generation = { channel, held: new Set(), dead: new AbortController() };
    setMaxListeners(0, live.dead.signal); // one listener per delayed nack
    channel.on('error', (error: Error) =>
      log('warn', 'consumer channel failed', { queue: consumer.name, error: error.message }),
    );
    channel.on('close', () => {
      live.dead.abort();
      live.held.clear();
      if (consumer.live === live) consumer.live = undefined;
      retryLater(consumer);
    });
    try {
      await channel.prefetch(consumer.prefetch);
      await declareOn(channel, consumer.name, new Set(consumer.types));
      consumer.live = live;
      await channel.consume(consumer.name, (message) => {
        // null: the broker cancelled us (queue deleted, leader lost); reopen from scratch
        if (message === null) void channel.close().catch(ignore);
        else void handle(consumer, toDelivery(live, message));
      });
    } catch (error) {
      void channel.close().catch(ignore);
      throw error;
    }
  };

  const handle = async (consumer: Consumer, delivery: Delivery): Promise<void> => {
    try {
      await consumer.onDelivery(delivery);
    } catch (error) {
      // Never ack what failed: give it back, a little later, and say so.
      const fields = { queue: consumer.name, messageId: delivery.messageId, error: asError(error).message };
      log('error', 'consumer failed; the message goes back to the queue', fields);
      await delivery.nack(1_000);
    }
  };

  const start = (consumer: Consumer): Promise<void> =>
    (consumer.starting ??= (async () => {
      try {
        await open(consumer);
      } catch (error) {
        // A consumer not registered yet is a first subscribe: its caller gets the error.
        const fields = { queue: consumer.name, error: asError(error).message };
        if (consumers.has(consumer)) log('warn', 'cannot start consumer; retrying', fields);
        retryLater(consumer);
        throw error;
      } finally {
        consumer.starting = undefined;
      }
    })());

  // After a lost connection 'connect' restarts every consumer; this covers a channel
  // that died alone (a broker-side cancel, a channel error).
  const retryLater = (consumer: Consumer): void => {
    if (consumer.retry !== undefined || !consumers.has(consumer) || closing !== undefined) return;
    consumer.retry = setTimeout(() => {
      consumer.retry = undefined;
      if (model !== undefined) void start(consumer).catch(ignore);
    }, 1_000);
  };

  const stop = async (consumer: Consumer): Promise<void> => {
    consumer.stopped = true;
    clearTimeout(consumer.retry);
    consumers.delete(consumer);
    await consumer.starting?.catch(ignore);
    // Closing the channel cancels the consumer and hands its unacked deliveries back.
    await consumer.live?.channel.close().catch(ignore);
  };

  const remember = (name: string, types: readonly string[]): void => {
    topology.set(name, new Set(types));
  };

  const bus: Bus = {
    kind: 'rabbitmq',
    publish,
    subscribe: async (queue, types, onDelivery, subscribeOptions) => {
      const prefetch = subscribeOptions?.prefetch ?? 256;
      const consumer: Consumer = { name: prefix + queue, types, onDelivery, prefetch, stopped: false };
      await start(consumer);
      consumers.add(consumer);
      remember(consumer.name, types);
      return { queue, close: () => stop(consumer) };
    },
    declare: async (queue, types) => {
      await withChannel((channel) => declareOn(channel, prefix + queue, new Set(types)));
      remember(prefix + queue, types);
    },
    // The broker counts only ready messages; deliveries held by this process's
    // subscribers and not yet settled are added, so "quiet" means nothing is in flight
    // here either. Deliveries held by other processes are not counted.
    depth: async (queue) => {
      const name = prefix + queue;
      const waiting = await withChannel((channel) =>
        channel.checkQueue(name).then(
          (reply) => reply.messageCount,
          (error: unknown) => (isNotFound(error) ? 0 : Promise.reject(asError(error))),
        ),
      );
      let held = 0;
      for (const consumer of consumers) if (consumer.name === name) held += consumer.live?.held.size ?? 0;
      return waiting + held;
    },
    purge: async (queue) => {
      const name = prefix + queue;
      return withChannel((channel) => channel.purgeQueue(name).then((reply) => reply.messageCount));
    },
    close: () =>
      (closing ??= (async () => {
        await Promise.all([...consumers].map(stop));
        model = undefined;
        await recovering.close();
      })()),
  };

  forcedDisconnects.set(bus, () => {
    // amqplib keeps the socket on an untyped property; only this test hook touches it.
    const connection = model?.connection as unknown as { stream?: { destroy(error: Error): void } } | undefined;
    connection?.stream?.destroy(new Error('connection dropped by forceDisconnect'));
  });

  // Recovery would try forever; closing the bus is how we give up on the first connect.
  const timeoutMs = options.connectTimeoutMs ?? 30_000;
  const giveUp = setTimeout(() => void bus.close(), timeoutMs);
  try {
    await recovering.waitForConnect();
  } catch {
    throw new UnavailableError(
      `RabbitMQ at ${host} unreachable for ${timeoutMs} ms${lastError ? `: ${lastError.message}` : ''}`,
    );
  } finally {
    clearTimeout(giveUp);
  }
  return bus;
}

function toDelivery(live: Generation, message: ConsumeMessage): Delivery {
  live.held.add(message);
  let settled = false;
  const settle = (send: () => void): void => {
    if (settled) return;
    settled = true;
    live.held.delete(message);
    if (live.dead.signal.aborted) return; // the broker has taken it back already
    try {
      send();
    } catch {
      // the channel died in between; the broker redelivers
    }
  };
  const messageId: unknown = message.properties.messageId;
  const batch = message.properties.contentType === batchContentType;
  const body = parseBody(message.content.toString('utf8'));
  countDelivery(batch && Array.isArray(body) ? body.length : 1, message.content.length);
  return {
    body,
    batch,
    messageId: typeof messageId === 'string' ? messageId : undefined,
    routingKey: message.fields.routingKey,
    redelivered: message.fields.redelivered,
    ack: () => {
      settle(() => live.channel.ack(message));
      return Promise.resolve();
    },
    nack: async (delayMs) => {
      if ((delayMs ?? 0) > 0 && !settled) await sleep(delayMs, undefined, { signal: live.dead.signal }).catch(ignore);
      settle(() => live.channel.nack(message, false, true));
    },
  };
}

/** Resolves when the channel takes writes again; rejects if it closes first. */
async function drained(channel: Channel): Promise<void> {
  const done = new AbortController();
  const closed = once(channel, 'close', { signal: done.signal }).then(() => {
    throw new UnavailableError('the channel closed while publishing');
  });
  await Promise.race([once(channel, 'drain', { signal: done.signal }), closed]).finally(() => done.abort());
}

function parseBody(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text; // a poison message: the consumer dead-letters it with the raw text
  }
}

function isPreconditionFailed(error: unknown): boolean {
  return typeof error === 'object' && error !== null && 'code' in error && error.code === 406;
}

function isNotFound(error: unknown): boolean {
  return typeof error === 'object' && error !== null && 'code' in error && error.code === 404;
}

function asError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error));
}
