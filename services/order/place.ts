// Placing an order. The server prices every line from its catalogue (a client never
// sends prices; a product's price, once found, is remembered, since it never changes).
// The Idempotency-Key is claimed by the transaction that creates the order: the claim
// with its response and the orders row are one statement, OrderCreated the next. A
// concurrent request with the same key waits for that commit, then finds the key taken
// and replays the first response; a different body under the key is refused (422); a
// request that dies leaves no claim behind. Bad input is refused before anything is
// written.
import crypto from 'node:crypto';
import type { OrderLine } from '@converge/contracts';
import { ConflictError, InvalidError, appendToOutbox, type AppendContext, type Db, type Sql } from '@converge/platform';
import { decide, evolve, initialOrder, type OrderCommand } from './order.ts';
import { viewOf, type OrderView } from './store.ts';

export type PlaceOrderRequest = { userId: string; items: readonly { productId: string; quantity: number }[] };
/** The order placed, or (`replayed`) the one the first request under this key placed. */
export type Placement = { order: OrderView; replayed: boolean };
export type Price = { price: number; currency: string };

export function requestHash(body: PlaceOrderRequest): string {
  const canonical = JSON.stringify({ userId: body.userId, items: body.items.map((i) => [i.productId, i.quantity]) });
  return crypto.createHash('sha256').update(canonical).digest('hex');
}

/** Places orders on `db`, pricing them from its catalogue with the prices this process remembers. */
export function orderPlacement(db: Db): (request: PlaceOrderRequest, key: string, now: Date) => Promise<Placement> {
  const prices = cataloguePrices(db);
  return async (request, key, now) => {
    const hash = requestHash(request);
    // A replay is rare, so it is not looked for first: it prices and places like a new
    // order, finds its key taken before writing anything and answers the first response.
    const { items, currency } = await priceOrder(prices, request);
    const orderId = crypto.randomUUID();
    try {
      const order = await db.transaction(async (tx) => {
        const placed = await insertOrder(
          tx,
          { type: 'PlaceOrder', orderId, userId: request.userId, items, currency, now },
          { key, requestHash: hash },
          { source: 'order', now },
        );
        if (placed === undefined) throw new KeyTaken();
        return placed;
      });
      return { order, replayed: false };
    } catch (error) {
      if (!(error instanceof KeyTaken)) throw error;
      return { order: await replayKey(db, request.userId, key, hash), replayed: true };
    }
  };
}

/** Rolls the placing transaction back when the key turns out to be taken. */
class KeyTaken extends Error {}

type KeyRow = { request_hash: string; response_body: OrderView };

/** What the first request with this key got: its order again, or 422 for another body. */
async function replayKey(db: Db, userId: string, key: string, hash: string): Promise<OrderView> {
  const [row] = await db.query<KeyRow>(
    'SELECT request_hash, response_body FROM idempotency_keys WHERE user_id = $1 AND key = $2',
    [userId, key],
  );
  // The key was taken by a transaction that committed; a row always holds its response.
  if (row === undefined) throw new ConflictError('a request with this Idempotency-Key is being placed; retry');
  if (row.request_hash !== hash) throw new InvalidError('this Idempotency-Key was used with a different request body');
  return row.response_body;
}

type PricesOf = (productIds: readonly string[]) => Promise<Map<string, Price>>;

async function priceOrder(
  pricesOf: PricesOf,
  body: PlaceOrderRequest,
): Promise<{ items: OrderLine[]; currency: string }> {
  const ids = body.items.map((i) => i.productId);
  if (new Set(ids).size !== ids.length)
    throw new InvalidError('each product may appear in one line only', ['items: duplicate productId']);
  const prices = await pricesOf(ids);
  const unknown = ids.filter((id) => !prices.has(id));
  if (unknown.length > 0)
    throw new InvalidError(
      'unknown product',
      unknown.map((id) => `items: unknown product ${id}`),
    );
  const currencies = new Set([...prices.values()].map((p) => p.currency));
  const [currency] = currencies;
  if (currency === undefined || currencies.size > 1)
    throw new InvalidError('all products of an order must share one currency');
  const items = body.items.map((line) => ({
    productId: line.productId,
    quantity: line.quantity,
    unitPrice: prices.get(line.productId)?.price ?? 0,
  }));
  const total = items.reduce((sum, l) => sum + l.quantity * l.unitPrice, 0);
  if (!Number.isSafeInteger(total)) throw new InvalidError('order total is too large');
  return { items, currency };
}

/** The first response under an Idempotency-Key, claimed by the transaction that places its order. */
type KeyClaim = { key: string; requestHash: string };

/**
 * Places a new order, claiming `claim` with its response, inside `tx`: the claim and the
 * order's row are one statement, its OrderCreated the next. Resolves to undefined, with
 * nothing written, when the key was taken (a concurrent request with the same key waits
 * here for the first one's commit).
 */
async function insertOrder(
  tx: Sql,
  command: Extract<OrderCommand, { type: 'PlaceOrder' }>,
  claim: KeyClaim,
  context: AppendContext,
): Promise<OrderView | undefined> {
  // A new order's id was just drawn at random: there is no stream to load or lock.
  const events = decide(command, initialOrder);
  const order = events.reduce(evolve, initialOrder);
  if (order.status === 'NONE') throw new Error(`order ${command.orderId} was not created`);
  const view = viewOf(order, context.now);
  const [placed] = await tx.query(
    `WITH claimed AS (
       INSERT INTO idempotency_keys
              (user_id, key, request_hash, state, order_id, response_status, response_body, created_at)
       VALUES ($2, $9, $10, 'done', $1, 201, $11::jsonb, $8) ON CONFLICT DO NOTHING RETURNING order_id
     )
     INSERT INTO orders
            (order_id, user_id, status, items, total_amount, currency, reason, version, created_at, updated_at)
     SELECT order_id, $2::text, 'PENDING', $3::jsonb, $4::bigint, $5::text, NULL, $6::int,
            $7::timestamptz, $8::timestamptz
       FROM claimed
     RETURNING 1`,
    [
      order.orderId,
      order.userId,
      JSON.stringify(order.items),
      order.totalAmount,
      order.currency,
      order.version,
      order.createdAt,
      context.now,
      claim.key,
      claim.requestHash,
      JSON.stringify(view),
    ],
  );
  if (placed === undefined) return undefined;
  await appendToOutbox(
    tx,
    context,
    events.map((e) => ({ ...e, subject: order.orderId })),
    initialOrder.version,
  );
  return view;
}

async function priceLines(db: Sql, productIds: readonly string[]): Promise<Map<string, Price>> {
  const rows = await db.query<{ product_id: string; price: number; currency: string }>(
    'SELECT product_id, price, currency FROM catalogue WHERE product_id = ANY($1::uuid[])',
    [productIds],
  );
  return new Map(rows.map((r) => [r.product_id, { price: r.price, currency: r.currency }]));
}

/**
 * Prices from the catalogue, remembered by this process: a product's price and currency
 * never change once it is added (inventory emits ProductAdded once per product and
 * refuses its id again with other attributes), so a placement whose products were all
 * seen before sends no lookup. A product not found is looked up every time: its
 * ProductAdded may arrive any moment. The least recently added go first beyond `maxEntries`.
 */
function cataloguePrices(db: Sql, maxEntries = 10_000): PricesOf {
  const known = new Map<string, Price>();
  return async (productIds) => {
    const missing = productIds.filter((id) => !known.has(id));
    if (missing.length > 0) {
      for (const [id, price] of await priceLines(db, missing)) known.set(id, price);
      for (const oldest of known.keys()) {
        if (known.size <= maxEntries) break;
        known.delete(oldest);
      }
    }
    return new Map(
      productIds.flatMap((id) => {
        const price = known.get(id);
        return price === undefined ? [] : [[id, price] as const];
      }),
    );
  };
}
