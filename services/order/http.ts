// The order API: each handler parses, calls one function of the store or of placement
// (place.ts: pricing and the Idempotency-Key) and maps the result to HTTP. The outcome
// of an order follows asynchronously, through its events.
import { OrderStatus, Quantity, Uuid, UserId } from '@converge/contracts';
import { NotFoundError, consistencyHeader, formatToken, problems, type Db, type HttpApp } from '@converge/platform';
import Type from 'typebox';
import { orderPlacement } from './place.ts';
import { cancelOrder, etagOf as etag, getOrder, listOrders, type OrderView } from './store.ts';

export const PlaceOrder = Type.Object(
  {
    userId: UserId,
    items: Type.Array(Type.Object({ productId: Uuid, quantity: Quantity }, { additionalProperties: false }), {
      minItems: 1,
      maxItems: 100,
    }),
  },
  { additionalProperties: false },
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

export function registerOrderRoutes(app: HttpApp, db: Db, now: () => Date): void {
  const place = orderPlacement(db);
  app.post(
    '/orders',
    {
      schema: {
        tags: ['orders'],
        summary: 'Places an order (PENDING); the outcome follows asynchronously',
        headers: Type.Object({ 'idempotency-key': Type.String({ minLength: 1, maxLength: 200 }) }),
        body: PlaceOrder,
        response: { 201: OrderSchema, ...problems(400, 409, 413, 415, 422) },
      },
    },
    async (request, reply) => {
      const { order, replayed } = await place(request.body, request.headers['idempotency-key'], now());
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
      schema: {
        tags: ['orders'],
        summary: 'One order',
        params: Type.Object({ id: Uuid }),
        response: { 200: OrderSchema, ...problems(400, 404) },
      },
    },
    async (request, reply) => {
      const order = await getOrder(db, request.params.id);
      if (order === undefined) throw new NotFoundError(`no order ${request.params.id}`);
      return reply.header('etag', etag(order)).send(order);
    },
  );

  app.get(
    '/orders',
    {
      schema: {
        tags: ['orders'],
        summary: "A user's orders, newest first",
        querystring: Type.Object(
          {
            userId: UserId,
            limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500 })),
            before: Type.Optional(Type.String({ format: 'date-time' })),
          },
          { additionalProperties: false },
        ),
        response: { 200: Type.Object({ items: Type.Array(OrderSchema) }), ...problems(400) },
      },
    },
    async (request) => ({
      items: await listOrders(db, request.query.userId, request.query.limit ?? 50, request.query.before),
    }),
  );

  app.post(
    '/orders/:id/cancel',
    {
      schema: {
        tags: ['orders'],
        summary: 'Cancels a PENDING order: stock is released and any payment refunded',
        params: Type.Object({ id: Uuid }),
        headers: Type.Object({ 'if-match': Type.Optional(Type.String({ maxLength: 200 })) }),
        body: Type.Object(
          { reason: Type.Optional(Type.String({ minLength: 1, maxLength: 500 })) },
          { additionalProperties: false },
        ),
        response: { 200: OrderSchema, ...problems(400, 404, 409, 412, 415) },
      },
    },
    async (request, reply) => {
      const view = await cancelOrder(
        db,
        request.params.id,
        request.body.reason ?? 'cancelled by the user',
        request.headers['if-match'],
        now(),
      );
      return reply.header('etag', etag(view)).header(consistencyHeader, token(view)).send(view);
    },
  );
}
