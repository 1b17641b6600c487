// The idempotent consumer and dead-letter replay, on PGlite and on a real PostgreSQL
// server. The handler records its effect in a table inside the consumer's transaction,
// so every assertion counts what really took effect.
import crypto from 'node:crypto';
import { checkEnvelope, type DomainEvent, type Envelope } from '@converge/contracts';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Bus } from './bus.ts';
import { startConsumer, type BatchHandler, type Consumer, type Handler, type Message } from './consumer.ts';
import { dropDatabase, ensureDatabase, openPglite, openPostgres, type Db } from './db.ts';
import { replayDeadLetter } from './dead-letters.ts';
import { PermanentError } from './errors.ts';
import { appendToOutbox, type Outgoing } from './outbox.ts';
import { createLocalBus } from './local-bus.ts';
import { silentLogger } from './log.ts';
import { migrate, platformMigrations } from './migrate.ts';
import { eventually, serverAvailable, servers, uniqueName } from './testing.ts';

const pgUp = await serverAvailable('postgres');

type Backend = { name: 'pglite' | 'postgres'; up: boolean; open(): Promise<Db> };
const database = uniqueName('t');
let serverUrl: string | undefined;
const cleanups: (() => Promise<void>)[] = [];

async function prepared(db: Db): Promise<Db> {
  cleanups.push(() => db.close());
  await migrate(db, { platform: platformMigrations });
  await db.exec(`CREATE TABLE IF NOT EXISTS effects (n serial PRIMARY KEY, subject text NOT NULL,
      sequence integer NOT NULL, message_id text NOT NULL);
    TRUNCATE effects, outbox, inbox, consumer_positions, held_messages, dead_letter_audit, dead_letters`);
  return db;
}

const backends: Backend[] = [
  { name: 'pglite', up: true, open: async () => prepared(await openPglite('consumer-test')) },
  {
    name: 'postgres',
    up: pgUp,
    open: async () =>
      prepared(await openPostgres('consumer-test', (serverUrl ??= await ensureDatabase(servers.postgres, database)))),
  },
];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});
afterAll(async () => {
  if (serverUrl !== undefined) await dropDatabase(servers.postgres, database);
});

function message(event: DomainEvent, source: string, subject: string, sequence: number): Message {
  const id = crypto.randomUUID();
  const envelope: Envelope = {
    specversion: '1.0',
    id,
    source,
    type: event.type,
    subject,
    time: new Date().toISOString(),
    datacontenttype: 'application/json',
    dataversion: 1,
    sequence,
    correlationid: `correlation-${id}`,
    data: event.data,
  };
  return { ...envelope, ...event };
}

const stockAdjusted = (subject: string, sequence: number): Message =>
  message(
    {
      type: 'StockAdjusted',
      data: { productId: subject, delta: sequence, reason: 'restock', stockQuantity: sequence, reserved: 0, sold: 0 },
    },
    'inventory',
    subject,
    sequence,
  );

/** A handler that records its effect, after `fail` had its say (throwing makes the attempt fail). */
function recordingHandler(
  fail: (message: Message, attempt: number) => void = () => undefined,
): Handler & { attempts: Map<string, number> } {
  const attempts = new Map<string, number>();
  const handle: Handler = async (tx, m) => {
    await tx.query('INSERT INTO effects (subject, sequence, message_id) VALUES ($1, $2, $3)', [
      m.subject,
      m.sequence,
      m.id,
    ]);
    const attempt = (attempts.get(m.id) ?? 0) + 1;
    attempts.set(m.id, attempt);
    fail(m, attempt);
  };
  return Object.assign(handle, { attempts });
}

const effects = async (db: Db) =>
  (await db.query<{ e: string }>(`SELECT subject || ':' || sequence AS e FROM effects ORDER BY n`)).map((r) => r.e);
const tag = (subject: string, ...sequences: number[]) => sequences.map((n) => `${subject}:${n}`);

type DeadLetterRow = {
  id: string;
  message_id: string | null;
  reason: string;
  error: string;
  attempts: number;
  status: string;
  body: string;
};
const deadLetters = (db: Db) =>
  db.query<DeadLetterRow>(
    'SELECT id::text AS id, message_id, reason, error, attempts, status, ' +
      'body FROM dead_letters ORDER BY parked_at, message_id',
  );

describe.each(backends)('consumer on $name', (backend) => {
  describe.skipIf(!backend.up)('the idempotent consumer', () => {
    let bus: Bus;
    let busDb: Db;
    beforeAll(async () => {
      busDb = await openPglite('consumer-test-bus');
      bus = await createLocalBus(busDb, { pollMs: 50 });
    });
    afterAll(async () => {
      await bus.close();
      await busDb.close();
    });

    async function consumer(
      db: Db,
      handle: Handler,
      options: { name?: string; subscribe?: boolean; sources?: string[]; lingerMs?: number } = {},
    ): Promise<Consumer> {
      const name = options.name ?? uniqueName('c');
      const backoff = { baseMs: 5, capMs: 20 };
      const sources = options.sources ?? ['inventory'];
      const lingerMs = options.lingerMs ?? 0;
      const started = await startConsumer(
        { name, db, bus, log: silentLogger, sources, handle, maxAttempts: 3, backoff, lingerMs },
        options.subscribe ?? false,
      );
      cleanups.push(() => started.stop());
      return started;
    }

    it(
      'given its database out of reach for longer than the retries, when a message arrives, then it ' +
        'waits for the database instead of parking the message, and takes effect once',
      async () => {
        const db = await backend.open();
        let reachable = false;
        const refused = () =>
          Promise.reject(Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' }));
        const away: Db = {
          ...db,
          query: <R extends object>(text: string, params?: readonly unknown[]) =>
            reachable ? db.query<R>(text, params) : refused(),
          transaction: (fn) => (reachable ? db.transaction(fn) : refused()),
        };
        const c = await consumer(away, recordingHandler());
        const m = stockAdjusted(crypto.randomUUID(), 1);

        const outcome = c.process(m);
        await eventually(
          () => Promise.resolve(c.stats.retries >= 6 ? true : undefined),
          5_000,
          'twice as many retries as attempts',
        );
        reachable = true;

        expect(await outcome).toBe('applied');
        expect(await effects(db)).toEqual(tag(m.subject, 1));
        expect(await deadLetters(db)).toHaveLength(0);
      },
    );

    it(
      'given 120 messages about 40 subjects arriving at once, when they are handled, ' +
        'then they share transactions and each subject takes effect in order',
      async () => {
        const db = await backend.open();
        const c = await consumer(db, recordingHandler());
        const subjects = Array.from({ length: 40 }, () => crypto.randomUUID());
        const messages = [1, 2, 3].flatMap((sequence) => subjects.map((subject) => stockAdjusted(subject, sequence)));

        const outcomes = await Promise.all(messages.map((m) => c.process(m)));

        expect(new Set(outcomes)).toEqual(new Set(['applied']));
        expect(c.stats.batches).toBeLessThan(60);
        expect(c.stats.fallbacks).toBe(0);
        const applied = await effects(db);
        expect(applied).toHaveLength(120);
        for (const subject of subjects)
          expect(applied.filter((e) => e.startsWith(subject))).toEqual(tag(subject, 1, 2, 3));
        const positions = await db.query<{ n: number }>(
          'SELECT count(*)::int AS n FROM consumer_positions WHERE last_sequence = 3',
        );
        expect(positions).toEqual([{ n: 40 }]);
      },
    );

    it(
      'given a linger, when messages about different subjects arrive a few at a time, then they wait for ' +
        'each other and share one batch; without it the first goes alone',
      async () => {
        const db = await backend.open();
        const arriving = async (c: Consumer) => {
          const outcomes: Promise<string>[] = [];
          for (let k = 0; k < 4; k++) {
            for (let j = 0; j < 3; j++) outcomes.push(c.process(stockAdjusted(crypto.randomUUID(), 1)));
            await new Promise((resolve) => setTimeout(resolve, 5));
          }
          return Promise.all(outcomes);
        };
        const lingering = await consumer(db, recordingHandler(), { lingerMs: 1_000 });
        const eager = await consumer(db, recordingHandler());

        expect(new Set(await arriving(lingering))).toEqual(new Set(['applied']));
        expect(new Set(await arriving(eager))).toEqual(new Set(['applied']));

        expect(lingering.stats).toMatchObject({ batches: 1, applied: 12, fallbacks: 0 });
        expect(eager.stats.batches).toBeGreaterThan(1);
        expect(await effects(db)).toHaveLength(24);
      },
    );

    it('given a linger, when a lone message arrives, then it is applied once the linger is over', async () => {
      const db = await backend.open();
      const c = await consumer(db, recordingHandler(), { lingerMs: 30 });
      const m = stockAdjusted(crypto.randomUUID(), 1);
      const sent = performance.now();

      expect(await c.process(m)).toBe('applied');
      expect(performance.now() - sent).toBeGreaterThanOrEqual(29);
      expect(await effects(db)).toEqual(tag(m.subject, 1));
    });

    it(
      'given a batch holding a duplicate, an early message and one that can never succeed, when it is ' +
        'handled, then only the bad one is parked and every other takes its single-message outcome',
      async () => {
        const db = await backend.open();
        const bad = crypto.randomUUID();
        const c = await consumer(
          db,
          recordingHandler((m) => {
            if (m.subject === bad) throw new PermanentError('a rule refuses this message', 'refused');
          }),
        );
        const seen = stockAdjusted(crypto.randomUUID(), 1);
        await c.process(seen);
        const fine = Array.from({ length: 10 }, () => stockAdjusted(crypto.randomUUID(), 1));
        const early = stockAdjusted(crypto.randomUUID(), 2);

        const outcomes = await Promise.all(
          [structuredClone(seen), ...fine, early, stockAdjusted(bad, 1)].map((m) => c.process(m)),
        );

        expect(outcomes).toEqual(['duplicate', ...fine.map(() => 'applied'), 'held', 'dead-lettered']);
        expect(c.stats.fallbacks).toBeGreaterThan(0);
        expect((await effects(db)).sort()).toEqual([seen, ...fine].map((m) => `${m.subject}:1`).sort());
        expect((await deadLetters(db)).map((d) => d.reason)).toEqual(['refused']);
        expect(await db.query('SELECT sequence FROM held_messages')).toEqual([{ sequence: 2 }]);
      },
    );

    it(
      'given a message already applied, when it is delivered again, ' + 'then it is a duplicate and takes effect once',
      async () => {
        const db = await backend.open();
        const c = await consumer(db, recordingHandler());
        const m = stockAdjusted(crypto.randomUUID(), 1);

        const outcomes = [await c.process(m), await c.process(structuredClone(m))];

        expect(outcomes).toEqual(['applied', 'duplicate']);
        expect(await effects(db)).toEqual(tag(m.subject, 1));
        expect(c.stats).toMatchObject({ received: 2, applied: 1, duplicate: 1 });
      },
    );

    it('given sequence 2 arrives before 1, when 1 arrives, then 2 was held and both take effect in order', async () => {
      const db = await backend.open();
      const c = await consumer(db, recordingHandler());
      const subject = crypto.randomUUID();

      const early = await c.process(stockAdjusted(subject, 2));
      const heldBefore = await db.query('SELECT sequence FROM held_messages');
      const first = await c.process(stockAdjusted(subject, 1));

      expect([early, first]).toEqual(['held', 'applied']);
      expect(heldBefore).toEqual([{ sequence: 2 }]);
      expect(await effects(db)).toEqual(tag(subject, 1, 2));
      expect(await db.query('SELECT 1 FROM held_messages')).toHaveLength(0);
      expect(c.stats).toMatchObject({ applied: 2, held: 1 });
    });

    // The family rule (contracts' subscriptions.ts): the payment service binds only
    // OrderCancelled of the order stream and inventory binds OrderCreated, OrderCancelled
    // and OrderCompleted. The order stream here is the producer's own outbox, so the
    // stamps are the ones a deployment publishes.
    async function orderStream(
      db: Db,
      subject: string,
      types: readonly ('OrderCreated' | 'OrderFailed' | 'OrderCancelled' | 'OrderCompleted')[],
    ): Promise<Message[]> {
      const data = (type: string) =>
        type === 'OrderCreated'
          ? {
              orderId: subject,
              userId: 'alice',
              items: [{ productId: crypto.randomUUID(), quantity: 1, unitPrice: 100 }],
              totalAmount: 100,
              currency: 'EUR',
              createdAt: new Date().toISOString(),
            }
          : type === 'OrderCompleted'
            ? { orderId: subject, userId: 'alice', totalAmount: 100, currency: 'EUR' }
            : { orderId: subject, userId: 'alice', reason: 'test' };
      for (const type of types)
        await appendToOutbox(db, { source: 'order', now: new Date() }, [
          { type, subject, data: data(type) } as Outgoing,
        ]);
      const rows = await db.query<{ envelope: Envelope }>(
        'SELECT envelope FROM outbox WHERE subject = $1 ORDER BY sequence',
        [subject],
      );
      return rows.map(({ envelope }) => {
        const checked = checkEnvelope(envelope);
        if (!checked.ok) throw new Error(checked.errors.join('; '));
        return checked.value;
      });
    }

    const inventoryOf = (db: Db, handle: Handler) => consumer(db, handle, { name: 'inventory', sources: ['order'] });

    it(
      "given a consumer that binds only some of a stream's types, when its events " +
        'arrive without the others, then none waits for an event it never needed',
      async () => {
        const db = await backend.open();
        const subject = crypto.randomUUID();
        const [created, cancelled] = await orderStream(db, subject, ['OrderCreated', 'OrderCancelled']);
        const c = await consumer(db, recordingHandler(), { name: 'payment', sources: ['order'] });

        const outcomes = [await c.process(cancelled), await c.process(created)];

        expect(cancelled).toMatchObject({ sequence: 2, prevpayment: 0, previnventory: 1 });
        expect(outcomes).toEqual(['applied', 'skipped']);
        expect(await effects(db)).toEqual(tag(subject, 2));
        expect(await db.query('SELECT 1 FROM held_messages')).toHaveLength(0);
      },
    );

    it(
      'given an event it needs lost on the way, when the next one arrives, then it ' +
        'is held until the lost one comes back, and both apply in order',
      async () => {
        const db = await backend.open();
        const subject = crypto.randomUUID();
        const [created, failed, completed] = await orderStream(db, subject, [
          'OrderCreated',
          'OrderFailed',
          'OrderCompleted',
        ]);
        const c = await inventoryOf(db, recordingHandler());
        if (created === undefined || completed === undefined) throw new Error('no stream');

        const early = await c.process(completed);
        const held = await db.query('SELECT sequence, after_sequence FROM held_messages');
        const late = await c.process(created);

        expect(failed).not.toHaveProperty('previnventory');
        expect([early, late]).toEqual(['held', 'applied']);
        expect(held).toEqual([{ sequence: 3, after_sequence: 1 }]);
        expect(await effects(db)).toEqual(tag(subject, 1, 3));
        expect(await db.query('SELECT last_sequence FROM consumer_positions WHERE subject = $1', [subject])).toEqual([
          { last_sequence: 3 },
        ]);
      },
    );

    it(
      "given a family's events shuffled and duplicated in one delivery burst, " +
        'when they are handled, then each applies once, in stream order',
      async () => {
        const db = await backend.open();
        const streams = await Promise.all(
          Array.from({ length: 8 }, () => crypto.randomUUID()).map(async (subject) => ({
            subject,
            events: await orderStream(db, subject, ['OrderCreated', 'OrderFailed', 'OrderCancelled', 'OrderCompleted']),
          })),
        );
        const c = await inventoryOf(db, recordingHandler());
        const deliveries = streams.flatMap(({ events }) => [...events, ...events.map((e) => structuredClone(e))]);
        deliveries.sort(() => Math.random() - 0.5);

        const outcomes = await Promise.all(deliveries.map((m) => c.process(m)));

        expect(outcomes.filter((o) => o === 'skipped')).toHaveLength(8 * 2);
        await eventually(
          async () => ((await effects(db)).length >= 8 * 3 ? true : undefined),
          5_000,
          'every needed event applied',
        );
        const applied = await effects(db);
        expect(applied).toHaveLength(8 * 3);
        for (const { subject } of streams)
          expect(applied.filter((e) => e.startsWith(subject))).toEqual(tag(subject, 1, 3, 4));
        await eventually(
          async () => ((await db.query('SELECT 1 FROM held_messages')).length === 0 ? true : undefined),
          5_000,
          'the hold drained',
        );
      },
    );

    it(
      'given sequences 1 and 2 applied, when sequence 1 comes again under a new id, ' + 'then it is stale and ignored',
      async () => {
        const db = await backend.open();
        const c = await consumer(db, recordingHandler());
        const subject = crypto.randomUUID();
        await c.process(stockAdjusted(subject, 1));
        await c.process(stockAdjusted(subject, 2));

        const outcome = await c.process(stockAdjusted(subject, 1));

        expect(outcome).toBe('stale');
        expect(await effects(db)).toEqual(tag(subject, 1, 2));
        expect(c.stats).toMatchObject({ applied: 2, stale: 1 });
      },
    );

    it(
      'given poison messages among good ones in one batch on the bus, when consumed, then ' +
        'each is dead-lettered alone as invalid and the other subject flows',
      async () => {
        const db = await backend.open();
        const c = await consumer(db, recordingHandler(), { subscribe: true });
        const [bad, good] = [crypto.randomUUID(), crypto.randomUUID()];
        const badPayload = { ...stockAdjusted(bad, 1), data: { productId: bad, delta: 'many' } };
        const goods = [1, 2, 3].map((n) => stockAdjusted(good, n));

        await bus.publish([goods[0], badPayload, goods[1], goods[2]].filter((m) => m !== undefined));
        const direct = [
          await c.process('{not json', 'broker-17'),
          await c.process({ ...stockAdjusted(bad, 2), type: 'StockInvented' }),
          await c.process({ ...stockAdjusted(bad, 3), id: 'not-a-uuid' }),
        ];
        await eventually(
          async () => ((await effects(db)).length === 3 && (await bus.depth(c.name)) === 0 ? true : undefined),
          10_000,
          'good subject applied',
        );

        expect(direct).toEqual(['dead-lettered', 'dead-lettered', 'dead-lettered']);
        expect(await effects(db)).toEqual(tag(good, 1, 2, 3));
        const parked = await deadLetters(db);
        expect(parked).toHaveLength(4);
        expect(parked.map((d) => d.reason)).toEqual([
          'invalid message',
          'invalid message',
          'invalid message',
          'invalid message',
        ]);
        const errors = parked.map((d) => d.error).join('\n');
        expect(errors).toContain('data/delta must be integer');
        expect(errors).toContain('unknown event type StockInvented');
        expect(errors).toContain('/id must match format "uuid"');
        expect(errors).toContain('/ must be object');
        const garbage = parked.find((d) => d.message_id === 'broker-17');
        expect(garbage?.body).toBe('{not json');
        const replay = await replayDeadLetter(db, c, garbage?.id ?? '', 'operator');
        expect(replay).toEqual({ id: garbage?.id, outcome: 'failed', detail: 'still invalid: / must be object' });
        expect(c.stats).toMatchObject({ received: 7, applied: 3, 'dead-lettered': 4 });
      },
    );

    it(
      'given a handler that throws PermanentError, when a message ' +
        'arrives, then it is dead-lettered at once with its reason',
      async () => {
        const db = await backend.open();
        const handle = recordingHandler(() => {
          throw new PermanentError('product is not in the catalogue', 'unknown product');
        });
        const c = await consumer(db, handle);
        const m = stockAdjusted(crypto.randomUUID(), 1);

        expect(await c.process(m)).toBe('dead-lettered');

        expect(handle.attempts.get(m.id)).toBe(1);
        expect(await effects(db)).toEqual([]);
        expect(await deadLetters(db)).toMatchObject([
          {
            message_id: m.id,
            reason: 'unknown product',
            error: 'product is not in the catalogue',
            attempts: 1,
            status: 'parked',
          },
        ]);
        expect(c.stats.retries).toBe(0);
      },
    );

    it(
      'given a handler that fails twice then succeeds, when a message ' +
        'arrives, then it takes effect once after two retries',
      async () => {
        const db = await backend.open();
        const handle = recordingHandler((_, attempt) => {
          if (attempt < 3) throw new Error('database hiccup');
        });
        const c = await consumer(db, handle);
        const m = stockAdjusted(crypto.randomUUID(), 1);

        expect(await c.process(m)).toBe('applied');

        expect(handle.attempts.get(m.id)).toBe(3);
        expect(await effects(db)).toEqual(tag(m.subject, 1));
        expect(c.stats).toMatchObject({ applied: 1, retries: 2, 'dead-lettered': 0 });
        expect(await deadLetters(db)).toEqual([]);
      },
    );

    it(
      'given retries exhausted, when an operator replays before and after the fix, then it ' +
        'fails, then applies once, audited, and a second replay does nothing',
      async () => {
        const db = await backend.open();
        let broken = true;
        const handle = recordingHandler(() => {
          if (broken) throw new Error('payment provider down');
        });
        const c = await consumer(db, handle);
        const m = stockAdjusted(crypto.randomUUID(), 1);

        expect(await c.process(m)).toBe('dead-lettered');
        const [parked] = await deadLetters(db);
        expect(parked).toMatchObject({
          message_id: m.id,
          reason: 'retries exhausted',
          error: 'payment provider down',
          attempts: 3,
        });
        const id = parked?.id ?? '';
        const tooSoon = await replayDeadLetter(db, c, id, 'alice');
        broken = false;
        const replayed = await replayDeadLetter(db, c, id, 'bob');
        const again = await replayDeadLetter(db, c, id, 'bob');

        expect(tooSoon).toEqual({ id, outcome: 'failed', detail: 'payment provider down' });
        expect(replayed).toEqual({ id, outcome: 'applied' });
        expect(again).toEqual({ id, outcome: 'duplicate', detail: 'already replayed' });
        expect(await effects(db)).toEqual(tag(m.subject, 1));
        expect(handle.attempts.get(m.id)).toBe(5);
        const [after] = await db.query<{ status: string; resolved: boolean }>(
          'SELECT status, resolved_at IS NOT NULL AS resolved FROM dead_letters WHERE id = $1',
          [id],
        );
        expect(after).toEqual({ status: 'replayed', resolved: true });
        const audit = await db.query(
          'SELECT action, actor, outcome, detail FROM dead_letter_audit WHERE dead_letter_id = $1 ORDER BY id',
          [id],
        );
        expect(audit).toEqual([
          { action: 'replay', actor: 'alice', outcome: 'failed', detail: 'payment provider down' },
          { action: 'replay', actor: 'bob', outcome: 'applied', detail: null },
        ]);
      },
    );

    it(
      'given a command parked for good, when later commands about its subject ' +
        'arrive, then they are not held behind it, and a replay still runs it',
      async () => {
        const db = await backend.open();
        let broken = true;
        const handle = recordingHandler((m) => {
          if (broken && m.sequence === 2) throw new Error('provider refuses refunds');
        });
        const name = uniqueName('c');
        const c = await startConsumer(
          {
            name,
            db,
            bus,
            log: silentLogger,
            sources: ['orchestrator'],
            handle,
            maxAttempts: 2,
            backoff: { baseMs: 5, capMs: 20 },
          },
          false,
        );
        cleanups.push(() => c.stop());
        const orderId = crypto.randomUUID();
        const refund = (sequence: number) =>
          message(
            {
              type: 'RefundPayment',
              data: { orderId, userId: 'u-1', amount: 100, currency: 'EUR', reason: 'timed out' },
            },
            'orchestrator',
            orderId,
            sequence,
          );

        // The third arrives before the second (held); the second is parked: its turn passes on.
        expect(await c.process(refund(1))).toBe('applied');
        expect(await c.process(refund(3))).toBe('held');
        expect(await c.process(refund(2))).toBe('dead-lettered');
        expect(await effects(db)).toEqual(tag(orderId, 1, 3));
        expect(await c.process(refund(4))).toBe('applied');
        expect(await effects(db)).toEqual(tag(orderId, 1, 3, 4));

        broken = false;
        const [parked] = await deadLetters(db);
        expect(await replayDeadLetter(db, c, parked?.id ?? '', 'operator')).toMatchObject({ outcome: 'applied' });
        expect(await effects(db)).toEqual(tag(orderId, 1, 3, 4, 2));
        expect(
          await db.query('SELECT last_sequence FROM consumer_positions WHERE consumer = $1 AND subject = $2', [
            name,
            orderId,
          ]),
        ).toEqual([{ last_sequence: 4 }]);
        expect(await db.query('SELECT 1 FROM held_messages WHERE consumer = $1', [name])).toHaveLength(0);
      },
    );

    it.each([
      { failing: 1, arrival: [1, 2, 3], outcomes: ['dead-lettered', 'held', 'held'] },
      { failing: 2, arrival: [2, 1, 3], outcomes: ['held', 'applied', 'held'] },
    ])(
      'given sequence $failing failing for good when its turn comes (arrival ' +
        '$arrival), when replayed after the fix, then 1, 2, 3 apply in order',
      async ({ failing, arrival, outcomes }) => {
        const db = await backend.open();
        let broken = true;
        const c = await consumer(
          db,
          recordingHandler((m) => {
            if (broken && m.sequence === failing) throw new PermanentError('bad reference', 'unknown product');
          }),
        );
        const subject = crypto.randomUUID();

        const seen = [];
        for (const sequence of arrival) seen.push(await c.process(stockAdjusted(subject, sequence)));
        expect(seen).toEqual(outcomes);
        expect(await effects(db)).toEqual(tag(subject, ...arrival.filter((n) => n < failing)));
        broken = false;
        const [parked] = await deadLetters(db);
        const result = await replayDeadLetter(db, c, parked?.id ?? '', 'operator');

        expect(result.outcome).toBe('applied');
        expect(await effects(db)).toEqual(tag(subject, 1, 2, 3));
        expect(await db.query('SELECT 1 FROM held_messages')).toHaveLength(0);
        expect(await db.query('SELECT last_sequence FROM consumer_positions WHERE subject = $1', [subject])).toEqual([
          { last_sequence: 3 },
        ]);
      },
    );

    it(
      'given two instances sharing a queue, when 200 messages on 10 subjects ' +
        'arrive shuffled and duplicated, then each applies once in order',
      async () => {
        const db = await backend.open();
        const second =
          backend.name === 'postgres' && serverUrl !== undefined
            ? await openPostgres('consumer-test-2', serverUrl)
            : db;
        if (second !== db) cleanups.push(() => second.close());
        const noisyDb = await openPglite('consumer-test-noisy-bus');
        const noisy = await createLocalBus(noisyDb, {
          pollMs: 50,
          faults: { duplicateRate: 0.2, delayRate: 0.2, maxDelayMs: 30 },
        });
        cleanups.push(async () => (await noisy.close(), await noisyDb.close()));
        const name = uniqueName('c');
        const start = (on: Db) =>
          startConsumer({
            name,
            db: on,
            bus: noisy,
            log: silentLogger,
            sources: ['inventory'],
            handle: recordingHandler(),
          });
        const instances = [await start(db), await start(second)];
        cleanups.push(async () => {
          await Promise.all(instances.map((i) => i.stop()));
        });
        const subjects = Array.from({ length: 10 }, () => crypto.randomUUID());
        const messages = subjects
          .flatMap((s) => Array.from({ length: 20 }, (_, i) => stockAdjusted(s, i + 1)))
          .sort(() => Math.random() - 0.5);

        for (let i = 0; i < messages.length; i += 25) await noisy.publish(messages.slice(i, i + 25));
        await eventually(
          async () => ((await effects(db)).length >= 200 && (await noisy.depth(name)) === 0 ? true : undefined),
          30_000,
          'all applied',
        );

        const applied = await db.query<{ subject: string; sequence: number }>(
          'SELECT subject, sequence FROM effects ORDER BY n',
        );
        expect(applied).toHaveLength(200);
        for (const subject of subjects)
          expect(applied.filter((e) => e.subject === subject).map((e) => e.sequence)).toEqual(
            Array.from({ length: 20 }, (_, i) => i + 1),
          );
        expect(instances[0]?.stats.received).toBeGreaterThan(0);
        expect(instances[1]?.stats.received).toBeGreaterThan(0);
        expect(await db.query('SELECT 1 FROM held_messages')).toHaveLength(0);
      },
    );

    it(
      'given a handler that emits an event and fails once, when it succeeds, ' +
        'then the outbox holds one event caused by the message',
      async () => {
        const db = await backend.open();
        const orderId = crypto.randomUUID();
        const paymentId = crypto.randomUUID();
        let calls = 0;
        const c = await consumer(
          db,
          async (_tx, m, context) => {
            calls += 1;
            await context.emit([
              {
                type: 'PaymentProcessed',
                subject: m.subject,
                data: { orderId, paymentId, userId: 'u-1', amount: 1250, currency: 'EUR' },
              },
            ]);
            if (calls === 1) throw new Error('lost connection');
          },
          { name: 'payment' },
        );
        const reserved = message(
          {
            type: 'InventoryReserved',
            data: {
              orderId,
              userId: 'u-1',
              items: [{ productId: crypto.randomUUID(), quantity: 2 }],
              totalAmount: 1250,
              currency: 'EUR',
            },
          },
          'inventory',
          orderId,
          1,
        );

        expect(await c.process(reserved)).toBe('applied');

        const rows = await db.query<{ envelope: Envelope }>('SELECT envelope FROM outbox ORDER BY position');
        expect(rows).toHaveLength(1);
        const emitted = rows[0]?.envelope;
        expect(emitted).toMatchObject({
          source: 'payment',
          type: 'PaymentProcessed',
          subject: orderId,
          sequence: 1,
          causationid: reserved.id,
          correlationid: reserved.correlationid,
        });
        expect(checkEnvelope(emitted).ok).toBe(true);
      },
    );

    it(
      'given a batch handler that emits, when 30 messages on 30 subjects arrive at once and ' +
        'one more alone, then each cause gets its event, appended together per batch',
      async () => {
        const db = await backend.open();
        const name = uniqueName('c');
        const seen: number[] = [];
        const handleBatch: BatchHandler = async (tx, messages, { emit }) => {
          seen.push(messages.length);
          await tx.query(
            'INSERT INTO effects (subject, sequence, message_id) SELECT s, 1, ' +
              'i FROM unnest($1::text[], $2::text[]) AS t(s, i)',
            [messages.map((m) => m.subject), messages.map((m) => m.id)],
          );
          for (const m of messages) {
            emit(m, [
              {
                type: 'StockAdjusted',
                subject: m.subject,
                data: { productId: m.subject, delta: 1, reason: 'restock', stockQuantity: 1, reserved: 0, sold: 0 },
              },
            ]);
          }
        };
        const started = await startConsumer(
          { name, db, bus, log: silentLogger, sources: ['inventory'], handleBatch },
          false,
        );
        cleanups.push(() => started.stop());
        const messages = Array.from({ length: 30 }, () => stockAdjusted(crypto.randomUUID(), 1));

        const outcomes = await Promise.all(messages.map((m) => started.process(m)));
        const alone = stockAdjusted(crypto.randomUUID(), 1);
        const last = await started.process(alone);

        expect([...new Set(outcomes), last]).toEqual(['applied', 'applied']);
        expect(seen.length).toBeLessThan(31);
        expect(seen.at(-1)).toBe(1);
        const rows = await db.query<{ envelope: Envelope }>('SELECT envelope FROM outbox ORDER BY position');
        expect(rows.map((r) => r.envelope.causationid).sort()).toEqual([...messages, alone].map((m) => m.id).sort());
        for (const { envelope } of rows) {
          const cause = [...messages, alone].find((m) => m.id === envelope.causationid);
          expect(envelope).toMatchObject({
            source: name,
            subject: cause?.subject,
            sequence: 1,
            correlationid: cause?.correlationid,
          });
        }
      },
    );
  });
});
