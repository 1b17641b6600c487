// Inventory's HTTP API: the catalogue and its stock. A handler parses, calls one store
// function and maps its answer; the writes commit the change and its event
// (ProductAdded, StockAdjusted) in one transaction, and the relay publishes later.
import crypto from 'node:crypto';
import { Currency, Money, Position, Quantity, Uuid } from '@converge/contracts';
import {
  NotFoundError,
  allow,
  signedIn,
  consistencyHeader,
  formatToken,
  problems,
  type Db,
  type HttpApp,
} from '@converge/platform';
import Type from 'typebox';
import { addProduct, getProduct, listProducts, restock } from './store.ts';

export const ProductSchema = Type.Object({
  productId: Uuid,
  name: Type.String(),
  price: Money,
  currency: Currency,
  stockQuantity: Type.Integer({ minimum: 0, description: 'available to reserve' }),
  reserved: Type.Integer({ minimum: 0 }),
  sold: Type.Integer({ minimum: 0 }),
});

export const NewProduct = Type.Object(
  {
    productId: Type.Optional(Uuid),
    name: Type.String({ minLength: 1, maxLength: 200 }),
    price: Money,
    currency: Type.Optional(Currency),
    stockQuantity: Type.Integer({ minimum: 0, maximum: 1_000_000_000 }),
  },
  { additionalProperties: false },
);

const Restock = Type.Object(
  { quantity: Quantity, reason: Type.Optional(Type.String({ minLength: 1, maxLength: 500 })) },
  { additionalProperties: false },
);

const IdParams = Type.Object({ id: Uuid });
const IdempotencyHeader = Type.Object({
  'idempotency-key': Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
});

export function registerInventoryRoutes(app: HttpApp, db: Db, now: () => Date): void {
  app.get(
    '/products',
    {
      config: { access: signedIn },
      schema: {
        tags: ['inventory'],
        summary: 'The catalogue with stock levels',
        querystring: Type.Object(
          {
            limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
            offset: Type.Optional(Position),
          },
          { additionalProperties: false },
        ),
        response: { 200: Type.Object({ items: Type.Array(ProductSchema) }), ...problems(400) },
      },
    },
    async (request) => ({ items: await listProducts(db, request.query.limit ?? 100, request.query.offset ?? 0) }),
  );

  app.get(
    '/products/:id',
    {
      config: { access: signedIn },
      schema: {
        tags: ['inventory'],
        summary: 'One product',
        params: IdParams,
        response: { 200: ProductSchema, ...problems(400, 404) },
      },
    },
    async (request) => {
      const product = await getProduct(db, request.params.id);
      if (product === undefined) throw new NotFoundError(`no product ${request.params.id}`);
      return product;
    },
  );

  app.post(
    '/products',
    {
      config: { access: allow('merchant') },
      schema: {
        tags: ['inventory'],
        summary: 'Adds a product to the catalogue (idempotent when productId is given)',
        body: NewProduct,
        response: { 201: ProductSchema, 200: ProductSchema, ...problems(400, 409, 413, 415) },
      },
    },
    async (request, reply) => {
      const body = request.body;
      const productId = body.productId ?? crypto.randomUUID();
      // Its ProductAdded is version 1 of the product's stream, whether just written or before.
      void reply.header(consistencyHeader, formatToken({ source: 'inventory', subject: productId, sequence: 1 }));
      const { product, created } = await addProduct(
        db,
        {
          productId,
          name: body.name,
          price: body.price,
          currency: body.currency ?? 'EUR',
          stockQuantity: body.stockQuantity,
          reserved: 0,
          sold: 0,
        },
        now(),
      );
      if (created) return reply.code(201).header('location', `/products/${productId}`).send(product);
      return reply.code(200).send(product);
    },
  );

  app.post(
    '/products/:id/restock',
    {
      config: { access: allow('merchant') },
      schema: {
        tags: ['inventory'],
        summary: 'Adds stock; an Idempotency-Key makes a retried request count once',
        params: IdParams,
        headers: IdempotencyHeader,
        body: Restock,
        response: { 200: ProductSchema, ...problems(400, 404, 409, 413, 415) },
      },
    },
    async (request, reply) => {
      const { id } = request.params;
      const { product, version } = await restock(
        db,
        id,
        request.body.quantity,
        request.body.reason ?? 'restock',
        request.headers['idempotency-key'],
        now(),
      );
      return reply
        .header(consistencyHeader, formatToken({ source: 'inventory', subject: id, sequence: version }))
        .send(product);
    },
  );
}
