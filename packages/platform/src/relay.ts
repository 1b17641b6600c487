// The relay publishes what the outbox holds. Each batch runs in one transaction that
// first locks the relay partitions nobody else holds (SKIP LOCKED), then publishes that
// partition's pending rows in position order, waits for the broker's confirms and only
// then marks them published. So several relays can run (no single point of failure),
// a subject (always in one partition) is never published by two relays at once nor
// out of order, and a crash before the mark only causes a re-publish, which consumers
// drop as a duplicate. It wakes on NOTIFY from the outbox trigger and polls as a
// fallback, and backs off while the broker or the database is down. Marking a row
// published also gives it its place in the service's feed (feed.ts).
//
// An event of a type no queue is bound to is refused by the bus (UnroutableError)
// rather than confirmed into nowhere. Its row stays unpublished, and so do the later
// rows of its subject (a subject goes out in order); the rest of the batch is marked.
// The relay counts it (converge_outbox_unroutable_total), says so, and tries those
// types again with backoff, holding back their subjects' rows in the meantime so the
// other subjects flow at full speed. Once some queue binds the type, they go out.
import type { Envelope } from '@converge/contracts';
import type { Bus } from './bus.ts';
import type { Db } from './db.ts';
import { UnroutableError } from './errors.ts';
import { markPublished } from './feed.ts';
import type { Logger } from './log.ts';
import { backoffDelay } from './retry.ts';

export type RelayOptions = {
  db: Db;
  bus: Bus;
  log: Logger;
  batchSize?: number;
  pollMs?: number;
  /**
   * How long the relay waits, once woken, for more rows to join the batch (0: it reads
   * at once). A publish, its confirm and the marking cost about the same for one row as
   * for hundreds; consumers downstream get fuller batches too.
   */
  lingerMs?: number;
};

export type Relay = {
  /** Nudges the relay to look for work now. */
  wake(): void;
  stop(): Promise<void>;
  readonly published: number;
};

export type OutboxStatus = { backlog: number; oldestAgeSeconds: number; published: number };

export async function outboxStatus(db: Db): Promise<OutboxStatus> {
  const [row] = await db.query<{ backlog: number; oldest: number | null; published: number }>(
    `SELECT count(*) FILTER (WHERE published_at IS NULL)::int AS backlog,
            extract(epoch FROM now() - min(created_at) FILTER (WHERE published_at IS NULL))::float8 AS oldest,
            count(*) FILTER (WHERE published_at IS NOT NULL)::int AS published
       FROM outbox`,
  );
  return { backlog: row?.backlog ?? 0, oldestAgeSeconds: row?.oldest ?? 0, published: row?.published ?? 0 };
}

// Events refused as unroutable, per outbox database and type, each attempt counted.
const unroutableCounts = new WeakMap<Db, Map<string, number>>();

/** How many events of each type the bus refused as unroutable, for this outbox (every attempt counts). */
export function unroutableEvents(db: Db): ReadonlyMap<string, number> {
  return unroutableCounts.get(db) ?? new Map<string, number>();
}

function countUnroutable(db: Db, type: string, events: number): void {
  let counts = unroutableCounts.get(db);
  if (counts === undefined) unroutableCounts.set(db, (counts = new Map<string, number>()));
  counts.set(type, (counts.get(type) ?? 0) + events);
}

type Pending = { position: number; envelope: Envelope };

/** The rows that may be marked after a publish refused `refused`: not those, nor any later row of their subjects. */
function routable(rows: readonly Pending[], refused: ReadonlySet<string>): Pending[] {
  const held = new Set<string>();
  return rows.filter(({ envelope }) => {
    if (!refused.has(envelope.type) && !held.has(envelope.subject)) return true;
    held.add(envelope.subject);
    return false;
  });
}

/**
 * Publishes one batch; returns how many rows it published. When some types reached no
 * queue, it marks what could go and then rejects with the bus's UnroutableError.
 */
export async function relayBatch(db: Db, bus: Bus, batchSize: number): Promise<number> {
  const { published, unroutable } = await relayOnce(db, bus, batchSize, []);
  if (unroutable !== undefined) throw unroutable;
  return published;
}

/** One batch, leaving out the rows of the `holdBack` types and every later row of their subjects. */
async function relayOnce(
  db: Db,
  bus: Bus,
  batchSize: number,
  holdBack: readonly string[],
): Promise<{ published: number; unroutable: UnroutableError | undefined }> {
  const { count, marked, unroutable } = await db.transaction(async (tx) => {
    // Two statements, not one: the rows must be read with a snapshot taken after the
    // partitions are locked, or a batch another relay committed while we waited for
    // its locks would still look unpublished, and go out twice.
    const partitions = await tx.query<{ partition: number }>(
      'SELECT partition FROM outbox_partitions ORDER BY partition FOR UPDATE SKIP LOCKED',
    );
    if (partitions.length === 0) return { count: 0 };
    const locked = partitions.map((p) => p.partition);
    const rows =
      holdBack.length === 0
        ? await tx.query<Pending>(
            `SELECT position, envelope FROM outbox
              WHERE published_at IS NULL AND partition = ANY($1::smallint[])
              ORDER BY position LIMIT $2`,
            [locked, batchSize],
          )
        : await tx.query<Pending>(
            `SELECT position, envelope FROM outbox o
              WHERE published_at IS NULL AND partition = ANY($1::smallint[])
                AND NOT EXISTS (SELECT 1 FROM outbox h
                                 WHERE h.subject = o.subject AND h.position <= o.position
                                   AND h.published_at IS NULL AND h.type = ANY($3::text[]))
              ORDER BY position LIMIT $2`,
            [locked, batchSize, holdBack],
          );
    if (rows.length === 0) return { count: 0 };
    let refused: UnroutableError | undefined;
    try {
      await bus.publish(rows.map((row) => row.envelope));
    } catch (error) {
      if (!(error instanceof UnroutableError)) throw error;
      refused = error;
    }
    const going = refused === undefined ? rows : routable(rows, new Set(refused.types));
    if (refused !== undefined)
      for (const type of refused.types) countUnroutable(db, type, rows.filter((r) => r.envelope.type === type).length);
    // Left in flight: the marking goes out with the COMMIT, one round trip for both.
    return {
      count: going.length,
      marked: markPublished(
        tx,
        going.map((r) => r.position),
      ),
      unroutable: refused,
    };
  });
  await marked;
  return { published: count, unroutable };
}

export async function startRelay({
  db,
  bus,
  log,
  batchSize = 500,
  pollMs = 1000,
  lingerMs = 0,
}: RelayOptions): Promise<Relay> {
  let running = true;
  let published = 0;
  let wakeUp: (() => void) | undefined;
  let pending = true;
  // When the first nudge since the last read came: rows linger at most lingerMs from then.
  let wokenAt = performance.now();
  const woken = () => pending;
  const wake = () => {
    if (!pending) wokenAt = performance.now();
    pending = true;
    wakeUp?.();
  };
  const stopListening = await db.listen('outbox', wake);

  // A wait that a NOTIFY does not cut short (stop does): rows that arrive meanwhile join the batch.
  let lingering: { timer: NodeJS.Timeout; done: () => void } | undefined;
  const linger = (ms: number) =>
    new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        lingering = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      lingering = { timer, done };
    });

  const idle = (ms: number) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        wakeUp = undefined;
        resolve();
      }
      wakeUp = done;
    });

  const loop = (async () => {
    let failures = 0;
    // Types the bus refused as unroutable: held back until `retryAt`, then tried again.
    let refused: { types: string[]; attempts: number; retryAt: number } | undefined;
    while (running) {
      try {
        pending = false;
        const retrying = refused !== undefined && Date.now() >= refused.retryAt;
        const holdBack = refused === undefined || retrying ? [] : refused.types;
        const { published: count, unroutable } = await relayOnce(db, bus, batchSize, holdBack);
        published += count;
        if (failures > 0) log.info('relay recovered', { db: db.name, after: failures });
        failures = 0;
        if (unroutable !== undefined) {
          const attempts = (refused?.attempts ?? 0) + 1;
          const types = [...new Set([...holdBack, ...unroutable.types])];
          refused = { types, attempts, retryAt: Date.now() + backoffDelay(attempts, { baseMs: 100, capMs: 5000 }) };
          if (attempts === 1 || attempts % 20 === 0) {
            for (const type of unroutable.types) {
              log.error('no queue is bound to this type: its events stay in the outbox until one is', {
                db: db.name,
                type,
                routingKey: type,
                attempts,
              });
            }
          }
          continue; // the other subjects go on at once
        }
        if (retrying && refused !== undefined) {
          log.info('unroutable events went out after all', { db: db.name, types: refused.types });
          refused = undefined;
        }
        if (count === batchSize) continue;
        if (!woken())
          await idle(refused === undefined ? pollMs : Math.max(0, Math.min(pollMs, refused.retryAt - Date.now())));
        const left = wokenAt + lingerMs - performance.now();
        if (left > 0 && woken()) await linger(left);
      } catch (error) {
        failures += 1;
        const delay = backoffDelay(failures, { baseMs: 100, capMs: 5000 });
        if (failures === 1 || failures % 20 === 0) {
          log.warn('relay batch failed; retrying', {
            db: db.name,
            failures,
            delayMs: delay,
            error: (error as Error).message,
          });
        }
        await idle(delay);
      }
    }
  })();

  return {
    wake,
    get published() {
      return published;
    },
    stop: async () => {
      running = false;
      wakeUp?.();
      lingering?.done();
      await loop;
      await stopListening();
    },
  };
}
