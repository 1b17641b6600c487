// Rebuilding a read model from the feeds, while the live one keeps serving. The feeds
// are read in full first; then one transaction locks the live table against writes
// (reads go on), reads what the feeds gained meanwhile, and folds exactly the events
// the live consumer has applied: per source and subject, the versions up to its
// position (it applies each stream in order, so that is precisely its set). An event
// it applied that is not in its source's feed yet (published, not yet marked) is waited
// for. The rebuilt table replaces the live one in that transaction: readers see the
// old table until the commit and the new one after, and the consumer goes on with the
// new one from exactly where the old one stood.
import { UnavailableError, readFeedFrom, type Db, type FeedSource, type ReadCache, type Sql } from '@converge/platform';
import { productKey, summaryKey } from './consumers.ts';
import { sleep } from '@converge/platform';
import { foldReadModels, type ReadModels, type SourceEvent } from './fold.ts';
import type { ReadModel } from './lag.ts';

const tableOf: Record<ReadModel, string> = {
  'order-summary': 'order_summaries',
  'user-orders': 'user_orders',
  'product-availability': 'product_availability',
  'order-counts': 'order_counts',
};

/** An event as a feed serves it: with its stream (subject) and version there. */
type FeedEvent = SourceEvent & { subject: string; sequence: number };

export type Rebuilt = { model: ReadModel; events: number; rows: number; tookMs: number };

export async function rebuildReadModel(
  db: Db, feeds: readonly FeedSource[], model: ReadModel, options: { consumer: string; cache: ReadCache; settleMs?: number },
): Promise<Rebuilt> {
  const started = Date.now();
  const table = tableOf[model];
  // Outside the lock: the bulk of the feeds.
  const read = new Map<string, { events: FeedEvent[]; next: number }>();
  for (const feed of feeds) read.set(feed.source, await readFeed(feed, 0));

  return db.transaction(async (tx) => {
    await tx.query(`LOCK TABLE ${table} IN EXCLUSIVE MODE`);
    const positions = await applied(tx, options.consumer, feeds.map((f) => f.source));
    const deadline = Date.now() + (options.settleMs ?? 10_000);
    for (;;) {
      for (const feed of feeds) {
        const sofar = read.get(feed.source) ?? { events: [], next: 0 };
        const more = await readFeed(feed, sofar.next);
        read.set(feed.source, { events: [...sofar.events, ...more.events], next: more.next });
      }
      const missing = missingFromFeeds(read, positions);
      if (missing === undefined) break;
      if (Date.now() > deadline) throw new UnavailableError(`rebuild of ${model}: ${missing} was applied but is not in its feed yet; retry`);
      await sleep(50);
    }
    const events = [...read.values()].flatMap((r) => r.events).filter((e) => e.sequence <= (positions.get(key(e.source, e.subject)) ?? 0));
    const folded = foldReadModels(events);
    const shadow = `${table}_rebuild`;
    await tx.query(`DROP TABLE IF EXISTS ${shadow}`);
    await tx.query(`CREATE TABLE ${shadow} (LIKE ${table} INCLUDING ALL)`);
    const { rows, versions } = await fill(tx, model, table, shadow, folded);
    // Rebuilt rows carry versions above the old ones: cached copies of the old table go
    // (before the commit, as the consumer does: see consumers.ts).
    await options.cache.invalidate(versions);
    await tx.query(`DROP TABLE ${table}`);
    await tx.query(`ALTER TABLE ${shadow} RENAME TO ${table}`);
    return { model, events: events.length, rows, tookMs: Date.now() - started };
  });
}

// The feeds serve the envelopes as they were published (validated by their producers).
const readFeed = async (feed: FeedSource, after: number): Promise<{ events: FeedEvent[]; next: number }> => {
  const { events, next } = await readFeedFrom(feed, after);
  return { events: events as unknown as FeedEvent[], next };
};

const key = (source: string, subject: string) => `${source}\u0000${subject}`;

async function applied(tx: Sql, consumer: string, sources: readonly string[]): Promise<Map<string, number>> {
  const rows = await tx.query<{ source: string; subject: string; last: number }>(
    'SELECT source, subject, last_sequence AS last FROM consumer_positions WHERE consumer = $1 AND source = ANY($2::text[])',
    [consumer, sources],
  );
  return new Map(rows.map((r) => [key(r.source, r.subject), r.last]));
}

/** A stream version the consumer applied that its feed does not hold yet, if any. */
function missingFromFeeds(read: Map<string, { events: FeedEvent[] }>, positions: Map<string, number>): string | undefined {
  const highest = new Map<string, number>();
  for (const { events } of read.values()) for (const e of events) highest.set(key(e.source, e.subject), Math.max(highest.get(key(e.source, e.subject)) ?? 0, e.sequence));
  for (const [stream, last] of positions) {
    if ((highest.get(stream) ?? 0) < last) return `${stream.replace('\u0000', ':')}:${last}`;
  }
  return undefined;
}

type Filled = { rows: number; versions: { key: string; version: number }[] };

/** Writes the folded model into `table`; cached models take versions above the live rows' (`live`). */
async function fill(tx: Sql, model: ReadModel, live: string, table: string, folded: ReadModels): Promise<Filled> {
  switch (model) {
    case 'order-summary': {
      const rows = [...folded.summaries.values()].map((d) => ({ order_id: d.orderId, status: d.status, document: d, updated_at: d.updatedAt }));
      const written = await tx.query<{ id: string; version: number }>(
        `INSERT INTO ${table} (order_id, status, document, updated_at, version)
         SELECT x.order_id, x.status, x.document, x.updated_at, coalesce(o.version, 0) + 1
           FROM jsonb_to_recordset($1::jsonb) AS x(order_id uuid, status text, document jsonb, updated_at timestamptz)
           LEFT JOIN ${live} o USING (order_id)
         RETURNING order_id::text AS id, version`,
        [JSON.stringify(rows)],
      );
      return { rows: rows.length, versions: written.map((w) => ({ key: summaryKey(w.id), version: w.version })) };
    }
    case 'user-orders': {
      const rows = [...folded.userOrders.values()];
      await tx.query(
        `INSERT INTO ${table} (order_id, user_id, status, total_amount, currency, lines, created_at, updated_at)
         SELECT "orderId", "userId", status, "totalAmount", currency, lines, "createdAt", "updatedAt"
           FROM jsonb_to_recordset($1::jsonb) AS x("orderId" uuid, "userId" text, status text, "totalAmount" bigint, currency text, lines int, "createdAt" timestamptz, "updatedAt" timestamptz)`,
        [JSON.stringify(rows)],
      );
      return { rows: rows.length, versions: [] };
    }
    case 'product-availability': {
      const rows = [...folded.availability.values()];
      const written = await tx.query<{ id: string; version: number }>(
        `INSERT INTO ${table} (product_id, name, price, currency, stock_quantity, reserved, sold, updated_at, version)
         SELECT x."productId", x.name, x.price, x.currency, x."stockQuantity", x.reserved, x.sold, now(), coalesce(o.version, 0) + 1
           FROM jsonb_to_recordset($1::jsonb) AS x("productId" uuid, name text, price bigint, currency text, "stockQuantity" int, reserved int, sold int)
           LEFT JOIN ${live} o ON o.product_id = x."productId"
         RETURNING product_id::text AS id, version`,
        [JSON.stringify(rows)],
      );
      return { rows: rows.length, versions: written.map((w) => ({ key: productKey(w.id), version: w.version })) };
    }
    case 'order-counts': {
      const rows = Object.entries(folded.counts).map(([status, n]) => ({ status, n }));
      await tx.query(`INSERT INTO ${table} (status, n) SELECT status, n FROM jsonb_to_recordset($1::jsonb) AS x(status text, n int)`, [JSON.stringify(rows)]);
      return { rows: rows.length, versions: [] };
    }
    default:
      throw new Error(`unknown read model ${String(model)}`);
  }
}
