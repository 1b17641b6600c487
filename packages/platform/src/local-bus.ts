// The local bus: RabbitMQ's semantics in-process, for embedded mode and tests. Queues
// live in a database of their own (a PGlite directory in embedded mode, memory in
// tests), so a message published and not yet acked survives a crash of the process
// exactly as it would survive in a durable broker queue. Topic routing by type to
// durable bindings, prefetch, manual ack, nack with delay, redelivery flags. As on the
// broker, a publish of a type no queue binds is refused (UnroutableError), and a message
// handed out more than the delivery limit allows moves to the queue's parking queue.
import type { Envelope } from '@converge/contracts';
import {
  batchesOf,
  defaultDeliveryLimit,
  encodeBatch,
  parkedQueueOf,
  type Bus,
  type Delivery,
  type SubscribeOptions,
  type Subscription,
} from './bus.ts';
import { countDelivery, countPublish } from './cost.ts';
import type { Db } from './db.ts';
import { UnroutableError } from './errors.ts';
import { withFaults, type BusFaults, type FaultStats } from './faulty-bus.ts';

export type { BusFaults } from './faulty-bus.ts';

type QueueConsumer = {
  onDelivery: (d: Delivery) => Promise<void>;
  prefetch: number;
  closed: boolean;
  unacked: Set<number>;
};

type Row = {
  id: number;
  routing_key: string;
  message_id: string | null;
  body: string;
  batch: boolean;
  deliveries: number;
};

/** A published message on its way into one bound queue. */
type Routed = { queue: string; key: string; id: string | null; body: string; batch: boolean };

type QueueState = {
  inflight: Set<number>;
  consumers: QueueConsumer[];
  pumping: boolean;
  /** Round robin over the queue's subscribers, kept across pumps. */
  turn: number;
  again: boolean;
  timer: NodeJS.Timeout | undefined;
};

/**
 * `faults` (tests only) duplicates or delays some deliveries: see faulty-bus.ts.
 * `deliveryLimit`: deliveries beyond the first a message may have before it is parked.
 */
export async function createLocalBus(
  db: Db,
  options: { faults?: BusFaults; pollMs?: number; deliveryLimit?: number } = {},
): Promise<Bus & { faultStats: FaultStats }> {
  await db.exec(`
    CREATE TABLE IF NOT EXISTS bus_bindings (
      queue text NOT NULL, routing_key text NOT NULL, PRIMARY KEY (queue, routing_key)
    );
    CREATE TABLE IF NOT EXISTS bus_messages (
      id bigserial PRIMARY KEY, queue text NOT NULL, routing_key text NOT NULL, message_id text,
      body text NOT NULL, available_at bigint NOT NULL, deliveries integer NOT NULL DEFAULT 0);
    CREATE INDEX IF NOT EXISTS bus_messages_queue ON bus_messages (queue, id);
    ALTER TABLE bus_messages ADD COLUMN IF NOT EXISTS batch boolean NOT NULL DEFAULT false;`);
  const bindings = new Map<string, Set<string>>();
  for (const row of await db.query<{ queue: string; routing_key: string }>(
    'SELECT queue, routing_key FROM bus_bindings',
  )) {
    bind(row.queue, row.routing_key);
  }
  const queues = new Map<string, QueueState>();
  const pollMs = options.pollMs ?? 250;
  const deliveryLimit = options.deliveryLimit ?? defaultDeliveryLimit;
  let closed = false;
  const isClosed = () => closed;

  function bind(queue: string, key: string) {
    let set = bindings.get(key);
    if (set === undefined) bindings.set(key, (set = new Set()));
    set.add(queue);
  }

  function state(queue: string): QueueState {
    let s = queues.get(queue);
    if (s === undefined) {
      s = { inflight: new Set(), consumers: [], pumping: false, turn: 0, again: false, timer: undefined };
      queues.set(queue, s);
    }
    return s;
  }

  // A queue is bound to exactly the types asked for: others bound before are dropped.
  async function declare(queue: string, types: readonly string[]) {
    await db.query(
      `WITH gone AS (DELETE FROM bus_bindings WHERE queue = $1 AND NOT (routing_key = ANY($2::text[])))
       INSERT INTO bus_bindings (queue, routing_key) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING`,
      [queue, [...types]],
    );
    for (const set of bindings.values()) set.delete(queue);
    for (const type of types) bind(queue, type);
  }

  // Hands out ready messages to the queue's consumers up to their prefetch, oldest first.
  async function pump(queue: string): Promise<void> {
    const s = state(queue);
    if (s.pumping) {
      s.again = true;
      return;
    }
    s.pumping = true;
    try {
      do {
        s.again = false;
        const consumers = s.consumers.filter((c) => !c.closed);
        const capacity = consumers.reduce((sum, c) => sum + c.prefetch, 0) - s.inflight.size;
        if (closed || consumers.length === 0 || capacity <= 0) break;
        const rows = await db.query<Row>(
          `UPDATE bus_messages SET deliveries = deliveries + 1
            WHERE id IN (SELECT id FROM bus_messages WHERE queue = $1 AND available_at <= $2 AND id <> ALL($3::bigint[])
                          ORDER BY id LIMIT $4)
            RETURNING id, routing_key, message_id, body, batch, deliveries`,
          [queue, Date.now(), [...s.inflight], capacity],
        );
        rows.sort((a, b) => a.id - b.id);
        // Handed out once and then `deliveryLimit` times more without an ack: it goes
        // to the parking queue instead (one statement, only when there is such a row).
        const spent = rows.filter((row) => row.deliveries > deliveryLimit + 1).map((row) => row.id);
        if (spent.length > 0) {
          await db.query('UPDATE bus_messages SET queue = $2, deliveries = 0 WHERE id = ANY($1::bigint[])', [
            spent,
            parkedQueueOf(queue),
          ]);
        }
        for (const row of rows) {
          if (row.deliveries > deliveryLimit + 1) continue;
          s.inflight.add(row.id);
          const consumer = consumers[s.turn++ % consumers.length];
          if (consumer !== undefined) deliver(queue, s, consumer, row);
        }
        if (rows.length === capacity) s.again = true;
      } while (s.again && !isClosed());
    } finally {
      s.pumping = false;
    }
    clearTimeout(s.timer);
    if (!closed && s.consumers.some((c) => !c.closed)) s.timer = setTimeout(() => void pump(queue), pollMs);
  }

  function deliver(queue: string, s: QueueState, consumer: QueueConsumer, row: Row) {
    const { onDelivery } = consumer;
    consumer.unacked.add(row.id);
    let settled = false;
    const settle = async (action: () => Promise<unknown>) => {
      if (settled || closed) return;
      settled = true;
      await action();
      // A subscriber that closed meanwhile gave the message back already; it may be with another.
      if (consumer.unacked.delete(row.id)) s.inflight.delete(row.id);
      void pump(queue);
    };
    let body: unknown;
    try {
      body = JSON.parse(row.body);
    } catch {
      body = row.body;
    }
    countDelivery(row.batch && Array.isArray(body) ? body.length : 1, Buffer.byteLength(row.body));
    const delivery: Delivery = {
      body,
      batch: row.batch,
      messageId: row.message_id ?? undefined,
      routingKey: row.routing_key,
      redelivered: row.deliveries > 1,
      ack: () => settle(() => db.query('DELETE FROM bus_messages WHERE id = $1', [row.id])),
      nack: (delayMs = 0) =>
        settle(() =>
          db.query('UPDATE bus_messages SET available_at = $2 WHERE id = $1', [row.id, Date.now() + delayMs]),
        ),
    };
    void onDelivery(delivery).catch(() => delivery.nack(100));
  }

  async function insert(rows: readonly Routed[]) {
    await db.query(
      `INSERT INTO bus_messages (queue, routing_key, message_id, body, batch, available_at)
       SELECT q, k, i, b, x, $6
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::boolean[])
              WITH ORDINALITY AS t(q, k, i, b, x, n)
        ORDER BY n`,
      [
        rows.map((r) => r.queue),
        rows.map((r) => r.key),
        rows.map((r) => r.id),
        rows.map((r) => r.body),
        rows.map((r) => r.batch),
        Date.now(),
      ],
    );
    for (const queue of new Set(rows.map((r) => r.queue))) void pump(queue);
  }

  const bus: Bus = {
    kind: 'local',
    publish: async (messages: readonly Envelope[]) => {
      if (closed) throw new Error('bus is closed');
      const rows: Routed[] = [];
      const unroutable: string[] = [];
      for (const { type, envelopes } of batchesOf(messages)) {
        const { body, batch } = encodeBatch(envelopes);
        countPublish(envelopes.length, Buffer.byteLength(body));
        const id = batch ? null : (envelopes[0]?.id ?? null);
        const queues = bindings.get(type);
        if (queues === undefined || queues.size === 0) unroutable.push(type);
        else for (const queue of queues) rows.push({ queue, key: type, id, body, batch });
      }
      if (rows.length > 0) await insert(rows);
      if (unroutable.length > 0) throw new UnroutableError(unroutable);
    },
    declare,
    subscribe: async (queue, types, onDelivery, subscribeOptions: SubscribeOptions = {}): Promise<Subscription> => {
      await declare(queue, types);
      const s = state(queue);
      const consumer: QueueConsumer = {
        onDelivery,
        prefetch: subscribeOptions.prefetch ?? 256,
        closed: false,
        unacked: new Set(),
      };
      s.consumers.push(consumer);
      void pump(queue);
      return {
        queue,
        close: async () => {
          consumer.closed = true;
          s.consumers = s.consumers.filter((c) => c !== consumer);
          // Its unacked deliveries go back to the queue, for the other subscribers or the next one.
          for (const id of consumer.unacked) s.inflight.delete(id);
          consumer.unacked.clear();
          if (s.consumers.length === 0) clearTimeout(s.timer);
          else void pump(queue);
          await Promise.resolve();
        },
      };
    },
    depth: async (queue) => {
      const [row] = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM bus_messages WHERE queue = $1', [
        queue,
      ]);
      return row?.n ?? 0;
    },
    purge: async (queue) => {
      const inflight = [...state(queue).inflight];
      const rows = await db.query(
        'DELETE FROM bus_messages WHERE queue = $1 AND NOT (id = ANY($2::bigint[])) RETURNING 1',
        [queue, inflight],
      );
      return rows.length;
    },
    close: async () => {
      closed = true;
      for (const s of queues.values()) clearTimeout(s.timer);
      await Promise.resolve();
    },
  };
  return options.faults === undefined
    ? { ...bus, faultStats: { duplicated: 0, delayed: 0 } }
    : withFaults(bus, options.faults);
}
