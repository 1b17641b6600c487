// The relay, on PGlite and on a real PostgreSQL server: it publishes the outbox in order
// per subject, marks what the broker confirmed, rides out a failing broker without loss,
// lets two instances share one database without ever publishing a subject at once,
// wakes on NOTIFY rather than waiting for its poll, and keeps (counts, says, retries)
// what the broker refuses for want of a bound queue, on the local bus and on RabbitMQ.
import crypto from 'node:crypto';
import type { Envelope } from '@converge/contracts';
import { connect } from 'amqplib';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { eventsOf, type Bus } from './bus.ts';
import { dropDatabase, ensureDatabase, openPglite, openPostgres, type Db } from './db.ts';
import { UnroutableError } from './errors.ts';
import { createLocalBus } from './local-bus.ts';
import { silentLogger, type Fields, type Logger } from './log.ts';
import { migrate, platformMigrations } from './migrate.ts';
import { appendToOutbox, type Outgoing } from './outbox.ts';
import { createRabbitBus, deadLetterExchangeOf } from './rabbitmq.ts';
import { outboxStatus, relayBatch, startRelay, unroutableEvents, type Relay } from './relay.ts';
import { sleep } from './retry.ts';
import { eventually, serverAvailable, servers, uniqueName } from './testing.ts';

const pgUp = await serverAvailable('postgres');
const rabbitUp = await serverAvailable('rabbitmq');

type Backend = { name: 'pglite' | 'postgres'; up: boolean; open(): Promise<Db> };
const database = uniqueName('t');
let serverUrl: string | undefined;
const cleanups: (() => Promise<void>)[] = [];

async function migrated(db: Db): Promise<Db> {
  cleanups.push(() => db.close());
  await migrate(db, { platform: platformMigrations });
  return db;
}

const backends: Backend[] = [
  { name: 'pglite', up: true, open: async () => migrated(await openPglite('relay-test')) },
  {
    name: 'postgres',
    up: pgUp,
    open: async () => {
      serverUrl ??= await ensureDatabase(servers.postgres, database);
      const db = await migrated(await openPostgres('relay-test', serverUrl));
      await db.exec('TRUNCATE outbox RESTART IDENTITY');
      return db;
    },
  },
];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

afterAll(async () => {
  if (serverUrl !== undefined) await dropDatabase(servers.postgres, database);
});

/** The broker: a local bus on a database of its own, with a queue bound to every test event. */
async function openBus(): Promise<Bus> {
  const busDb = await openPglite('relay-test-bus');
  const bus = await createLocalBus(busDb);
  cleanups.push(async () => {
    await bus.close();
    await busDb.close();
  });
  await bus.declare('audit', ['StockAdjusted']);
  return bus;
}

type PublishLog = {
  published: { relay: string; envelope: Envelope }[];
  inFlight: Map<string, string>;
  overlaps: string[];
};
const newLog = (): PublishLog => ({ published: [], inFlight: new Map(), overlaps: [] });

/** Fault injection around the real bus: fails the first `failures` publishes, and records the rest. */
function recordingBus(inner: Bus, relay: string, log: PublishLog, failures = 0): Bus & { failed: number } {
  const wrapper = {
    kind: inner.kind,
    failed: 0,
    subscribe: inner.subscribe.bind(inner),
    declare: inner.declare.bind(inner),
    depth: inner.depth.bind(inner),
    close: inner.close.bind(inner),
    publish: async (messages: readonly Envelope[]) => {
      if (wrapper.failed < failures) {
        wrapper.failed += 1;
        throw new Error('broker unavailable');
      }
      const subjects = new Set(messages.map((m) => m.subject));
      for (const subject of subjects) {
        const holder = log.inFlight.get(subject);
        if (holder !== undefined && holder !== relay) log.overlaps.push(subject);
        log.inFlight.set(subject, relay);
      }
      try {
        await sleep(1);
        await inner.publish(messages);
        for (const envelope of messages) log.published.push({ relay, envelope });
      } finally {
        for (const subject of subjects) if (log.inFlight.get(subject) === relay) log.inFlight.delete(subject);
      }
    },
  };
  return wrapper;
}

async function run(
  db: Db,
  bus: Bus,
  options: { batchSize?: number; pollMs?: number; lingerMs?: number; log?: Logger } = {},
): Promise<Relay> {
  const relay = await startRelay({ db, bus, log: silentLogger, ...options });
  cleanups.push(() => relay.stop());
  return relay;
}

const stockAdjusted = (subject: string): Outgoing => ({
  type: 'StockAdjusted',
  subject,
  data: { productId: subject, delta: 1, reason: 'restock', stockQuantity: 1, reserved: 0, sold: 0 },
});

const productAdded = (subject: string): Outgoing => ({
  type: 'ProductAdded',
  subject,
  data: { productId: subject, name: 'Tea', price: 450, currency: 'EUR', stockQuantity: 1 },
});

/** Appends the events in one transaction; returns their envelopes. */
const append = (db: Db, events: readonly Outgoing[]): Promise<Envelope[]> =>
  db.transaction((tx) => appendToOutbox(tx, { source: 'inventory', now: new Date() }, events));

const unpublished = async (db: Db) =>
  (
    await db.query<{ id: string }>('SELECT id::text AS id FROM outbox WHERE published_at IS NULL ORDER BY position')
  ).map((r) => r.id);

/** A logger that keeps what it is told. */
function recordingLogger(): Logger & { lines: { level: string; message: string; fields: Fields }[] } {
  const lines: { level: string; message: string; fields: Fields }[] = [];
  const logger = {
    lines,
    info: (message: string, fields: Fields = {}) => void lines.push({ level: 'info', message, fields }),
    warn: (message: string, fields: Fields = {}) => void lines.push({ level: 'warn', message, fields }),
    error: (message: string, fields: Fields = {}) => void lines.push({ level: 'error', message, fields }),
    child: () => logger,
  };
  return logger;
}

/**
 * Events of a type no queue binds (ProductAdded: the bus binds only StockAdjusted) wait in
 * the outbox, with the later events of their subject, while the other subjects go out;
 * the refusals are counted and logged; once a queue binds the type, they go out in order.
 */
async function unroutableWaitsForItsQueue(db: Db, bus: Bus): Promise<void> {
  const log = recordingLogger();
  const [a, b, c] = [crypto.randomUUID(), crypto.randomUUID(), crypto.randomUUID()];
  const [added, adjustedA] = await append(db, [productAdded(a), stockAdjusted(a), stockAdjusted(b)]);
  await run(db, bus, { batchSize: 10, log });

  await eventually(
    async () => ((await unpublished(db)).length === 2 ? true : undefined),
    15_000,
    'the other subject published',
  );
  expect(await unpublished(db)).toEqual([added?.id, adjustedA?.id]);
  const [adjustedC] = await append(db, [stockAdjusted(c)]);
  await eventually(
    async () => ((await unpublished(db)).includes(adjustedC?.id ?? '') ? undefined : true),
    15_000,
    'a later subject published while the type is refused',
  );
  expect(unroutableEvents(db).get('ProductAdded')).toBeGreaterThanOrEqual(1);
  expect(log.lines.find((l) => l.level === 'error')?.fields).toMatchObject({
    type: 'ProductAdded',
    routingKey: 'ProductAdded',
  });

  await bus.declare('catalogue', ['ProductAdded']);

  await eventually(drained(db), 15_000, 'outbox drained once a queue binds the type');
  const feedOfA = await db.query<{ id: string }>(
    'SELECT id::text AS id FROM outbox WHERE subject = $1 ORDER BY feed_position',
    [a],
  );
  expect(feedOfA.map((r) => r.id)).toEqual([added?.id, adjustedA?.id]);
  await eventually(async () => ((await bus.depth('catalogue')) >= 1 ? true : undefined), 5_000, 'the event queued');
}

/** Appends one event per entry of `subjects`, `perTransaction` at a time; returns the ids in position order. */
async function appendAll(db: Db, subjects: readonly string[], perTransaction: number): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < subjects.length; i += perTransaction) {
    const events = subjects.slice(i, i + perTransaction).map(stockAdjusted);
    const envelopes = await db.transaction((tx) =>
      appendToOutbox(tx, { source: 'inventory', now: new Date() }, events),
    );
    ids.push(...envelopes.map((e) => e.id));
  }
  return ids;
}

const positionOrder = async (db: Db) =>
  (await db.query<{ id: string }>('SELECT id::text AS id FROM outbox ORDER BY position')).map((r) => r.id);

const drained = (db: Db) => async () => ((await outboxStatus(db)).backlog === 0 ? true : undefined);

/** The events waiting in the audit queue (a relay batch is one broker message per type), taken and acked. */
async function takeAll(bus: Bus, expected: number): Promise<Envelope[]> {
  const events: Envelope[] = [];
  const subscription = await bus.subscribe('audit', ['StockAdjusted'], async (delivery) => {
    events.push(...(eventsOf(delivery) as Envelope[]));
    await delivery.ack();
  });
  await eventually(() => Promise.resolve(events.length >= expected ? true : undefined), 15_000, `${expected} events`);
  await subscription.close();
  return events;
}

function sequencesBySubject(published: readonly { envelope: Envelope }[]): Map<string, number[]> {
  const bySubject = new Map<string, number[]>();
  for (const { envelope } of published)
    bySubject.set(envelope.subject, [...(bySubject.get(envelope.subject) ?? []), envelope.sequence]);
  return bySubject;
}

const upTo = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

describe.each(backends)('relay on $name', (backend) => {
  describe.skipIf(!backend.up)('the relay', () => {
    it(
      'given seven pending rows, when relayBatch runs with a batch of three, ' +
        'then it publishes the oldest three and marks only them',
      async () => {
        const db = await backend.open();
        const log = newLog();
        const bus = recordingBus(await openBus(), 'one', log);
        const [a, b] = [crypto.randomUUID(), crypto.randomUUID()];
        const ids = await appendAll(db, [a, b, a, a, b, a, b], 2);

        const counts = [
          await relayBatch(db, bus, 3),
          await relayBatch(db, bus, 3),
          await relayBatch(db, bus, 3),
          await relayBatch(db, bus, 3),
        ];

        expect(counts).toEqual([3, 3, 1, 0]);
        expect(log.published.map((p) => p.envelope.id)).toEqual(ids);
        expect(await outboxStatus(db)).toMatchObject({ backlog: 0, published: 7 });
        expect(await takeAll(bus, 7)).toHaveLength(7);
      },
    );

    it(
      'given events on three subjects, when the relay runs, then the bus ' +
        'receives them in position order and every row is marked published',
      async () => {
        const db = await backend.open();
        const bus = await openBus();
        const received: Envelope[] = [];
        await bus.subscribe('audit', ['StockAdjusted'], async (delivery) => {
          received.push(...(eventsOf(delivery) as Envelope[]));
          await delivery.ack();
        });
        const subjects = [crypto.randomUUID(), crypto.randomUUID(), crypto.randomUUID()];
        const ids = await appendAll(
          db,
          Array.from({ length: 30 }, (_, i) => subjects[i % 3] ?? ''),
          4,
        );

        const relay = await run(db, bus, { batchSize: 4 });
        await eventually(drained(db), 15_000, 'outbox drained');
        await eventually(() => Promise.resolve(received.length >= 30 ? true : undefined), 15_000, 'all delivered');

        expect(received.map((e) => e.id)).toEqual(ids);
        expect([...sequencesBySubject(received.map((envelope) => ({ envelope }))).values()]).toEqual([
          upTo(10),
          upTo(10),
          upTo(10),
        ]);
        expect(relay.published).toBe(30);
        const unmarked = await db.query('SELECT 1 FROM outbox WHERE published_at IS NULL');
        expect(unmarked).toHaveLength(0);
      },
    );

    it(
      'given a broker that refuses the first four publishes, when the relay ' +
        'retries, then everything arrives once, in order, with nothing lost',
      async () => {
        const db = await backend.open();
        const log = newLog();
        const bus = recordingBus(await openBus(), 'one', log, 4);
        const subjects = [crypto.randomUUID(), crypto.randomUUID(), crypto.randomUUID()];
        const ids = await appendAll(
          db,
          Array.from({ length: 24 }, (_, i) => subjects[(i * 7) % 3] ?? ''),
          5,
        );

        const relay = await run(db, bus, { batchSize: 10 });
        await eventually(drained(db), 20_000, 'outbox drained');

        expect(bus.failed).toBe(4);
        expect(log.published.map((p) => p.envelope.id)).toEqual(ids);
        expect(relay.published).toBe(24);
        expect(await takeAll(bus, 24)).toHaveLength(24);
      },
    );

    it(
      'given two relays on one database, when 2,000 events on 50 subjects arrive, then ' +
        'each is published once, in order per subject, never by both at once',
      async () => {
        const db = await backend.open();
        const other =
          backend.name === 'postgres' && serverUrl !== undefined ? await openPostgres('relay-test-2', serverUrl) : db;
        if (other !== db) cleanups.push(() => other.close());
        const log = newLog();
        const broker = await openBus();
        const relays = [
          await run(db, recordingBus(broker, 'a', log), { batchSize: 25 }),
          await run(other, recordingBus(broker, 'b', log), { batchSize: 25 }),
        ];
        const subjects = Array.from({ length: 50 }, () => crypto.randomUUID());
        const picks = subjects.flatMap((s) => Array.from({ length: 40 }, () => s)).sort(() => Math.random() - 0.5);

        const ids = await appendAll(db, picks, 20);
        await eventually(drained(db), 60_000, 'outbox drained');

        expect(log.published).toHaveLength(2000);
        expect(new Set(log.published.map((p) => p.envelope.id))).toEqual(new Set(ids));
        const bySubject = sequencesBySubject(log.published);
        expect(bySubject.size).toBe(50);
        for (const sequences of bySubject.values()) expect(sequences).toEqual(upTo(40));
        expect(log.overlaps).toEqual([]);
        expect(relays.map((r) => r.published).reduce((x, y) => x + y)).toBe(2000);
        expect(await takeAll(broker, 2000)).toHaveLength(2000);
        expect(await positionOrder(db)).toHaveLength(2000);
      },
    );

    it(
      'given a linger, when events commit one after another while it waits, then they go out in one ' +
        'publish; without it the first commit goes out on its own',
      async () => {
        const db = await backend.open();
        const broker = await openBus();
        const counted = (inner: Bus): Bus & { calls: { publishes: number } } => {
          const calls = { publishes: 0 };
          return {
            kind: inner.kind,
            calls,
            subscribe: inner.subscribe.bind(inner),
            declare: inner.declare.bind(inner),
            depth: inner.depth.bind(inner),
            close: inner.close.bind(inner),
            publish: async (messages: readonly Envelope[]) => {
              calls.publishes += 1;
              await inner.publish(messages);
            },
          };
        };
        const commitOneByOne = async () => {
          for (let k = 0; k < 5; k++) {
            await append(db, [stockAdjusted(crypto.randomUUID())]);
            await sleep(10);
          }
          await eventually(drained(db), 15_000, 'outbox drained');
        };
        const lingering = counted(broker);
        const relay = await run(db, lingering, { pollMs: 60_000, lingerMs: 1_000 });
        await eventually(drained(db), 5_000, 'nothing left from before');
        const before = lingering.calls.publishes;

        await commitOneByOne();

        expect(lingering.calls.publishes - before).toBe(1);
        await relay.stop();
        const eager = counted(broker);
        await run(db, eager, { pollMs: 60_000 });

        await commitOneByOne();

        expect(eager.calls.publishes).toBeGreaterThan(1);
        expect(await takeAll(broker, 10)).toHaveLength(10);
      },
    );

    it(
      'given a batch with a type no queue binds, when relayBatch runs, then it marks the other subjects, ' +
        'keeps that row and the later rows of its subject, counts the refusal and rejects',
      async () => {
        const db = await backend.open();
        const bus = await openBus();
        const [a, b] = [crypto.randomUUID(), crypto.randomUUID()];
        const [added, , adjustedA] = await append(db, [
          productAdded(a),
          stockAdjusted(b),
          stockAdjusted(a),
          stockAdjusted(b),
        ]);

        const batch = relayBatch(db, bus, 10);

        await expect(batch).rejects.toThrow(UnroutableError);
        await expect(batch).rejects.toMatchObject({ types: ['ProductAdded'] });
        expect(await unpublished(db)).toEqual([added?.id, adjustedA?.id]);
        expect(await outboxStatus(db)).toMatchObject({ backlog: 2, published: 2 });
        expect([...unroutableEvents(db)]).toEqual([['ProductAdded', 1]]);
      },
    );

    it(
      'given events of a type no queue binds, when the relay runs, then they wait in the outbox, ' +
        'counted and logged, while other subjects go out, and go out in order once a queue binds the type',
      async () => {
        await unroutableWaitsForItsQueue(await backend.open(), await openBus());
      },
    );

    it(
      'given an idle relay polling once a minute, when a row is committed, ' +
        'then NOTIFY wakes it and the row is published within seconds',
      async () => {
        const db = await backend.open();
        const log = newLog();
        const bus = recordingBus(await openBus(), 'one', log);
        const [first] = await appendAll(db, [crypto.randomUUID()], 1);
        await run(db, bus, { pollMs: 60_000 });
        await eventually(drained(db), 5_000, 'first row published');
        await sleep(200);

        const committedAt = Date.now();
        const [second] = await appendAll(db, [crypto.randomUUID()], 1);
        await eventually(drained(db), 5_000, 'second row published after NOTIFY');

        expect(Date.now() - committedAt).toBeLessThan(5_000);
        expect(log.published.map((p) => p.envelope.id)).toEqual([first, second]);
      },
    );
  });
});

describe.skipIf(!rabbitUp)('relay on RabbitMQ', () => {
  it(
    'given events of a type no queue binds, when the relay publishes them to RabbitMQ, then they wait ' +
      'in the outbox, counted and logged, and go out in order once a queue binds the type',
    async () => {
      const db = await migrated(await openPglite('relay-test'));
      const exchange = uniqueName('test.events');
      const queuePrefix = `${uniqueName('test')}.`;
      const bus = await createRabbitBus({ url: servers.rabbitmq, exchange, queuePrefix, log: () => undefined });
      cleanups.push(async () => {
        const admin = await connect(servers.rabbitmq);
        const channel = await admin.createChannel();
        for (const queue of ['audit', 'catalogue']) {
          await channel.deleteQueue(queuePrefix + queue);
          await channel.deleteQueue(`${queuePrefix}${queue}.parked`);
        }
        await channel.deleteExchange(exchange);
        await channel.deleteExchange(deadLetterExchangeOf(exchange));
        await admin.close();
      });
      cleanups.push(() => bus.close());
      await bus.declare('audit', ['StockAdjusted']);

      await unroutableWaitsForItsQueue(db, bus);
    },
  );
});
