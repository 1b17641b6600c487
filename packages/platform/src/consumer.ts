// The idempotent consumer. For each delivery:
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
// order; different subjects run concurrently up to the bus prefetch.
import { checkEnvelope, eventTypesOf, type DomainEvent, type Envelope } from '@converge/contracts';
import type { Bus, Delivery, Subscription } from './bus.ts';
import type { Db, Sql } from './db.ts';
import { PermanentError } from './errors.ts';
import type { Logger } from './log.ts';
import { appendToOutbox, type Outgoing } from './outbox.ts';
import { backoffDelay, sleep, type Backoff } from './retry.ts';

export type Message = Envelope & DomainEvent;

export type HandlerContext = {
  now: Date;
  /** Appends events caused by this message to the outbox, in the same transaction. */
  emit: (events: readonly Outgoing[]) => Promise<void>;
};

export type Handler = (tx: Sql, message: Message, context: HandlerContext) => Promise<void>;

export type ConsumerOptions = {
  /** The consuming service; also its queue and the inbox's consumer name. */
  name: string;
  db: Db;
  bus: Bus;
  log: Logger;
  /** Every event type of these sources is bound, so per-subject sequences have no holes. */
  sources: readonly string[];
  handle: Handler;
  maxAttempts?: number;
  backoff?: Backoff;
  prefetch?: number;
  now?: () => Date;
};

export type Outcome = 'applied' | 'duplicate' | 'stale' | 'held' | 'dead-lettered';

export type ConsumerStats = Record<Outcome | 'retries' | 'received', number>;

export type Consumer = {
  readonly name: string;
  readonly stats: ConsumerStats;
  /** Handles one message body as if delivered by the bus (tests, replay). */
  process(body: unknown, messageId?: string): Promise<Outcome>;
  /** Applies one parked message again; resolves to the outcome or rejects with the error. */
  applyOnce(message: Message): Promise<Outcome>;
  /** Applies held messages whose turn has come (after a gap was closed out of band). */
  sweepHeld(): Promise<number>;
  stop(): Promise<void>;
};

export async function startConsumer(options: ConsumerOptions, subscribe = true): Promise<Consumer> {
  const { name, db, bus, log, handle } = options;
  const maxAttempts = options.maxAttempts ?? 5;
  const backoff = options.backoff ?? { baseMs: 50, capMs: 2000 };
  const now = options.now ?? (() => new Date());
  const stats: ConsumerStats = { received: 0, applied: 0, duplicate: 0, stale: 0, held: 0, 'dead-lettered': 0, retries: 0 };
  const lanes = new Map<string, Promise<unknown>>();
  let stopped = false;

  // One transaction: the effect of one message, or nothing.
  // `replay` (an operator's dead-letter replay) may find its inbox row already written
  // when the message was held before it failed; the position alone then decides.
  async function apply(message: Message, fromHold: boolean, replay = false): Promise<Outcome> {
    return db.transaction(async (tx) => {
      if (!fromHold) {
        const fresh = await tx.query(
          'INSERT INTO inbox (consumer, message_id, type) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING 1',
          [name, message.id, message.type],
        );
        if (fresh.length === 0 && !replay) return 'duplicate';
      }
      // Messages about one entity from different sources (a cancellation and a
      // reservation of the same order) must not interleave, in this process or another.
      await tx.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [`${name}:${message.subject}`]);
      const key = [name, message.source, message.subject];
      // Creates the position on first sight and locks it either way, in one statement.
      const [position] = await tx.query<{ last_sequence: number }>(
        `INSERT INTO consumer_positions (consumer, source, subject, last_sequence) VALUES ($1, $2, $3, 0)
         ON CONFLICT (consumer, source, subject) DO UPDATE SET last_sequence = consumer_positions.last_sequence
         RETURNING last_sequence`,
        key,
      );
      const last = position?.last_sequence ?? 0;
      if (message.sequence <= last) {
        if (fromHold) await tx.query('DELETE FROM held_messages WHERE consumer = $1 AND source = $2 AND subject = $3 AND sequence = $4', [...key, message.sequence]);
        return 'stale';
      }
      if (message.sequence > last + 1) {
        await tx.query(
          'INSERT INTO held_messages (consumer, source, subject, sequence, envelope) VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT DO NOTHING',
          [...key, message.sequence, JSON.stringify(message)],
        );
        return 'held';
      }
      const at = now();
      await handle(tx, message, {
        now: at,
        emit: async (events) => {
          await appendToOutbox(tx, { source: name, now: at, correlationId: message.correlationid, causationId: message.id, ...(message.traceparent === undefined ? {} : { traceparent: message.traceparent }) }, events);
        },
      });
      await tx.query(
        'UPDATE consumer_positions SET last_sequence = $4, updated_at = now() WHERE consumer = $1 AND source = $2 AND subject = $3',
        [...key, message.sequence],
      );
      if (fromHold) {
        await tx.query('DELETE FROM held_messages WHERE consumer = $1 AND source = $2 AND subject = $3 AND sequence = $4', [...key, message.sequence]);
      }
      return 'applied';
    });
  }

  async function deadLetter(body: unknown, messageId: string | undefined, reason: string, error: string, attempts: number) {
    const envelope = typeof body === 'object' && body !== null ? (body as Partial<Record<string, unknown>>) : {};
    const text = typeof body === 'string' ? body : JSON.stringify(body);
    const id = typeof envelope.id === 'string' ? envelope.id : messageId;
    await db.query(
      `INSERT INTO dead_letters (id, consumer, message_id, type, subject, body, reason, error, attempts)
       VALUES (gen_random_uuid(), $1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING`,
      [name, id ?? null, typeof envelope.type === 'string' ? envelope.type : null, typeof envelope.subject === 'string' ? envelope.subject : null, text, reason, error.slice(0, 2000), attempts],
    );
    stats['dead-lettered'] += 1;
    log.warn('message dead-lettered', { consumer: name, messageId: id, reason, error });
  }

  const databaseDown = () => db.query('SELECT 1').then(() => false, () => true);

  // Applies with retries; parks the message when it can never succeed or retries run out.
  async function applyWithRetry(message: Message, fromHold: boolean): Promise<Outcome> {
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
          if (outage === 1 || outage % 20 === 0) log.warn('database unreachable; retrying', { consumer: name, messageId: message.id, error: (error as Error).message });
          await sleep(backoffDelay(outage, backoff));
          continue;
        }
        attempt += 1;
        if (permanent || attempt >= maxAttempts || stopped) {
          if (stopped && !permanent) throw error;
          await deadLetter(message, message.id, permanent ? error.reason : 'retries exhausted', (error as Error).message, attempt);
          if (fromHold) {
            await db.query('DELETE FROM held_messages WHERE consumer = $1 AND source = $2 AND subject = $3 AND sequence = $4', [name, message.source, message.subject, message.sequence]);
          }
          return 'dead-lettered';
        }
        stats.retries += 1;
        await sleep(backoffDelay(attempt, backoff));
      }
    }
  }

  // After sequence n took effect, n+1 may be waiting in the hold.
  async function drainHeld(source: string, subject: string): Promise<void> {
    for (;;) {
      const [next] = await db.query<{ envelope: Message }>(
        `SELECT h.envelope FROM held_messages h JOIN consumer_positions p USING (consumer, source, subject)
          WHERE h.consumer = $1 AND h.source = $2 AND h.subject = $3 AND h.sequence = p.last_sequence + 1`,
        [name, source, subject],
      );
      if (next === undefined) return;
      const outcome = await applyWithRetry(next.envelope, true);
      count(outcome);
      if (outcome !== 'applied') return;
    }
  }

  function count(outcome: Outcome) {
    if (outcome !== 'dead-lettered') stats[outcome] += 1;
  }

  async function processBody(body: unknown, messageId?: string): Promise<Outcome> {
    stats.received += 1;
    const checked = checkEnvelope(body);
    if (!checked.ok) {
      await deadLetter(body, messageId, 'invalid message', checked.errors.join('; '), 1);
      return 'dead-lettered';
    }
    const message = checked.value;
    const lane = message.subject;
    const previous = lanes.get(lane) ?? Promise.resolve();
    const run = previous.then(async () => {
      const outcome = await applyWithRetry(message, false);
      count(outcome);
      if (outcome === 'applied') await drainHeld(message.source, message.subject);
      return outcome;
    });
    const settled = run.catch(() => undefined);
    lanes.set(lane, settled);
    void settled.then(() => {
      if (lanes.get(lane) === settled) lanes.delete(lane);
    });
    return run;
  }

  async function onDelivery(delivery: Delivery) {
    try {
      await processBody(delivery.body, delivery.messageId);
      await delivery.ack();
    } catch (error) {
      // Only reached when even parking failed (database down): leave it to the broker.
      log.error('message could not be handled or parked; returning it to the queue', { consumer: name, error: (error as Error).message });
      await delivery.nack(1000);
    }
  }

  const types = options.sources.flatMap((source) => eventTypesOf(source));
  let subscription: Subscription | undefined;
  if (subscribe) subscription = await bus.subscribe(name, types, onDelivery, { prefetch: options.prefetch ?? 256 });

  const sweeper = setInterval(() => {
    void sweepHeld().catch(() => undefined);
  }, 5000);
  sweeper.unref();

  async function sweepHeld(): Promise<number> {
    const ready = await db.query<{ source: string; subject: string }>(
      `SELECT DISTINCT h.source, h.subject FROM held_messages h JOIN consumer_positions p USING (consumer, source, subject)
        WHERE h.consumer = $1 AND h.sequence = p.last_sequence + 1`,
      [name],
    );
    for (const { source, subject } of ready) {
      const lane = subject;
      const run = (lanes.get(lane) ?? Promise.resolve()).then(() => drainHeld(source, subject));
      lanes.set(lane, run.catch(() => undefined));
      await run;
    }
    return ready.length;
  }

  return {
    name,
    stats,
    process: processBody,
    applyOnce: async (message) => {
      const outcome = await apply(message, false, true);
      count(outcome);
      if (outcome === 'applied') await drainHeld(message.source, message.subject);
      return outcome;
    },
    sweepHeld,
    stop: async () => {
      stopped = true;
      clearInterval(sweeper);
      await subscription?.close();
      await Promise.allSettled([...lanes.values()]);
    },
  };
}
