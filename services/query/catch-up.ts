// Catching up from the feeds, without the broker. The broker can lose the query
// service's queue (deleted, purged, a broker rebuilt): the events in it never arrive.
// The consumer notices by sequence — a later event of the same stream arrives and is
// held for its missing predecessor — and the query service then reads each source's
// feed from its checkpoint and hands every event to the consumer, whose inbox skips
// what it applied already and whose per-subject order applies the rest, draining what
// was held. The same runs at start-up (a queue may have been lost while the service
// was down) and on demand (POST /projections/catch-up).
import type { Consumer, Db, Logger, Outcome } from '@converge/platform';
import type { FeedSource } from './feeds.ts';

export type CaughtUp = { read: number } & Partial<Record<Outcome, number>>;

export async function catchUp(db: Db, consumer: Consumer, feeds: readonly FeedSource[]): Promise<CaughtUp> {
  const result: CaughtUp = { read: 0 };
  for (const feed of feeds) {
    const [checkpoint] = await db.query<{ position: number }>('SELECT position FROM feed_checkpoints WHERE source = $1', [feed.source]);
    let after = checkpoint?.position ?? 0;
    for (;;) {
      const page = await feed.read(after, 500);
      if (page.events.length === 0) break;
      // A page at once: the consumer batches different subjects and keeps each
      // subject's events in the order they are handed over (feed order).
      const outcomes = await Promise.all(page.events.map(({ event }) => consumer.process(event)));
      for (const outcome of outcomes) result[outcome] = (result[outcome] ?? 0) + 1;
      result.read += outcomes.length;
      after = page.next;
      await db.query(
        `INSERT INTO feed_checkpoints (source, position, updated_at) VALUES ($1, $2, now())
         ON CONFLICT (source) DO UPDATE SET position = greatest(feed_checkpoints.position, $2), updated_at = now()`,
        [feed.source, after],
      );
    }
  }
  return result;
}

export type CatchUpWatch = { run(reason: string): Promise<CaughtUp>; stats: { runs: number; recovered: number }; stop(): Promise<void> };

/**
 * Catches up now (start-up) and whenever an event has waited in the hold for longer
 * than `gapAfterMs`: its predecessor was lost on the way.
 */
export function watchForGaps(
  options: { db: Db; consumer: Consumer; feeds: () => readonly FeedSource[]; log: Logger; gapAfterMs?: number; everyMs?: number },
): CatchUpWatch {
  const { db, consumer, log } = options;
  const gapAfterMs = options.gapAfterMs ?? 2_000;
  const stats = { runs: 0, recovered: 0 };
  let running: Promise<CaughtUp> | undefined;
  let stopped = false;
  const run = (reason: string): Promise<CaughtUp> => (running ??= (async () => {
    try {
      const result = await catchUp(db, consumer, options.feeds());
      stats.runs += 1;
      stats.recovered += result.applied ?? 0;
      if ((result.applied ?? 0) > 0) log.warn('caught up from the feeds', { reason, ...result });
      return result;
    } finally {
      running = undefined;
    }
  })());
  const gapped = async () => {
    const [row] = await db.query<{ gap: boolean }>(
      `SELECT EXISTS (SELECT 1 FROM held_messages WHERE consumer = $1 AND held_at < now() - make_interval(secs => $2::float8 / 1000)) AS gap`,
      [consumer.name, gapAfterMs],
    );
    return row?.gap === true;
  };
  // The start-up catch-up is owed until it succeeds (the sources may not answer yet).
  let owed = true;
  const failed = (error: unknown) => log.warn('catching up from the feeds failed; will try again', { error: (error as Error).message });
  const tick = async () => {
    if (owed) {
      await run('start-up');
      owed = false;
    } else if (await gapped()) {
      await run('a held event waited too long for its predecessor');
    }
  };
  const timer = setInterval(() => {
    if (!stopped && running === undefined) void tick().catch(failed);
  }, options.everyMs ?? 1_000);
  timer.unref();
  return {
    run,
    stats,
    stop: async () => {
      stopped = true;
      clearInterval(timer);
      await running?.catch(() => undefined);
    },
  };
}
