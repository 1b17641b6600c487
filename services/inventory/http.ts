// Inventory's HTTP API: the catalogue and its stock. Writes commit the change and its
// event (ProductAdded, StockAdjusted) in one transaction; the relay publishes later.
import crypto from 'node:crypto';
import { Currency, Money, Quantity, Uuid } from '@converge/contracts';
import { ConflictError, NotFoundError, appendToOutbox, consistencyHeader, formatToken, problems, streamVersion, type Db, type HttpApp } from '@converge/platform';
import Type from 'typebox';
import type { Product } from './inventory.ts';
import { adjustStock, getProduct, insertProduct, listProducts } from './store.ts';

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
const IdempotencyHeader = Type.Object({ 'idempotency-key': Type.Optional(Type.String({ minLength: 1, maxLength: 200 })) });

export function registerInventoryRoutes(app: HttpApp, db: Db, now: () => Date): void {
  app.get('/products', {
    schema: {
      tags: ['inventory'],
      summary: 'The catalogue with stock levels',
      querystring: Type.Object({
        limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
        offset: Type.Optional(Type.Integer({ minimum: 0 })),
      }, { additionalProperties: false }),
      response: { 200: Type.Object({ items: Type.Array(ProductSchema) }), ...problems(400) },
    },
  }, async (request) => ({ items: await listProducts(db, request.query.limit ?? 100, request.query.offset ?? 0) }));

  app.get('/products/:id', {
    schema: { tags: ['inventory'], summary: 'One product', params: IdParams, response: { 200: ProductSchema, ...problems(400, 404) } },
  }, async (request) => {
    const product = await getProduct(db, request.params.id);
    if (product === undefined) throw new NotFoundError(`no product ${request.params.id}`);
    return product;
  });

  app.post('/products', {
    schema: {
      tags: ['inventory'],
      summary: 'Adds a product to the catalogue (idempotent when productId is given)',
      body: NewProduct,
      response: { 201: ProductSchema, 200: ProductSchema, ...problems(400, 409, 413, 415) },
    },
  }, async (request, reply) => {
    const at = now();
    const body = request.body;
    const product: Product = {
      productId: body.productId ?? crypto.randomUUID(), name: body.name, price: body.price,
      currency: body.currency ?? 'EUR', stockQuantity: body.stockQuantity, reserved: 0, sold: 0,
    };
    const created = await db.transaction(async (tx) => {
      if (!(await insertProduct(tx, product, at))) return false;
      await appendToOutbox(tx, { source: 'inventory', now: at }, [{
        type: 'ProductAdded', subject: product.productId,
        data: { productId: product.productId, name: product.name, price: product.price, currency: product.currency, stockQuantity: product.stockQuantity },
      }]);
      return true;
    });
    // Its ProductAdded is version 1 of the product's stream, whether just written or before.
    void reply.header(consistencyHeader, formatToken({ source: 'inventory', subject: product.productId, sequence: 1 }));
    if (created) return reply.code(201).header('location', `/products/${product.productId}`).send(product);
    const existing = await getProduct(db, product.productId);
    if (existing?.name !== product.name || existing.price !== product.price || existing.currency !== product.currency) {
      throw new ConflictError(`product ${product.productId} exists with other attributes`);
    }
    return reply.code(200).send(existing);
  });

  app.post('/products/:id/restock', {
    schema: {
      tags: ['inventory'],
      summary: 'Adds stock; an Idempotency-Key makes a retried request count once',
      params: IdParams,
      headers: IdempotencyHeader,
      body: Restock,
      response: { 200: ProductSchema, ...problems(400, 404, 409, 413, 415) },
    },
  }, async (request, reply) => {
    const at = now();
    const { id } = request.params;
    const reason = request.body.reason ?? 'restock';
    const key = request.headers['idempotency-key'];
    const product = await db.transaction(async (tx) => {
      const [exists] = await tx.query('SELECT 1 FROM products WHERE product_id = $1 FOR UPDATE', [id]);
      if (exists === undefined) throw new NotFoundError(`no product ${id}`);
      const adjusted = await adjustStock(tx, id, request.body.quantity, reason, key, at);
      if (adjusted === undefined) return undefined;
      await appendToOutbox(tx, { source: 'inventory', now: at }, [{
        type: 'StockAdjusted', subject: id,
        data: { productId: id, delta: request.body.quantity, reason, stockQuantity: adjusted.stockQuantity, reserved: adjusted.reserved, sold: adjusted.sold },
      }]);
      return adjusted;
    });
    // The product's stream as it stands: this restock, or (a retried key) the first one and anything since.
    void reply.header(consistencyHeader, formatToken({ source: 'inventory', subject: id, sequence: await streamVersion(db, id) }));
    if (product !== undefined) return product;
    const current = await getProduct(db, id);
    if (current === undefined) throw new NotFoundError(`no product ${id}`);
    return current;
  });
}
