// Rebuilding a read model from the feeds, while the live one keeps serving. The feeds
// are read in full first; then one transaction locks the live table against writes
// (reads go on), reads what the feeds gained meanwhile, and folds exactly the events
// the live consumer has applied: per source and subject, the versions up to its
// position (it applies each stream in order, so that is precisely its set). An event
// it applied that is not in its source's feed yet (published, not yet marked) is waited
// for. The rebuilt table replaces the live one in that transaction: readers see the
// old table until the commit and the new one after, and the consumer goes on with the
// new one from exactly where the old one stood.
import {
  NotFoundError,
  UnavailableError,
  readFeedFrom,
  sleep,
  type Db,
  type FeedSource,
  type ReadCache,
  type Sql,
} from '@converge/platform';
import { foldEvents, type ReadModel, type SourceEvent } from './read-model.ts';
import { readModels, type ReadModelName } from './read-models.ts';

/** An event as a feed serves it: with its stream (subject) and version there. */
type FeedEvent = SourceEvent & { subject: string; sequence: number };

export type Rebuilt = { model: ReadModelName; events: number; rows: number; tookMs: number };

export async function rebuildReadModel(
  db: Db,
  feeds: readonly FeedSource[],
  name: ReadModelName,
  options: { consumer: string; cache: ReadCache; settleMs?: number },
): Promise<Rebuilt> {
  const started = Date.now();
  const model = readModels.find((m) => m.name === name);
  if (model === undefined) throw new NotFoundError(`no read model ${name}`);
  const table = model.table;
  // Outside the lock: the bulk of the feeds.
  const read = new Map<string, { events: FeedEvent[]; next: number }>();
  for (const feed of feeds) read.set(feed.source, await readFeed(feed, 0));

  return db.transaction(async (tx) => {
    await tx.query(`LOCK TABLE ${table} IN EXCLUSIVE MODE`);
    const positions = await applied(
      tx,
      options.consumer,
      feeds.map((f) => f.source),
    );
    const deadline = Date.now() + (options.settleMs ?? 10_000);
    for (;;) {
      for (const feed of feeds) {
        const sofar = read.get(feed.source) ?? { events: [], next: 0 };
        const more = await readFeed(feed, sofar.next);
        read.set(feed.source, { events: [...sofar.events, ...more.events], next: more.next });
      }
      const missing = missingFromFeeds(read, positions);
      if (missing === undefined) break;
      if (Date.now() > deadline)
        throw new UnavailableError(`rebuild of ${name}: ${missing} was applied but is not in its feed yet; retry`);
      await sleep(50);
    }
    const events = [...read.values()]
      .flatMap((r) => r.events)
      .filter((e) => e.sequence <= (positions.get(key(e.source, e.subject)) ?? 0));
    // Every model folds (a view needs the model it folds); only this one is written.
    const run = foldEvents(readModels, events);
    const shadow = `${table}_rebuild`;
    await tx.query(`DROP TABLE IF EXISTS ${shadow}`);
    await tx.query(`CREATE TABLE ${shadow} (LIKE ${table} INCLUDING ALL)`);
    await model.save(tx, run, { table: shadow, now: new Date() });
    const versions = await raiseVersions(tx, model, shadow);
    const [counted] = await tx.query<{ rows: number }>(`SELECT count(*)::int AS rows FROM ${shadow}`);
    // Rebuilt rows carry versions above the old ones: cached copies of the old table go
    // (before the commit, as the consumer does: see consumers.ts).
    await options.cache.invalidate(versions);
    await tx.query(`DROP TABLE ${table}`);
    await tx.query(`ALTER TABLE ${shadow} RENAME TO ${table}`);
    return { model: name, events: events.length, rows: counted?.rows ?? 0, tookMs: Date.now() - started };
  });
}

/**
 * A cached model's rebuilt rows take the version after the live row's (1 for a new row), so no cache keeps an old
 * one.
 */
async function raiseVersions(tx: Sql, model: ReadModel, shadow: string): Promise<{ key: string; version: number }[]> {
  const cached = model.cached;
  if (cached === undefined) return [];
  const rows = await tx.query<{ id: string; version: number }>(
    `UPDATE ${shadow} s
        SET version = coalesce((SELECT o.version FROM ${model.table} o
                                 WHERE o.${cached.column} = s.${cached.column}), 0) + 1
     RETURNING s.${cached.column}::text AS id, s.version`,
  );
  return rows.map((r) => ({ key: cached.key(r.id), version: r.version }));
}

// The feeds serve the envelopes as they were published (validated by their producers).
const readFeed = async (feed: FeedSource, after: number): Promise<{ events: FeedEvent[]; next: number }> => {
  const { events, next } = await readFeedFrom(feed, after);
  return { events: events as unknown as FeedEvent[], next };
};

const key = (source: string, subject: string) => `${source}\u0000${subject}`;

async function applied(tx: Sql, consumer: string, sources: readonly string[]): Promise<Map<string, number>> {
  const rows = await tx.query<{ source: string; subject: string; last: number }>(
    'SELECT source, subject, last_sequence AS last FROM ' +
      'consumer_positions WHERE consumer = $1 AND source = ANY($2::text[])',
    [consumer, sources],
  );
  return new Map(rows.map((r) => [key(r.source, r.subject), r.last]));
}

/** A stream version the consumer applied that its feed does not hold yet, if any. */
function missingFromFeeds(
  read: Map<string, { events: FeedEvent[] }>,
  positions: Map<string, number>,
): string | undefined {
  const highest = new Map<string, number>();
  for (const { events } of read.values())
    for (const e of events)
      highest.set(key(e.source, e.subject), Math.max(highest.get(key(e.source, e.subject)) ?? 0, e.sequence));
  for (const [stream, last] of positions) {
    if ((highest.get(stream) ?? 0) < last) return `${stream.replace('\u0000', ':')}:${last}`;
  }
  return undefined;
}
