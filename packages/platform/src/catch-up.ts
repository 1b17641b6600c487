// Catching up from the feeds, without the broker. The broker can lose a consumer's
// queue (deleted, purged, a broker rebuilt): the events in it never arrive. The
// consumer notices by sequence — a later event of the same stream arrives and is held
// for its missing predecessor — and the service then reads each source's feed from its
// checkpoint and hands the events its inbox has never seen to the consumer, whose
// per-subject order applies them and drains what was held. The same runs at start-up
// (a queue may have been lost while the service was down), on demand and as a periodic
// sweep, which finds what no later event would reveal (a stream's last events lost)
// and keeps the checkpoints close to the head, so every catch-up reads little. The
// sweep leaves alone events committed in the last few seconds that it has not seen
// yet: they are on their way through the broker, and it stops before them, to look
// again next time.
//
// The consuming service's migrations create `feed_checkpoints (source text PRIMARY KEY,
// position bigint NOT NULL, updated_at timestamptz NOT NULL)`: how far it has read each
// source's feed.
import type { Envelope } from '@converge/contracts';
import type { Consumer, Outcome } from './consumer.ts';
import type { Db } from './db.ts';
import { UnavailableError } from './errors.ts';
import type { FeedMarks, FeedPage } from './feed.ts';
import type { HttpApp } from './http.ts';
import type { Logger } from './log.ts';

/** A source's feed (GET /events and /events/marks), however it is reached. */
export type FeedSource = {
  source: string;
  read(after: number, limit: number): Promise<FeedPage>;
  /** The same page, each event by id and commit time only. */
  marks(after: number, limit: number): Promise<FeedMarks>;
};

/** How a reader proves who it is to a feed: its own (service) bearer token. */
export type FeedCredentials = () => Promise<string>;

const authorization = async (token?: FeedCredentials): Promise<Record<string, string>> =>
  token === undefined ? {} : { authorization: `Bearer ${await token()}` };

/** A source's feed over HTTP (a deployment: one process per service). */
export function httpFeed(source: string, baseUrl: string, token?: FeedCredentials): FeedSource {
  const base = baseUrl.replace(/\/+$/, '');
  const get = async <T>(path: string, after: number, limit: number): Promise<T> => {
    const response = await fetch(`${base}${path}?after=${after}&limit=${limit}`, {
      headers: await authorization(token),
      signal: AbortSignal.timeout(10_000),
    });
    if (!response.ok) throw new Error(`${source} feed answered ${response.status}`);
    return (await response.json()) as T;
  };
  return {
    source,
    read: (after, limit) => get<FeedPage>('/events', after, limit),
    marks: (after, limit) => get<FeedMarks>('/events/marks', after, limit),
  };
}

/** A source's feed through its HTTP app in this process (embedded mode, tests); the app may not be running yet. */
export function inProcessFeed(source: string, app: () => HttpApp | undefined, token?: FeedCredentials): FeedSource {
  const get = async <T>(path: string, after: number, limit: number): Promise<T> => {
    const running = app();
    if (running === undefined) throw new UnavailableError(`${source} is not running`);
    const response = await running.inject({
      method: 'GET',
      url: `${path}?after=${after}&limit=${limit}`,
      headers: await authorization(token),
    });
    if (response.statusCode !== 200) throw new UnavailableError(`${source} feed answered ${response.statusCode}`);
    return response.json<T>();
  };
  return {
    source,
    read: (after, limit) => get<FeedPage>('/events', after, limit),
    marks: (after, limit) => get<FeedMarks>('/events/marks', after, limit),
  };
}

/** Every event of a feed after `after`, page by page; and the position read up to. */
export async function readFeedFrom(
  feed: FeedSource,
  after: number,
  pageSize = 1000,
): Promise<{ events: Envelope[]; next: number }> {
  const events: Envelope[] = [];
  let next = after;
  for (;;) {
    const page = await feed.read(next, pageSize);
    events.push(...page.events.map((e) => e.event));
    if (page.events.length === 0) return { events, next };
    next = page.next;
  }
}

export type CaughtUp = { read: number } & Partial<Record<Outcome, number>>;

export async function catchUp(
  db: Db,
  consumer: Consumer,
  feeds: readonly FeedSource[],
  options: { settledBefore?: Date } = {},
): Promise<CaughtUp> {
  const result: CaughtUp = { read: 0 };
  const settled = options.settledBefore?.getTime() ?? Number.POSITIVE_INFINITY;
  for (const feed of feeds) {
    const [checkpoint] = await db.query<{ position: number }>(
      'SELECT position FROM feed_checkpoints WHERE source = $1',
      [feed.source],
    );
    let after = checkpoint?.position ?? 0;
    for (;;) {
      // Marks first: a catch-up finds most events applied, and asks for the events of a
      // page only when some of it is new.
      const page = await feed.marks(after, 500);
      if (page.marks.length === 0) break;
      const seen = new Set(
        (
          await db.query<{ message_id: string }>(
            'SELECT message_id FROM inbox WHERE consumer = $1 AND message_id = ANY($2::text[])',
            [consumer.name, page.marks.map((m) => m.id)],
          )
        ).map((r) => r.message_id),
      );
      const recent = page.marks.findIndex((m) => !seen.has(m.id) && Date.parse(m.time) > settled);
      const taken = recent === -1 ? page.marks : page.marks.slice(0, recent);
      if (taken.length === 0) break;
      const unseen = new Set(taken.filter((m) => !seen.has(m.id)).map((m) => m.id));
      if (unseen.size > 0) {
        // The same positions in full (a feed's positions never change); the unseen at
        // once: the consumer batches different subjects and keeps each subject's events
        // in the order they are handed over (feed order).
        const { events } = await feed.read(after, taken.length);
        const outcomes = await Promise.all(
          events.filter(({ event }) => unseen.has(event.id)).map(({ event }) => consumer.process(event)),
        );
        for (const outcome of outcomes) result[outcome] = (result[outcome] ?? 0) + 1;
      }
      result.duplicate = (result.duplicate ?? 0) + taken.length - unseen.size;
      result.read += taken.length;
      after = taken.at(-1)?.position ?? after;
      await db.query(
        `INSERT INTO feed_checkpoints (source, position, updated_at) VALUES ($1, $2, now())
         ON CONFLICT (source) DO UPDATE SET position = greatest(feed_checkpoints.position, $2), updated_at = now()`,
        [feed.source, after],
      );
      if (taken.length < page.marks.length) break;
    }
  }
  return result;
}

export type CatchUpWatch = {
  run(reason: string): Promise<CaughtUp>;
  stats: { runs: number; recovered: number };
  stop(): Promise<void>;
};

export type WatchTimings = {
  /** How long an event may wait in the hold for its predecessor before the feeds are read. */
  gapAfterMs?: number;
  /** How often the feeds are swept for what never arrived (0: never). */
  sweepEveryMs?: number;
  /** Events committed this recently and not seen yet are left to the broker by a sweep. */
  settleMs?: number;
};

/**
 * Catches up now (start-up), whenever an event has waited in the hold for longer than
 * `gapAfterMs` (its predecessor was lost on the way), and sweeps every `sweepEveryMs`.
 */
export function watchForGaps(
  options: {
    db: Db;
    consumer: Consumer;
    feeds: () => readonly FeedSource[];
    log: Logger;
    now: () => Date;
    everyMs?: number;
  } & WatchTimings,
): CatchUpWatch {
  const { db, consumer, log } = options;
  const gapAfterMs = options.gapAfterMs ?? 2_000;
  const sweepEveryMs = options.sweepEveryMs ?? 15_000;
  const settleMs = options.settleMs ?? 5_000;
  const stats = { runs: 0, recovered: 0 };
  let running: Promise<CaughtUp> | undefined;
  let stopped = false;
  let lastSweep = options.now().getTime();
  const run = (reason: string, settledBefore?: Date): Promise<CaughtUp> =>
    (running ??= (async () => {
      try {
        const result = await catchUp(
          db,
          consumer,
          options.feeds(),
          settledBefore === undefined ? {} : { settledBefore },
        );
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
      `SELECT EXISTS (SELECT 1 FROM held_messages
                       WHERE consumer = $1 AND held_at < now() - make_interval(secs => $2::float8 / 1000)) AS gap`,
      [consumer.name, gapAfterMs],
    );
    return row?.gap === true;
  };
  // The start-up catch-up is owed until it succeeds (the sources may not answer yet).
  let owed = true;
  const failed = (error: unknown) =>
    log.warn('catching up from the feeds failed; will try again', { error: (error as Error).message });
  const tick = async () => {
    if (owed) {
      await run('start-up');
      owed = false;
    } else if (await gapped()) {
      await run('a held event waited too long for its predecessor');
    } else if (sweepEveryMs > 0 && options.now().getTime() - lastSweep >= sweepEveryMs) {
      lastSweep = options.now().getTime();
      await run('the periodic sweep of the feeds found events that never arrived', new Date(lastSweep - settleMs));
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
