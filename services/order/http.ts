// The order API. Placing an order: a key seen before replays the first response (a
// different body under the same key gets 422); otherwise the server prices every line
// from its catalogue (a client never sends prices; a product's price, once found, is
// remembered, since it never changes), and the order's first event, its
// row and the key with the response commit in one transaction, so a concurrent request
// with the same key waits for it and replays it. Bad input is refused before anything
// is written.
import crypto from 'node:crypto';
import { Quantity, Uuid, UserId, type OrderLine } from '@converge/contracts';
import { ConflictError, InvalidError, NotFoundError, consistencyHeader, formatToken, problems, type Db, type HttpApp } from '@converge/platform';
import Type, { type Static } from 'typebox';
import { cataloguePrices, executeOrderCommand, getOrder, listOrders, placeOrder, type OrderView, type Price } from './store.ts';

export const PlaceOrder = Type.Object(
  {
    userId: UserId,
    items: Type.Array(Type.Object({ productId: Uuid, quantity: Quantity }, { additionalProperties: false }), { minItems: 1, maxItems: 100 }),
  },
  { additionalProperties: false },
);
type PlaceOrder = Static<typeof PlaceOrder>;

export const OrderSchema = Type.Object({
  orderId: Uuid,
  userId: Type.String(),
  status: Type.Union([Type.Literal('PENDING'), Type.Literal('COMPLETED'), Type.Literal('FAILED'), Type.Literal('CANCELLED')]),
  items: Type.Array(Type.Object({ productId: Uuid, quantity: Type.Integer(), unitPrice: Type.Integer() })),
  totalAmount: Type.Integer(),
  currency: Type.String(),
  reason: Type.Optional(Type.String()),
  version: Type.Integer(),
  createdAt: Type.String({ format: 'date-time' }),
  updatedAt: Type.String({ format: 'date-time' }),
});

const etag = (order: OrderView) => `"${order.orderId}:${order.version}"`;
/** The order's stream at this version: a read model that has applied it shows this write. */
const token = (order: OrderView) => formatToken({ source: 'order', subject: order.orderId, sequence: order.version });

export function requestHash(body: PlaceOrder): string {
  const canonical = JSON.stringify({ userId: body.userId, items: body.items.map((i) => [i.productId, i.quantity]) });
  return crypto.createHash('sha256').update(canonical).digest('hex');
}

type KeyRow = { request_hash: string; response_body: OrderView | null };

/** Rolls the placing transaction back when the key turns out to be taken. */
class KeyTaken extends Error {}

/** What the first request with this key got: its order again, or 422 for another body. */
async function replayKey(db: Db, userId: string, key: string, hash: string): Promise<OrderView> {
  const [row] = await db.query<KeyRow>('SELECT request_hash, response_body FROM idempotency_keys WHERE user_id = $1 AND key = $2', [userId, key]);
  if (row === undefined || row.response_body === null) {
    // A claim without a response was left by an earlier version that claimed keys
    // before placing; its request died. Free the key for the retry.
    await db.query(`DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND state = 'in_flight'`, [userId, key]);
    throw new ConflictError('a request with this Idempotency-Key did not complete; retry');
  }
  if (row.request_hash !== hash) throw new InvalidError('this Idempotency-Key was used with a different request body');
  return row.response_body;
}

async function priceOrder(pricesOf: (productIds: readonly string[]) => Promise<Map<string, Price>>, body: PlaceOrder): Promise<{ items: OrderLine[]; currency: string }> {
  const ids = body.items.map((i) => i.productId);
  if (new Set(ids).size !== ids.length) throw new InvalidError('each product may appear in one line only', ['items: duplicate productId']);
  const prices = await pricesOf(ids);
  const unknown = ids.filter((id) => !prices.has(id));
  if (unknown.length > 0) throw new InvalidError('unknown product', unknown.map((id) => `items: unknown product ${id}`));
  const currencies = new Set([...prices.values()].map((p) => p.currency));
  const [currency] = currencies;
  if (currency === undefined || currencies.size > 1) throw new InvalidError('all products of an order must share one currency');
  const items = body.items.map((line) => ({ productId: line.productId, quantity: line.quantity, unitPrice: prices.get(line.productId)?.price ?? 0 }));
  const total = items.reduce((sum, l) => sum + l.quantity * l.unitPrice, 0);
  if (!Number.isSafeInteger(total)) throw new InvalidError('order total is too large');
  return { items, currency };
}

export function registerOrderRoutes(app: HttpApp, db: Db, now: () => Date): void {
  const prices = cataloguePrices(db);
  app.post('/orders', {
    schema: {
      tags: ['orders'],
      summary: 'Places an order (PENDING); the outcome follows asynchronously',
      headers: Type.Object({ 'idempotency-key': Type.String({ minLength: 1, maxLength: 200 }) }),
      body: PlaceOrder,
      response: { 201: OrderSchema, ...problems(400, 409, 413, 415, 422) },
    },
  }, async (request, reply) => {
    const at = now();
    const body = request.body;
    const key = request.headers['idempotency-key'];
    const hash = requestHash(body);
    // A replay is rare, so it is not looked for first: it prices and places like a new
    // order, finds its key taken before writing anything and answers the first response.
    const { items, currency } = await priceOrder(prices, body);
    const orderId = crypto.randomUUID();
    try {
      // The key is claimed by the same transaction that creates the order: a request
      // that dies leaves no claim behind, and a concurrent one with the same key waits
      // for this commit, then finds the key taken and replays this order.
      const view = await db.transaction(async (tx) => {
        const placed = await placeOrder(tx, { type: 'PlaceOrder', orderId, userId: body.userId, items, currency, now: at }, { key, requestHash: hash }, { source: 'order', now: at });
        if (placed === undefined) throw new KeyTaken();
        return placed;
      });
      return await reply.code(201).header('location', `/orders/${orderId}`).header('etag', etag(view)).header(consistencyHeader, token(view)).send(view);
    } catch (error) {
      if (!(error instanceof KeyTaken)) throw error;
      const first = await replayKey(db, body.userId, key, hash);
      return reply.code(201).header('idempotent-replayed', 'true').header('etag', etag(first)).header(consistencyHeader, token(first)).send(first);
    }
  });

  app.get('/orders/:id', {
    schema: { tags: ['orders'], summary: 'One order', params: Type.Object({ id: Uuid }), response: { 200: OrderSchema, ...problems(400, 404) } },
  }, async (request, reply) => {
    const order = await getOrder(db, request.params.id);
    if (order === undefined) throw new NotFoundError(`no order ${request.params.id}`);
    return reply.header('etag', etag(order)).send(order);
  });

  app.get('/orders', {
    schema: {
      tags: ['orders'],
      summary: "A user's orders, newest first",
      querystring: Type.Object({
        userId: UserId,
        limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500 })),
        before: Type.Optional(Type.String({ format: 'date-time' })),
      }, { additionalProperties: false }),
      response: { 200: Type.Object({ items: Type.Array(OrderSchema) }), ...problems(400) },
    },
  }, async (request) => ({ items: await listOrders(db, request.query.userId, request.query.limit ?? 50, request.query.before) }));

  app.post('/orders/:id/cancel', {
    schema: {
      tags: ['orders'],
      summary: 'Cancels a PENDING order: stock is released and any payment refunded',
      params: Type.Object({ id: Uuid }),
      headers: Type.Object({ 'if-match': Type.Optional(Type.String({ maxLength: 200 })) }),
      body: Type.Object({ reason: Type.Optional(Type.String({ minLength: 1, maxLength: 500 })) }, { additionalProperties: false }),
      response: { 200: OrderSchema, ...problems(400, 404, 409, 412, 415) },
    },
  }, async (request, reply) => {
    const at = now();
    const { id } = request.params;
    const view = await db.transaction(async (tx) => {
      const current = await getOrder(tx, id);
      if (current === undefined) throw new NotFoundError(`no order ${id}`);
      const ifMatch = request.headers['if-match'];
      if (ifMatch !== undefined && ifMatch !== etag(current)) throw new ConflictError(`order is at ${etag(current)}, not ${ifMatch}`, 412);
      await executeOrderCommand(tx, id, { type: 'CancelOrder', reason: request.body.reason ?? 'cancelled by the user' }, { source: 'order', now: at });
      return getOrder(tx, id);
    });
    if (view === undefined) throw new NotFoundError(`no order ${id}`);
    return reply.header('etag', etag(view)).header(consistencyHeader, token(view)).send(view);
  });
}
