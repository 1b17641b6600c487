// The relay publishes what the outbox holds. Each batch runs in one transaction that
// first locks the relay partitions nobody else holds (SKIP LOCKED), then publishes that
// partition's pending rows in position order, waits for the broker's confirms and only
// then marks them published. So several relays can run (no single point of failure),
// a subject (always in one partition) is never published by two relays at once nor
// out of order, and a crash before the mark only causes a re-publish, which consumers
// drop as a duplicate. It wakes on NOTIFY from the outbox trigger and polls as a
// fallback, and backs off while the broker or the database is down. Marking a row
// published also gives it its place in the service's feed (feed.ts).
import type { Envelope } from '@converge/contracts';
import type { Bus } from './bus.ts';
import type { Db } from './db.ts';
import { markPublished } from './feed.ts';
import type { Logger } from './log.ts';
import { backoffDelay } from './retry.ts';

export type RelayOptions = {
  db: Db;
  bus: Bus;
  log: Logger;
  batchSize?: number;
  pollMs?: number;
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

/** Publishes one batch; returns how many rows it published. */
export async function relayBatch(db: Db, bus: Bus, batchSize: number): Promise<number> {
  const { count, marked } = await db.transaction(async (tx) => {
    // Two statements, not one: the rows must be read with a snapshot taken after the
    // partitions are locked, or a batch another relay committed while we waited for
    // its locks would still look unpublished, and go out twice.
    const partitions = await tx.query<{ partition: number }>(
      'SELECT partition FROM outbox_partitions ORDER BY partition FOR UPDATE SKIP LOCKED',
    );
    if (partitions.length === 0) return { count: 0 };
    const rows = await tx.query<{ position: number; envelope: Envelope }>(
      `SELECT position, envelope FROM outbox
        WHERE published_at IS NULL AND partition = ANY($1::smallint[])
        ORDER BY position LIMIT $2`,
      [partitions.map((p) => p.partition), batchSize],
    );
    if (rows.length === 0) return { count: 0 };
    await bus.publish(rows.map((row) => row.envelope));
    // Left in flight: the marking goes out with the COMMIT, one round trip for both.
    return {
      count: rows.length,
      marked: markPublished(
        tx,
        rows.map((r) => r.position),
      ),
    };
  });
  await marked;
  return count;
}

export async function startRelay({ db, bus, log, batchSize = 500, pollMs = 1000 }: RelayOptions): Promise<Relay> {
  let running = true;
  let published = 0;
  let wakeUp: (() => void) | undefined;
  let pending = true;
  const woken = () => pending;
  const wake = () => {
    pending = true;
    wakeUp?.();
  };
  const stopListening = await db.listen('outbox', wake);

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
    while (running) {
      try {
        pending = false;
        const count = await relayBatch(db, bus, batchSize);
        published += count;
        if (failures > 0) log.info('relay recovered', { db: db.name, after: failures });
        failures = 0;
        if (count === batchSize || woken()) continue;
        await idle(pollMs);
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
      await loop;
      await stopListening();
    },
  };
}
