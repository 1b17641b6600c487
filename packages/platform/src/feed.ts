// The feed: every service serves the events it published, in the order it published
// them, as `GET /events?after=<position>&limit=`, so a consumer can catch up, rebuild a
// read model or repair a gap without the broker. A position is handed out when the
// relay marks its event published, under one lock held until that marking commits:
// positions become visible in order and without gaps, so a reader that has seen
// position n will never meet a smaller one (an insert-time bigserial would let a
// transaction that commits late appear behind what readers already took). Per subject
// the feed keeps the stream's order, because the relay publishes a subject in order.
import { Position, type Envelope } from '@converge/contracts';
import Type from 'typebox';
import type { Db, Sql } from './db.ts';
import { problems, type HttpApp } from './http.ts';
import { allow } from './identity.ts';

// One key for the whole database: feed positions are a single sequence per service.
const feedLock = 727_002;

/**
 * Marks rows published and gives them the next feed positions, in the given order. Both
 * statements go out at once (the caller may leave them in flight to its COMMIT): the
 * server still runs them one after the other.
 */
export async function markPublished(tx: Sql, positions: readonly number[]): Promise<void> {
  if (positions.length === 0) return;
  // Two statements: the lock first, so that the second one's snapshot sees every
  // position handed out before it (a statement's snapshot predates locks it takes).
  const locked = tx.query('SELECT pg_advisory_xact_lock($1)', [feedLock]);
  // `= ANY($1)` lets the planner find the rows by primary key; a join to the unnest
  // alone is planned as a scan of the whole log, which only grows.
  await tx.query(
    `UPDATE outbox o SET published_at = now(), feed_position = head.n + x.k
       FROM (SELECT coalesce(max(feed_position), 0) AS n FROM outbox) head,
            unnest($1::bigint[]) WITH ORDINALITY AS x(position, k)
      WHERE o.position = x.position AND o.position = ANY($1::bigint[])`,
    [positions],
  );
  await locked;
}

export type FeedEntry = { position: number; event: Envelope };
export type FeedPage = { events: FeedEntry[]; next: number; head: number };

/** An event of the feed by its id and commit time only: enough to tell whether a reader has it. */
export type FeedMark = { position: number; id: string; time: string };
export type FeedMarks = { marks: FeedMark[]; next: number; head: number };

const headOf = async (db: Sql) =>
  (await db.query<{ head: number }>('SELECT coalesce(max(feed_position), 0)::bigint AS head FROM outbox'))[0]?.head ??
  0;

/** Events after `after`, at most `limit`, and the newest position there is. */
export async function readFeed(db: Sql, after: number, limit: number): Promise<FeedPage> {
  const rows = await db.query<{ position: number; envelope: Envelope }>(
    'SELECT feed_position AS position, envelope FROM outbox WHERE feed_position > $1 ORDER BY feed_position LIMIT $2',
    [after, limit],
  );
  const events = rows.map((r) => ({ position: r.position, event: r.envelope }));
  return { events, next: events.at(-1)?.position ?? after, head: await headOf(db) };
}

/** The same page as marks: a reader that has most of it (a sweep) learns that for a tenth of the bytes. */
export async function readFeedMarks(db: Sql, after: number, limit: number): Promise<FeedMarks> {
  const marks = await db.query<FeedMark>(
    `SELECT feed_position AS position, envelope->>'id' AS id, envelope->>'time' AS time
       FROM outbox WHERE feed_position > $1 ORDER BY feed_position LIMIT $2`,
    [after, limit],
  );
  return { marks, next: marks.at(-1)?.position ?? after, head: await headOf(db) };
}

const FeedEntrySchema = Type.Object({
  position: Type.Integer({ minimum: 1 }),
  event: Type.Unknown({ description: 'The CloudEvents envelope as it was published (see the AsyncAPI document).' }),
});

const PageQuery = Type.Object(
  {
    after: Type.Optional(
      Type.Integer({ ...Position, description: 'The last position already read (0: from the start).' }),
    ),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
  },
  { additionalProperties: false },
);
const next = Type.Integer({ minimum: 0, description: 'The position to ask after next time.' });
const head = Type.Integer({ minimum: 0, description: 'The newest position when this page was read.' });

/** Other services (rebuilds, catch-up, reconciliation) and operators read the feeds. */
const feedReaders = allow('service', 'operator');

export function registerFeedRoutes(app: HttpApp, db: Db): void {
  app.get(
    '/events/marks',
    {
      config: { access: feedReaders },
      schema: {
        tags: ['operations'],
        summary: 'The same pages as /events, each event by its id and commit time only',
        description:
          'For a reader that has most events already (a sweep for what the broker ' +
          'lost): it asks /events for a page only when a mark is new to it.',
        querystring: PageQuery,
        response: {
          200: Type.Object({
            marks: Type.Array(
              Type.Object({ position: Type.Integer({ minimum: 1 }), id: Type.String(), time: Type.String() }),
            ),
            next,
            head,
          }),
          ...problems(400),
        },
      },
    },
    (request) => readFeedMarks(db, request.query.after ?? 0, request.query.limit ?? 100),
  );

  app.get(
    '/events',
    {
      config: { access: feedReaders },
      schema: {
        tags: ['operations'],
        summary: 'The events this service published, in publish order, after a position',
        description:
          'Positions start at 1 and have no gaps; a position once seen is never followed by a smaller one. ' +
          'Read on with `after` = `next` until `next` = `head`.',
        querystring: PageQuery,
        response: {
          200: Type.Object({ events: Type.Array(FeedEntrySchema), next, head }),
          ...problems(400),
        },
      },
    },
    (request) => readFeed(db, request.query.after ?? 0, request.query.limit ?? 100),
  );
}
