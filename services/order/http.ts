// The order API: each handler parses, calls one function of the store or of placement
// (place.ts: pricing and the Idempotency-Key) and maps the result to HTTP. The outcome
// of an order follows asynchronously, through its events. An order belongs to the
// authenticated caller who placed it (the token's subject; the body names no user), and
// only its owner or an operator sees or cancels it: to anyone else it does not exist.
import { OrderStatus, Quantity, Timestamp, Uuid, UserId } from '@converge/contracts';
import {
  NotFoundError,
  actsFor,
  allow,
  callerOf,
  consistencyHeader,
  formatToken,
  problems,
  type Db,
  type HttpApp,
} from '@converge/platform';
import Type from 'typebox';
import { orderPlacement, type PlacementOptions } from './place.ts';
import { cancelOrder, etagOf as etag, getOrder, listOrders, type OrderView } from './store.ts';

export const PlaceOrder = Type.Object(
  {
    items: Type.Array(Type.Object({ productId: Uuid, quantity: Quantity }, { additionalProperties: false }), {
      minItems: 1,
      maxItems: 100,
    }),
  },
  {
    additionalProperties: false,
    description: 'The order belongs to the authenticated caller (the token subject); the body names no user.',
  },
);

export const OrderSchema = Type.Object({
  orderId: Uuid,
  userId: Type.String(),
  status: OrderStatus,
  items: Type.Array(Type.Object({ productId: Uuid, quantity: Type.Integer(), unitPrice: Type.Integer() })),
  totalAmount: Type.Integer(),
  currency: Type.String(),
  reason: Type.Optional(Type.String()),
  version: Type.Integer(),
  createdAt: Type.String({ format: 'date-time' }),
  updatedAt: Type.String({ format: 'date-time' }),
});

/** The order's stream at this version: a read model that has applied it shows this write. */
const token = (order: OrderView) => formatToken({ source: 'order', subject: order.orderId, sequence: order.version });

/** A customer sees their own orders; an operator (or another service) any. */
const readers = allow('customer', 'operator', 'service');

export function registerOrderRoutes(app: HttpApp, db: Db, now: () => Date, placement?: PlacementOptions): void {
  const place = orderPlacement(db, placement);
  app.post(
    '/orders',
    {
      config: { access: allow('customer') },
      schema: {
        tags: ['orders'],
        summary: 'Places an order (PENDING) for the caller; the outcome follows asynchronously',
        headers: Type.Object({ 'idempotency-key': Type.String({ minLength: 1, maxLength: 200 }) }),
        body: PlaceOrder,
        response: { 201: OrderSchema, ...problems(400, 401, 403, 409, 413, 415, 422) },
      },
    },
    async (request, reply) => {
      const userId = callerOf(request).subject;
      const { order, replayed } = await place(
        { userId, items: request.body.items },
        request.headers['idempotency-key'],
        now(),
      );
      if (replayed)
        return reply
          .code(201)
          .header('idempotent-replayed', 'true')
          .header('etag', etag(order))
          .header(consistencyHeader, token(order))
          .send(order);
      return reply
        .code(201)
        .header('location', `/orders/${order.orderId}`)
        .header('etag', etag(order))
        .header(consistencyHeader, token(order))
        .send(order);
    },
  );

  app.get(
    '/orders/:id',
    {
      config: { access: readers },
      schema: {
        tags: ['orders'],
        summary: "One order (the caller's own, or any for an operator)",
        params: Type.Object({ id: Uuid }),
        response: { 200: OrderSchema, ...problems(400, 401, 403, 404) },
      },
    },
    async (request, reply) => {
      const order = await getOrder(db, request.params.id);
      if (order === undefined || !actsFor(callerOf(request), order.userId))
        throw new NotFoundError(`no order ${request.params.id}`);
      return reply.header('etag', etag(order)).send(order);
    },
  );

  app.get(
    '/orders',
    {
      config: { access: readers },
      schema: {
        tags: ['orders'],
        summary: "A user's orders, newest first (the caller's own unless an operator names another)",
        querystring: Type.Object(
          {
            userId: Type.Optional(UserId),
            limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500 })),
            before: Type.Optional(Timestamp),
          },
          { additionalProperties: false },
        ),
        response: { 200: Type.Object({ items: Type.Array(OrderSchema) }), ...problems(400, 401, 403, 404) },
      },
    },
    async (request) => {
      const caller = callerOf(request);
      const userId = request.query.userId ?? caller.subject;
      if (!actsFor(caller, userId)) throw new NotFoundError(`no orders of ${userId}`);
      return { items: await listOrders(db, userId, request.query.limit ?? 50, request.query.before) };
    },
  );

  app.post(
    '/orders/:id/cancel',
    {
      config: { access: readers },
      schema: {
        tags: ['orders'],
        summary: 'Cancels a PENDING order: stock is released and any payment refunded',
        params: Type.Object({ id: Uuid }),
        headers: Type.Object({ 'if-match': Type.Optional(Type.String({ maxLength: 200 })) }),
        body: Type.Object(
          { reason: Type.Optional(Type.String({ minLength: 1, maxLength: 500 })) },
          { additionalProperties: false },
        ),
        response: { 200: OrderSchema, ...problems(400, 401, 403, 404, 409, 412, 415) },
      },
    },
    async (request, reply) => {
      const view = await cancelOrder(
        db,
        request.params.id,
        request.body.reason ?? 'cancelled by the user',
        request.headers['if-match'],
        now(),
        (order) => actsFor(callerOf(request), order.userId),
      );
      return reply.header('etag', etag(view)).header(consistencyHeader, token(view)).send(view);
    },
  );
}
