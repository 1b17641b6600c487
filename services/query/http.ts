// The query API: reads from the read models only, never from another service. A read
// that carries a write's consistency token (header `Consistency-Token`) is answered
// only once the read models have applied that write: it waits for it, bounded, and
// otherwise answers 503 saying how far behind they are, never older data as fresh.
import { UserId, Uuid, isTimestamp } from '@converge/contracts';
import {
  ConsistencyTokenSchema,
  InvalidError,
  NotFoundError,
  actsFor,
  allow,
  cached,
  callerOf,
  signedIn,
  consistencyHeader,
  parseToken,
  problems,
  waitForToken,
  type CaughtUp,
  type Db,
  type FeedSource,
  type HttpApp,
  type ReadCache,
} from '@converge/platform';
import Type from 'typebox';
import type { LagTracker } from './lag.ts';
import { orderCountsByStatus } from './projections/order-counts.ts';
import { getSummary, summaryKey } from './projections/order-summary.ts';
import { getAvailability, listAvailability, productKey } from './projections/product-availability.ts';
import { listUserOrders, type UserOrdersCursor } from './projections/user-orders.ts';
import { readModels, type ReadModelName } from './read-models.ts';
import { rebuildReadModel, type Rebuilt } from './rebuild.ts';

const Status = Type.Union([
  Type.Literal('PENDING'),
  Type.Literal('COMPLETED'),
  Type.Literal('FAILED'),
  Type.Literal('CANCELLED'),
]);
const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(schema: T) => Type.Union([schema, Type.Null()]);

const SummarySchema = Type.Object(
  {
    orderId: Uuid,
    userId: Nullable(Type.String()),
    status: Nullable(Status),
    items: Type.Array(Type.Object({ productId: Uuid, quantity: Type.Integer(), unitPrice: Type.Integer() })),
    totalAmount: Nullable(Type.Integer()),
    currency: Nullable(Type.String()),
    reason: Nullable(Type.String()),
    stock: Nullable(Type.Object({ outcome: Type.String(), reason: Type.Optional(Type.String()) })),
    payment: Nullable(
      Type.Object({
        paymentId: Uuid,
        outcome: Type.String(),
        amount: Type.Integer(),
        reason: Type.Optional(Type.String()),
      }),
    ),
    timeline: Type.Array(
      Type.Object({
        at: Type.String(),
        source: Type.String(),
        type: Type.String(),
        detail: Type.Optional(Type.String()),
      }),
    ),
    createdAt: Nullable(Type.String()),
    updatedAt: Type.String(),
  },
  { description: 'Fields a source has not reported yet are null.' },
);

const UserOrderSchema = Type.Object({
  orderId: Uuid,
  userId: Type.String(),
  status: Status,
  totalAmount: Type.Integer(),
  currency: Type.String(),
  lines: Type.Integer(),
  createdAt: Type.String({ format: 'date-time' }),
  updatedAt: Type.String({ format: 'date-time' }),
});

const AvailabilitySchema = Type.Object({
  productId: Uuid,
  name: Nullable(Type.String()),
  price: Nullable(Type.Integer()),
  currency: Nullable(Type.String()),
  stockQuantity: Type.Integer(),
  reserved: Type.Integer(),
  sold: Type.Integer(),
});

const TokenHeader = Type.Object({ [consistencyHeader]: Type.Optional(ConsistencyTokenSchema) });

const ProjectionSchema = Type.Object({
  name: Type.String(),
  applied: Type.Integer({ description: 'Events this read model applied since the process started.' }),
  delayMs: Type.Object(
    { p50: Type.Number(), p99: Type.Number(), max: Type.Number(), samples: Type.Integer() },
    { description: 'Commit at the source to applied here, over the last 1,000 events.' },
  ),
  lag: Type.Object(
    { events: Type.Integer(), seconds: Type.Number() },
    {
      description:
        'Events waiting for the read side (queue and hold), and, while any wait, how long ago the last ' +
        'applied one was committed (before any since the service started, how long it has run).',
    },
  ),
});

// A page cursor is opaque to clients: the last order's creation time and id.
const writeCursor = (cursor: UserOrdersCursor) =>
  Buffer.from(`${cursor.createdAt}|${cursor.orderId}`).toString('base64url');
function readCursor(text: string): UserOrdersCursor {
  const [createdAt, orderId, ...rest] = Buffer.from(text, 'base64url').toString('utf8').split('|');
  const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  if (
    createdAt === undefined ||
    orderId === undefined ||
    rest.length > 0 ||
    !isTimestamp(createdAt) ||
    !uuid.test(orderId)
  ) {
    throw new InvalidError('cursor is not one this service handed out', [], 400);
  }
  return { createdAt, orderId };
}

export type LagProbe = { lag: LagTracker; waiting(): Promise<number> };

/** The current lag of one read model: events waiting, and how far behind in time while any wait. */
export async function currentLag(
  probe: LagProbe,
  model: ReadModelName,
  now: Date,
): Promise<{ events: number; seconds: number }> {
  const events = await probe.waiting();
  const last = probe.lag.report(model).lastEventTime ?? probe.lag.startedAt;
  return { events, seconds: events > 0 ? Math.max(0, (now.getTime() - last) / 1000) : 0 };
}

/** A customer reads their own orders; operators and other services any. */
const readers = allow('customer', 'operator', 'service');

export function registerQueryRoutes(
  app: HttpApp,
  db: Db,
  options: {
    consumer: string;
    sources: readonly string[];
    waitMs: number;
    probe: LagProbe;
    now: () => Date;
    feeds: () => readonly FeedSource[];
    catchUp: () => Promise<CaughtUp>;
    cache: ReadCache;
  },
): void {
  app.post(
    '/projections/catch-up',
    {
      config: { access: allow('operator') },
      schema: {
        tags: ['query'],
        summary:
          'Reads every source feed from its checkpoint and applies what the broker lost (the rest is found applied)',
        response: {
          200: Type.Object({ read: Type.Integer() }, { additionalProperties: Type.Integer() }),
          ...problems(503),
        },
      },
    },
    () => options.catchUp(),
  );

  app.post(
    '/projections/:name/rebuild',
    {
      config: { access: allow('operator') },
      schema: {
        tags: ['query'],
        summary: 'Rebuilds a read model (or all) from the feeds while the old one serves, then switches atomically',
        params: Type.Object({
          name: Type.Union([...readModels.map((m) => Type.Literal(m.name)), Type.Literal('all')]),
        }),
        response: {
          200: Type.Object({
            rebuilt: Type.Array(
              Type.Object({
                model: Type.String(),
                events: Type.Integer(),
                rows: Type.Integer(),
                tookMs: Type.Integer(),
              }),
            ),
          }),
          ...problems(400, 503),
        },
      },
    },
    async (request) => {
      const models: ReadModelName[] =
        request.params.name === 'all' ? readModels.map((m) => m.name) : [request.params.name];
      const rebuilt: Rebuilt[] = [];
      for (const model of models)
        rebuilt.push(
          await rebuildReadModel(db, options.feeds(), model, { consumer: options.consumer, cache: options.cache }),
        );
      return { rebuilt };
    },
  );

  app.get(
    '/projections',
    {
      config: { access: allow('operator', 'service') },
      schema: {
        tags: ['query'],
        summary: 'Each read model: events applied, delay from commit to applied, current lag',
        response: { 200: Type.Object({ projections: Type.Array(ProjectionSchema) }) },
      },
    },
    async () => ({
      projections: await Promise.all(
        readModels.map(async ({ name }) => {
          const { applied, delayMs } = options.probe.lag.report(name);
          return { name, applied, delayMs, lag: await currentLag(options.probe, name, options.now()) };
        }),
      ),
    }),
  );

  // Every route here reads the read models: a token makes it wait for the write first.
  app.addHook('preHandler', async (request, reply) => {
    const header = request.headers[consistencyHeader];
    if (typeof header !== 'string') return;
    const { waitedMs } = await waitForToken(db, options.consumer, parseToken(header), {
      timeoutMs: options.waitMs,
      sources: options.sources,
    });
    void reply.header('consistency-waited-ms', String(waitedMs));
  });

  app.get(
    '/orders/:id',
    {
      config: { access: readers },
      schema: {
        tags: ['query'],
        summary: "An order's summary: lines, stock outcome, payment and status timeline",
        params: Type.Object({ id: Uuid }),
        headers: TokenHeader,
        response: { 200: SummarySchema, ...problems(400, 404, 503) },
      },
    },
    async (request) => {
      const summary = await cached(options.cache, summaryKey(request.params.id), () =>
        getSummary(db, request.params.id),
      );
      // A summary whose OrderCreated has not arrived yet names no owner: only operators see it.
      if (summary === undefined || !actsFor(callerOf(request), summary.userId ?? ''))
        throw new NotFoundError(`no order ${request.params.id} in the read model`);
      return summary;
    },
  );

  app.get(
    '/users/:id/orders',
    {
      config: { access: readers },
      schema: {
        tags: ['query'],
        summary: "A user's orders, newest first, optionally of one status; paged by cursor",
        params: Type.Object({ id: UserId }),
        headers: TokenHeader,
        querystring: Type.Object(
          {
            limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500 })),
            status: Type.Optional(Status),
            cursor: Type.Optional(
              Type.String({ minLength: 1, maxLength: 200, description: 'Page on: the `next` of the previous page.' }),
            ),
          },
          { additionalProperties: false },
        ),
        response: {
          200: Type.Object({
            items: Type.Array(UserOrderSchema),
            next: Nullable(Type.String({ description: 'The cursor of the next page; null on the last page.' })),
          }),
          ...problems(400, 404, 503),
        },
      },
    },
    async (request) => {
      if (!actsFor(callerOf(request), request.params.id)) throw new NotFoundError(`no orders of ${request.params.id}`);
      const limit = request.query.limit ?? 50;
      // One row more than asked for tells whether another page follows.
      const rows = await listUserOrders(db, request.params.id, {
        limit: limit + 1,
        status: request.query.status,
        after: request.query.cursor === undefined ? undefined : readCursor(request.query.cursor),
      });
      const items = rows.slice(0, limit);
      const last = items.at(-1);
      return {
        items,
        next:
          rows.length > limit && last !== undefined
            ? writeCursor({ createdAt: last.createdAt, orderId: last.orderId })
            : null,
      };
    },
  );

  app.get(
    '/products/:id',
    {
      config: { access: signedIn },
      schema: {
        tags: ['query'],
        summary: "A product's availability: in stock, reserved, sold",
        params: Type.Object({ id: Uuid }),
        headers: TokenHeader,
        response: { 200: AvailabilitySchema, ...problems(400, 404, 503) },
      },
    },
    async (request) => {
      const availability = await cached(options.cache, productKey(request.params.id), () =>
        getAvailability(db, request.params.id),
      );
      if (availability === undefined) throw new NotFoundError(`no product ${request.params.id} in the read model`);
      return availability;
    },
  );

  app.get(
    '/products',
    {
      config: { access: signedIn },
      schema: {
        tags: ['query'],
        summary: 'Availability of every product, by product id',
        headers: TokenHeader,
        querystring: Type.Object(
          { limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })), after: Type.Optional(Uuid) },
          { additionalProperties: false },
        ),
        response: { 200: Type.Object({ items: Type.Array(AvailabilitySchema) }), ...problems(400, 503) },
      },
    },
    async (request) => ({ items: await listAvailability(db, request.query.limit ?? 100, request.query.after) }),
  );

  app.get(
    '/system',
    {
      config: { access: allow('operator', 'service') },
      schema: {
        tags: ['query'],
        summary: 'Orders per status',
        headers: TokenHeader,
        response: { 200: Type.Object({ orders: Type.Record(Type.String(), Type.Integer()) }), ...problems(400, 503) },
      },
    },
    async () => ({ orders: await orderCountsByStatus(db) }),
  );
}
