// The idempotent consumer. For each event of a delivery (one, or a batch):
//   validate the envelope and payload (invalid → dead letter at once, never a crash)
//   → one transaction: inbox row (a duplicate stops here), the subject's position
//     (stale → ignore, early → hold), the handler's effect and the events it emits
//   → ack only after commit.
// Transient failures retry with exponential backoff and jitter while the message stays
// unacked; after `maxAttempts`, or at once for a PermanentError, the message is parked
// in dead_letters with its reason and acked, so it never blocks other subjects. A
// failure while the consumer's own database is out of reach (a restart) is not the
// message's fault: it retries without counting attempts, so nothing is parked for it.
// Messages about one subject (from any source) are handled one at a time, in arrival
// order; messages about different subjects share transactions (consumer-batch.ts).
// Commands (an orchestrator telling this service to do a step) are idempotent and
// safe in any order, and the saga retries them when no reply comes: so a parked
// command does not hold back the later commands about its subject, and an operator's
// replay of one runs it even after later ones took effect.
import {
  boundTypes,
  checkEnvelope,
  isCommandType,
  previousSequence,
  type DomainEvent,
  type Envelope,
} from '@converge/contracts';
import { eventsOf, type Bus, type Delivery, type Subscription } from './bus.ts';
import type { Db, Sql } from './db.ts';
import { PermanentError } from './errors.ts';
import type { Logger } from './log.ts';
import { applyBatch, holdMessage, runBatchHandler, runHandler } from './consumer-batch.ts';
import type { Outgoing } from './outbox.ts';
import { backoffDelay, sleep, type Backoff } from './retry.ts';

export type Message = Envelope & DomainEvent;

export type HandlerContext = {
  now: Date;
  /** Appends events caused by this message to the outbox, in the same transaction. */
  emit: (events: readonly Outgoing[]) => Promise<void>;
};

export type Handler = (tx: Sql, message: Message, context: HandlerContext) => Promise<void>;

export type BatchContext = {
  now: Date;
  /**
   * Events caused by `cause` (one of the batch's messages), appended to the outbox after
   * the handler returns, with every other message's, in one statement. With
   * `expectedVersion` (event-sourced streams) a concurrent writer fails the batch.
   */
  emit: (cause: Message, events: readonly Outgoing[], expectedVersion?: number) => void;
};

/**
 * Applies the messages of a batch that are due, in order, in one go: it loads what they
 * touch in one statement per table, decides message by message in memory and writes
 * back in one statement per table. It must have the effect of `handle` on each message
 * in turn; without `handle`, a message applied alone is a batch of one.
 */
export type BatchHandler = (tx: Sql, messages: readonly Message[], context: BatchContext) => Promise<void>;

export type ConsumerOptions = {
  /** The consuming service; also its queue and the inbox's consumer name. */
  name: string;
  db: Db;
  bus: Bus;
  log: Logger;
  /**
   * The sources it listens to. It binds the types of theirs it handles (boundTypes in
   * contracts' subscriptions.ts) and tells a lost event from an unbound one by the
   * previous sequence each event carries for it.
   */
  sources: readonly string[];
  /** Applies one message; a consumer has this, handleBatch, or both. */
  handle?: Handler;
  /** Applies a batch's due messages at once (see BatchHandler); without it, `handle` runs per message. */
  handleBatch?: BatchHandler;
  maxAttempts?: number;
  backoff?: Backoff;
  prefetch?: number;
  /** At most this many messages share one transaction (1 turns batching off). */
  batchSize?: number;
  /**
   * Batches in flight at once. One by default: handlers lock rows in their own order
   * (the products of an order), so two batches of one process could deadlock; one
   * batch at a time cannot, and while it runs the next one grows.
   */
  concurrency?: number;
  /**
   * How long the first message waiting for a batch may wait for others to join it (0:
   * a batch starts as soon as one is free). A batch's round trips and commit cost the
   * same for one message as for fifty, so a short wait makes each message cheaper.
   */
  lingerMs?: number;
  now?: () => Date;
};

export type Outcome = 'applied' | 'duplicate' | 'stale' | 'held' | 'skipped' | 'dead-lettered';

/** What applying one message did, and whether the subject's next message is already held. */
export type Applied = { outcome: Outcome; more: boolean };

export type ConsumerStats = Record<Outcome | 'retries' | 'received' | 'batches' | 'fallbacks', number>;

export type Consumer = {
  readonly name: string;
  /** The event types it binds (and handles). */
  readonly types: readonly string[];
  readonly stats: ConsumerStats;
  /** Handles one message body as if delivered by the bus (tests, replay). */
  process(body: unknown, messageId?: string): Promise<Outcome>;
  /** Applies one parked message again; resolves to the outcome or rejects with the error. */
  applyOnce(message: Message): Promise<Outcome>;
  /** Applies held messages whose turn has come (after a gap was closed out of band). */
  sweepHeld(): Promise<number>;
  stop(): Promise<void>;
};

function missing(what: string): never {
  throw new Error(what);
}

export async function startConsumer(options: ConsumerOptions, subscribe = true): Promise<Consumer> {
  const { name, db, bus, log, handle, handleBatch } = options;
  const batchWith: Handler | { batch: BatchHandler } =
    handleBatch !== undefined
      ? { batch: handleBatch }
      : (handle ?? missing(`consumer ${name} needs handle or handleBatch`));
  const maxAttempts = options.maxAttempts ?? 5;
  const batchSize = options.batchSize ?? 64;
  const concurrency = options.concurrency ?? 1;
  const lingerMs = options.lingerMs ?? 0;
  const backoff = options.backoff ?? { baseMs: 50, capMs: 2000 };
  const now = options.now ?? (() => new Date());
  const stats: ConsumerStats = {
    received: 0,
    applied: 0,
    duplicate: 0,
    stale: 0,
    held: 0,
    skipped: 0,
    'dead-lettered': 0,
    retries: 0,
    batches: 0,
    fallbacks: 0,
  };
  const lanes = new Map<string, Promise<unknown>>();
  let stopped = false;
  const types = boundTypes(name, options.sources);
  const bound = new Set<string>(types);

  // One transaction: the effect of one message, or nothing.
  // Round trips are what a message costs, so the bookkeeping is one statement: the inbox
  // row (a duplicate stops here), then a lock on the entity, so that messages about one
  // entity from different sources (a cancellation and a reservation of the same order)
  // never interleave, in this process or another, then the subject's position, created
  // on first sight and row-locked either way. `pos` reads from `entity`, so the lock is
  // always taken before the position row. A replay (an operator's dead-letter replay)
  // may find its inbox row already written when the message was held before it failed;
  // the position alone then decides.
  async function apply(message: Message, fromHold: boolean, replay = false): Promise<Applied> {
    const step = await db.transaction(async (tx): Promise<Applied | InFlight> => {
      const key = [name, message.source, message.subject];
      const [claim] = await tx.query<{ last: number | null }>(
        `WITH fresh AS (
           INSERT INTO inbox (consumer, message_id, type) SELECT $1, $4, $5 WHERE NOT $6
           ON CONFLICT DO NOTHING RETURNING 1
         ), entity AS (
           SELECT pg_advisory_xact_lock(hashtextextended($1 || ':' || $3, 0)) AS locked
            WHERE $6 OR $7 OR EXISTS (SELECT 1 FROM fresh)
         ), pos AS (
           INSERT INTO consumer_positions (consumer, source, subject, last_sequence)
           SELECT $1, $2, $3, 0 FROM entity
           ON CONFLICT (consumer, source, subject) DO UPDATE SET last_sequence = consumer_positions.last_sequence
           RETURNING last_sequence
         )
         SELECT (SELECT last_sequence FROM pos) AS last`,
        [...key, message.id, message.type, fromHold, replay],
      );
      if (claim?.last === null || claim?.last === undefined) return { outcome: 'duplicate', more: false };
      const last = claim.last;
      const rerun = replay && isCommandType(message.type);
      if (message.sequence <= last && !rerun) {
        if (fromHold)
          await tx.query(
            'DELETE FROM held_messages WHERE consumer = $1 AND source = $2 AND subject = $3 AND sequence = $4',
            [...key, message.sequence],
          );
        return { outcome: 'stale', more: false };
      }
      if (previousSequence(name, message) > last && !rerun) {
        await holdMessage(tx, name, message);
        return { outcome: 'held', more: false };
      }
      let appended: Promise<unknown> | undefined;
      if (handle !== undefined) await runHandler(tx, name, handle, message, now());
      else if (handleBatch !== undefined)
        ({ appended } = await runBatchHandler(tx, name, handleBatch, [message], now()));
      // Advances the position, clears this message from the hold if it came from there,
      // and says whether the next one is already waiting: one statement, left in flight
      // with the append before it, so both go out with the COMMIT.
      const advancing = tx.query<{ more: boolean }>(
        `WITH unheld AS (
           DELETE FROM held_messages WHERE $5 AND consumer = $1 AND source = $2 AND subject = $3 AND sequence = $4
         )
         UPDATE consumer_positions SET last_sequence = greatest(last_sequence, $4), updated_at = now()
          WHERE consumer = $1 AND source = $2 AND subject = $3
         RETURNING EXISTS (SELECT 1 FROM held_messages
                            WHERE consumer = $1 AND source = $2 AND subject = $3
                              AND sequence > $4 AND after_sequence <= $4) AS more`,
        [...key, message.sequence, fromHold],
      );
      return { advancing, appended };
    });
    if (!('advancing' in step)) return step;
    await step.appended;
    const [advanced] = await step.advancing;
    return { outcome: 'applied', more: advanced?.more ?? false };
  }

  async function deadLetter(
    body: unknown,
    messageId: string | undefined,
    reason: string,
    error: string,
    attempts: number,
  ) {
    const envelope = typeof body === 'object' && body !== null ? (body as Partial<Record<string, unknown>>) : {};
    const text = typeof body === 'string' ? body : JSON.stringify(body);
    const id = typeof envelope.id === 'string' ? envelope.id : messageId;
    await db.query(
      `INSERT INTO dead_letters (id, consumer, message_id, type, subject, body, reason, error, attempts)
       VALUES (gen_random_uuid(), $1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING`,
      [
        name,
        id ?? null,
        typeof envelope.type === 'string' ? envelope.type : null,
        typeof envelope.subject === 'string' ? envelope.subject : null,
        text,
        reason,
        error.slice(0, 2000),
        attempts,
      ],
    );
    stats['dead-lettered'] += 1;
    log.warn('message dead-lettered', { consumer: name, messageId: id, reason, error });
  }

  const databaseDown = () =>
    db.query('SELECT 1').then(
      () => false,
      () => true,
    );

  // Applies with retries; parks the message when it can never succeed or retries run out.
  async function applyWithRetry(message: Message, fromHold: boolean): Promise<Applied> {
    let attempt = 0;
    let outage = 0;
    for (;;) {
      try {
        return await apply(message, fromHold);
      } catch (error) {
        const permanent = error instanceof PermanentError;
        if (!permanent && !stopped && (await databaseDown())) {
          outage += 1;
          stats.retries += 1;
          if (outage === 1 || outage % 20 === 0)
            log.warn('database unreachable; retrying', {
              consumer: name,
              messageId: message.id,
              error: (error as Error).message,
            });
          await sleep(backoffDelay(outage, backoff));
          continue;
        }
        attempt += 1;
        if (permanent || attempt >= maxAttempts || stopped) {
          if (stopped && !permanent) throw error;
          await deadLetter(
            message,
            message.id,
            permanent ? error.reason : 'retries exhausted',
            (error as Error).message,
            attempt,
          );
          if (isCommandType(message.type)) return { outcome: 'dead-lettered', more: await passParkedCommand(message) };
          if (fromHold) {
            await db.query(
              'DELETE FROM held_messages WHERE consumer = $1 AND source = $2 AND subject = $3 AND sequence = $4',
              [name, message.source, message.subject, message.sequence],
            );
          }
          return { outcome: 'dead-lettered', more: false };
        }
        stats.retries += 1;
        await sleep(backoffDelay(attempt, backoff));
      }
    }
  }

  // A parked command gives its turn to the next one: the position moves past it (it was
  // its turn, or it would have been held, not run), and the next may be waiting.
  async function passParkedCommand(message: Message): Promise<boolean> {
    const [passed] = await db.query<{ more: boolean }>(
      `WITH unheld AS (
         DELETE FROM held_messages WHERE consumer = $1 AND source = $2 AND subject = $3 AND sequence = $4
       ), moved AS (
         UPDATE consumer_positions SET last_sequence = $4, updated_at = now()
          WHERE consumer = $1 AND source = $2 AND subject = $3 AND last_sequence >= $5 AND last_sequence < $4
         RETURNING 1
       ), created AS (
         INSERT INTO consumer_positions (consumer, source, subject, last_sequence) SELECT $1, $2, $3, $4 WHERE $5 = 0
         ON CONFLICT DO NOTHING RETURNING 1
       )
       SELECT (EXISTS (SELECT 1 FROM moved) OR EXISTS (SELECT 1 FROM created))
          AND EXISTS (SELECT 1 FROM held_messages
                       WHERE consumer = $1 AND source = $2 AND subject = $3
                         AND sequence > $4 AND after_sequence <= $4) AS more`,
      [name, message.source, message.subject, message.sequence, previousSequence(name, message)],
    );
    return passed?.more ?? false;
  }

  // After sequence n took effect, the message whose predecessor is n may be waiting in
  // the hold (a stale one found on the way is cleared by apply).
  async function drainHeld(source: string, subject: string): Promise<void> {
    for (;;) {
      const [next] = await db.query<{ envelope: Message }>(
        `SELECT h.envelope FROM held_messages h JOIN consumer_positions p USING (consumer, source, subject)
          WHERE h.consumer = $1 AND h.source = $2 AND h.subject = $3 AND h.after_sequence <= p.last_sequence
          ORDER BY h.sequence LIMIT 1`,
        [name, source, subject],
      );
      if (next === undefined) return;
      const { outcome, more } = await applyWithRetry(next.envelope, true);
      count(outcome);
      if (!more) return;
    }
  }

  /** An applied message whose last statements went out with the COMMIT. */
  type InFlight = { advancing: Promise<{ more: boolean }[]>; appended: Promise<unknown> | undefined };

  function count(outcome: Outcome) {
    if (outcome !== 'dead-lettered') stats[outcome] += 1;
  }

  // Deliveries wait here until a batch takes them. A batch takes, in arrival order, at
  // most one message per subject and none whose subject is busy (in a batch, a drain of
  // the hold or a sweep), so one subject's messages still apply one at a time, in order.
  type Waiting = {
    message: Message;
    at: number;
    resolve: (outcome: Outcome) => void;
    reject: (error: unknown) => void;
  };
  const waiting: Waiting[] = [];
  let batchesInFlight = 0;
  // A batch waits for more until its first message has lingered `lingerMs` or it is full.
  let lingering: NodeJS.Timeout | undefined;
  function lingers(): boolean {
    const first = waiting[0];
    if (lingerMs <= 0 || first === undefined || waiting.length >= batchSize || stopped) return false;
    const left = first.at + lingerMs - performance.now();
    if (left <= 0) return false;
    lingering ??= setTimeout(() => {
      lingering = undefined;
      pump();
    }, left);
    return true;
  }

  function occupy(subjects: Iterable<string>, run: Promise<unknown>) {
    const settled = run.catch(() => undefined);
    for (const subject of subjects) lanes.set(subject, settled);
    void settled.then(() => {
      for (const subject of subjects) if (lanes.get(subject) === settled) lanes.delete(subject);
      pump();
    });
  }

  function pump() {
    while (batchesInFlight < concurrency && waiting.length > 0 && !lingers()) {
      const batch: Waiting[] = [];
      const subjects = new Set<string>();
      const passed = new Set<string>();
      for (let k = 0; k < waiting.length && batch.length < batchSize;) {
        const item = waiting[k];
        if (item === undefined) break;
        const subject = item.message.subject;
        if (lanes.has(subject) || subjects.has(subject) || passed.has(subject)) {
          passed.add(subject);
          k += 1;
          continue;
        }
        subjects.add(subject);
        batch.push(item);
        waiting.splice(k, 1);
      }
      if (batch.length === 0) return;
      batchesInFlight += 1;
      stats.batches += 1;
      const run = runBatch(batch).finally(() => {
        batchesInFlight -= 1;
      });
      occupy(subjects, run);
    }
  }

  async function runBatch(batch: Waiting[]): Promise<void> {
    let results: Applied[] | undefined;
    if (batch.length > 1 && !stopped) {
      try {
        results = await applyBatch(
          db,
          name,
          batch.map((item) => item.message),
          batchWith,
          now(),
        );
      } catch {
        // Rolled back whole; below, each message is applied alone, and the one at fault
        // is retried, logged and parked on its own.
        stats.fallbacks += 1;
      }
    }
    await Promise.all(
      batch.map(async (item, k) => {
        try {
          const { outcome, more } = results?.[k] ?? (await applyWithRetry(item.message, false));
          count(outcome);
          if (more) await drainHeld(item.message.source, item.message.subject);
          item.resolve(outcome);
        } catch (error) {
          item.reject(error);
        }
      }),
    );
  }

  async function processBody(body: unknown, messageId?: string): Promise<Outcome> {
    stats.received += 1;
    const checked = checkEnvelope(body);
    if (!checked.ok) {
      await deadLetter(body, messageId, 'invalid message', checked.errors.join('; '), 1);
      return 'dead-lettered';
    }
    const message = checked.value;
    // Only a binding left from an older topology delivers a type this consumer does not
    // handle; it has no place in the consumer's sequence, so it is acked and left alone.
    if (!bound.has(message.type)) {
      stats.skipped += 1;
      return 'skipped';
    }
    return new Promise<Outcome>((resolve, reject) => {
      waiting.push({ message, at: performance.now(), resolve, reject });
      pump();
    });
  }

  // A batch delivery is acked when every event in it has been applied, skipped or parked
  // (each on its own: a bad one is dead-lettered alone); if any could not even be parked,
  // the whole batch comes back and the inbox turns the rest into duplicates.
  async function onDelivery(delivery: Delivery) {
    try {
      const events = eventsOf(delivery);
      const settled = await Promise.allSettled(
        events.map((body) => processBody(body, events.length === 1 ? delivery.messageId : undefined)),
      );
      const failed = settled.find((result) => result.status === 'rejected');
      if (failed !== undefined) throw failed.reason;
      await delivery.ack();
    } catch (error) {
      // Only reached when even parking failed (database down): leave it to the broker.
      log.error('message could not be handled or parked; returning it to the queue', {
        consumer: name,
        error: (error as Error).message,
      });
      await delivery.nack(1000);
    }
  }

  let subscription: Subscription | undefined;
  if (subscribe) subscription = await bus.subscribe(name, types, onDelivery, { prefetch: options.prefetch ?? 256 });

  const sweeper = setInterval(() => {
    void sweepHeld().catch(() => undefined);
  }, 5000);
  sweeper.unref();

  async function sweepHeld(): Promise<number> {
    const ready = await db.query<{ source: string; subject: string }>(
      `SELECT DISTINCT h.source, h.subject
         FROM held_messages h JOIN consumer_positions p USING (consumer, source, subject)
        WHERE h.consumer = $1 AND h.after_sequence <= p.last_sequence`,
      [name],
    );
    for (const { source, subject } of ready) {
      const run = (lanes.get(subject) ?? Promise.resolve()).then(() => drainHeld(source, subject));
      occupy([subject], run);
      await run;
    }
    return ready.length;
  }

  return {
    name,
    types,
    stats,
    process: processBody,
    applyOnce: async (message) => {
      if (!bound.has(message.type)) return 'skipped';
      const { outcome, more } = await apply(message, false, true);
      count(outcome);
      if (more) await drainHeld(message.source, message.subject);
      return outcome;
    },
    sweepHeld,
    stop: async () => {
      stopped = true;
      clearInterval(sweeper);
      clearTimeout(lingering);
      lingering = undefined;
      await subscription?.close();
      // What was handed to us is still applied (or fails, and the broker has it again).
      while (waiting.length > 0 || lanes.size > 0) {
        pump();
        await Promise.allSettled([...lanes.values()]);
      }
    },
  };
}
