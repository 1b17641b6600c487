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
import { ConflictError, InvalidError, appendCaused, type Db, type Sql } from '@converge/platform';
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

export type PlacementOptions = {
  /**
   * How long the first placement waiting for a transaction may wait for others to join it
   * (0: it goes as soon as a transaction is free). Placements that arrive while the
   * transactions are busy join the next one either way.
   */
  lingerMs?: number;
  /** Placing transactions in flight at once. */
  concurrency?: number;
  /** At most this many placements share a transaction. */
  maxBatch?: number;
};

/** A priced placement waiting for its transaction. */
type Waiting = {
  command: Extract<OrderCommand, { type: 'PlaceOrder' }>;
  claim: KeyClaim;
  at: number;
  resolve: (placement: Placement) => void;
  reject: (error: unknown) => void;
};

/**
 * Places orders on `db`, pricing them from its catalogue with the prices this process
 * remembers. Placements that arrive together commit together: one transaction, one
 * statement for their claims and rows, one for their OrderCreated events, one commit.
 * Each still gets its own answer: its order, the first response under its key, or its
 * own error (a batch that fails is placed again one by one, so a fault is its own).
 */
export function orderPlacement(
  db: Db,
  options: PlacementOptions = {},
): (request: PlaceOrderRequest, key: string, now: Date) => Promise<Placement> {
  const prices = cataloguePrices(db);
  const { lingerMs = 0, concurrency = 2, maxBatch = 100 } = options;
  const waiting: Waiting[] = [];
  let inFlight = 0;
  let lingering: NodeJS.Timeout | undefined;

  const lingers = (): boolean => {
    const first = waiting[0];
    if (lingerMs <= 0 || first === undefined || waiting.length >= maxBatch) return false;
    const left = first.at + lingerMs - performance.now();
    if (left <= 0) return false;
    lingering ??= setTimeout(() => {
      lingering = undefined;
      pump();
    }, left);
    return true;
  };

  function pump(): void {
    while (inFlight < concurrency && waiting.length > 0 && !lingers()) {
      const batch = waiting.splice(0, maxBatch);
      inFlight += 1;
      void placeTogether(db, batch).finally(() => {
        inFlight -= 1;
        pump();
      });
    }
  }

  return async (request, key, now) => {
    // A replay is rare, so it is not looked for first: it prices and places like a new
    // order, finds its key taken before writing anything and answers the first response.
    const { items, currency } = await priceOrder(prices, request);
    const command = {
      type: 'PlaceOrder' as const,
      orderId: crypto.randomUUID(),
      userId: request.userId,
      items,
      currency,
      now,
    };
    return new Promise<Placement>((resolve, reject) => {
      waiting.push({
        command,
        claim: { key, requestHash: requestHash(request) },
        at: performance.now(),
        resolve,
        reject,
      });
      pump();
    });
  };
}

/** Places a batch in one transaction; if it fails, each alone, so that a failure is only its own. */
async function placeTogether(db: Db, batch: readonly Waiting[]): Promise<void> {
  let placed: (OrderView | undefined)[];
  try {
    placed = await db.transaction((tx) => insertOrders(tx, batch));
  } catch (error) {
    if (batch.length === 1) {
      batch[0]?.reject(error);
      return;
    }
    await Promise.all(batch.map((one) => placeTogether(db, [one])));
    return;
  }
  await Promise.all(
    batch.map(async ({ command, claim, resolve, reject }, k) => {
      const order = placed[k];
      if (order !== undefined) return resolve({ order, replayed: false });
      try {
        resolve({ order: await replayKey(db, command.userId, claim.key, claim.requestHash), replayed: true });
      } catch (error) {
        reject(error);
      }
    }),
  );
}

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
 * Places new orders inside `tx`, each claiming its Idempotency-Key with its response: the
 * claims and the orders' rows are one statement, their OrderCreated events the next. An
 * order whose key was taken (by an earlier request, or by another of this batch) is not
 * written and comes back undefined; a concurrent request with the same key waits here for
 * the first one's commit. Rows go in key order, so two batches never wait on each other.
 */
async function insertOrders(tx: Sql, batch: readonly Waiting[]): Promise<(OrderView | undefined)[]> {
  // A new order's id was just drawn at random: there is no stream to load or lock.
  const decided = batch.map(({ command, claim }) => {
    const events = decide(command, initialOrder);
    const order = events.reduce(evolve, initialOrder);
    if (order.status === 'NONE') throw new Error(`order ${command.orderId} was not created`);
    return { order, events, claim, now: command.now, view: viewOf(order, command.now) };
  });
  const rows = decided
    .map(({ order, claim, now, view }) => ({
      order_id: order.orderId,
      user_id: order.userId,
      key: claim.key,
      request_hash: claim.requestHash,
      items: order.items,
      total_amount: order.totalAmount,
      currency: order.currency,
      version: order.version,
      created_at: order.createdAt,
      now,
      response: view,
    }))
    .sort((a, b) => (a.user_id === b.user_id ? cmp(a.key, b.key) : cmp(a.user_id, b.user_id)));
  const inserted = await tx.query<{ order_id: string }>(
    `WITH input AS (
       SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(order_id uuid, user_id text, key text, request_hash text,
              items jsonb, total_amount bigint, currency text, version int, created_at timestamptz,
              now timestamptz, response jsonb)
     ), claimed AS (
       INSERT INTO idempotency_keys
              (user_id, key, request_hash, state, order_id, response_status, response_body, created_at)
       SELECT user_id, key, request_hash, 'done', order_id, 201, response, now FROM input
       ON CONFLICT DO NOTHING RETURNING order_id
     )
     INSERT INTO orders
            (order_id, user_id, status, items, total_amount, currency, reason, version, created_at, updated_at)
     SELECT order_id, user_id, 'PENDING', items, total_amount, currency, NULL, version, created_at, now
       FROM input WHERE order_id IN (SELECT order_id FROM claimed)
     RETURNING order_id::text`,
    [JSON.stringify(rows)],
  );
  const placed = new Set(inserted.map((r) => r.order_id));
  const created = decided.filter(({ order }) => placed.has(order.orderId));
  await appendCaused(
    tx,
    created.map(({ order, events, now }) => ({
      context: { source: 'order', now },
      events: events.map((e) => ({ ...e, subject: order.orderId })),
      expectedVersion: initialOrder.version,
    })),
  );
  return decided.map(({ order, view }) => (placed.has(order.orderId) ? view : undefined));
}

const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

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
