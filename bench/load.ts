// The open-loop load generator. Orders are sent on a fixed schedule (constant or
// Poisson arrivals) whatever the latency, and each latency is measured from the time
// the request was *scheduled*, so a stall shows as the queue of late requests behind
// it instead of vanishing (no coordinated omission). Every order carries an
// Idempotency-Key; network errors are retried with the same key, as a real client
// would. Each order is then followed to its final state, read from the order
// database: completion latency runs from the scheduled send to the commit of the
// final state.
import crypto from 'node:crypto';
import http from 'node:http';
import { userIdentity, type Db, type Identity } from '@converge/platform';
import type { Acknowledged } from '../system/invariants.ts';
import { waitUntilPriced } from '../services/order/service.ts';
import { Histogram, type Summary } from './histogram.ts';

export type Mix = { ok: number; outOfStock: number; declined: number };

export type Fixture = {
  /** Products with ample stock, and one with none (for out-of-stock orders). */
  products: string[];
  soldOut: string;
  /** Users with ample credit, and one with none (for declines). */
  users: string[];
  broke: string;
};

/** A bearer token for an identity: each order is placed as its user, the fixture made as merchant and operator. */
export type Sign = (identity: Identity) => Promise<string>;

export type LoadOptions = {
  orderUrl: string;
  fixture: Fixture;
  sign: Sign;
  rate: number;
  durationSec: number;
  arrival?: 'constant' | 'poisson';
  mix?: Mix;
  /** Where final states are read from; without it only placement is measured. */
  orderDb?: Db;
  /** How long to wait for the last orders to reach a final state. */
  settleTimeoutMs?: number;
  progress?: (line: string) => void;
  requestTimeoutMs?: number;
  random?: () => number;
  /**
   * Whether a 503 is asked again (a patient client riding out a restart; the default).
   * false: a 503 or 429 is counted as shed and not retried, as an overload step needs.
   */
  retryUnavailable?: boolean;
};

export type LoadReport = {
  offeredRate: number;
  achievedRate: number;
  durationSec: number;
  scheduled: number;
  acknowledged: Acknowledged[];
  placement: Summary;
  completion: Summary;
  errors: Record<string, number>;
  finals: Record<string, number>;
  /** Requests that were sent more than 10 ms after their scheduled time (generator saturated). */
  lateSends: number;
  /** When (performance.now()) a placement was last refused with 503 or 429, if one was. */
  lastShedAt: number | undefined;
  /** Placements refused with 503 or 429 (only counted when they are not retried), and how many said Retry-After. */
  shed: { unavailable: number; limited: number; withRetryAfter: number };
};

export const defaultMix: Mix = { ok: 0.9, outOfStock: 0.05, declined: 0.05 };

const pick = <T>(items: readonly T[], random: () => number): T => {
  const item = items[Math.floor(random() * items.length)];
  if (item === undefined) throw new Error('nothing to pick from');
  return item;
};

/** The body of one order of the mix: 1–5 distinct lines. */
export function makeOrder(
  fixture: Fixture,
  mix: Mix,
  random: () => number,
): { userId: string; items: { productId: string; quantity: number }[] } {
  const roll = random();
  const lines = 1 + Math.floor(random() * 5);
  const chosen = new Set<string>();
  while (chosen.size < Math.min(lines, fixture.products.length)) chosen.add(pick(fixture.products, random));
  const items = [...chosen].map((productId) => ({ productId, quantity: 1 + Math.floor(random() * 3) }));
  if (roll < mix.outOfStock)
    return {
      userId: pick(fixture.users, random),
      items: [...items.slice(0, 4), { productId: fixture.soldOut, quantity: 1 }],
    };
  if (roll < mix.outOfStock + mix.declined) return { userId: fixture.broke, items };
  return { userId: pick(fixture.users, random), items };
}

function schedule(rate: number, durationSec: number, arrival: 'constant' | 'poisson', random: () => number): number[] {
  const times: number[] = [];
  let t = 0;
  const end = durationSec * 1000;
  for (;;) {
    t += arrival === 'constant' ? 1000 / rate : (-Math.log(1 - random()) * 1000) / rate;
    if (t >= end) return times;
    times.push(t);
  }
}

// The generator shares the machine with what it measures, so it posts with node:http
// over kept-alive connections: a fraction of what fetch costs per request.
const agent = new http.Agent({ keepAlive: true, maxSockets: 512 });

export function getJson(
  url: string,
  timeoutMs = 10_000,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: unknown }> {
  return requestJson('GET', url, undefined, headers, timeoutMs);
}

function postJson(url: string, body: string, headers: Record<string, string>, timeoutMs: number): Promise<Answer> {
  return requestJson('POST', url, body, headers, timeoutMs);
}

type Answer = { status: number; body: unknown; retryAfter: string | undefined };

function requestJson(
  method: string,
  url: string,
  body: string | undefined,
  headers: Record<string, string>,
  timeoutMs: number,
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const request = http.request(
      url,
      {
        method,
        agent,
        timeout: timeoutMs,
        headers:
          body === undefined
            ? headers
            : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers },
      },
      (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () => {
          try {
            const retryAfter = response.headers['retry-after'];
            resolve({
              status: response.statusCode ?? 0,
              body: JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown,
              retryAfter: typeof retryAfter === 'string' ? retryAfter : undefined,
            });
          } catch (error) {
            reject(error instanceof Error ? error : new Error(String(error)));
          }
        });
        response.on('error', reject);
      },
    );
    request.on('timeout', () =>
      request.destroy(Object.assign(new Error('request timed out'), { name: 'TimeoutError' })),
    );
    request.on('error', reject);
    request.end(body);
  });
}

// Up to 20 attempts, 50 ms doubling to at most 1 s apart: about 15 s in all.
const maxAttempts = 20;
const retryDelay = (attempt: number) => Math.min(1000, 50 * 2 ** (attempt - 1));

export async function runLoad(options: LoadOptions): Promise<LoadReport> {
  const random = options.random ?? Math.random;
  const mix = options.mix ?? defaultMix;
  const times = schedule(options.rate, options.durationSec, options.arrival ?? 'constant', random);
  const placement = new Histogram();
  const errors: Record<string, number> = {};
  const acknowledged: Acknowledged[] = [];
  const placedAt = new Map<string, number>();
  let inFlight = 0;
  let lateSends = 0;
  let done = 0;
  const shed = { unavailable: 0, limited: 0, withRetryAfter: 0 };
  let lastShedAt: number | undefined;
  const retryUnavailable = options.retryUnavailable ?? true;
  const count = (kind: string) => (errors[kind] = (errors[kind] ?? 0) + 1);

  const send = async (scheduledAt: number) => {
    const order = makeOrder(options.fixture, mix, random);
    const key = crypto.randomUUID();
    // The order belongs to the caller: the user is the token's subject, not a field of the body.
    const body = JSON.stringify({ items: order.items });
    const authorization = `Bearer ${await options.sign(userIdentity(order.userId))}`;
    inFlight += 1;
    try {
      for (let attempt = 1; ; attempt++) {
        try {
          const response = await postJson(
            `${options.orderUrl}/orders`,
            body,
            { 'idempotency-key': key, authorization },
            options.requestTimeoutMs ?? 10_000,
          );
          const answer = response.body as { orderId?: string };
          if (response.status === 201 && typeof answer.orderId === 'string') {
            placement.record((performance.now() - scheduledAt) * 1000);
            acknowledged.push({ orderId: answer.orderId, userId: order.userId, idempotencyKey: key });
            placedAt.set(answer.orderId, performance.timeOrigin + scheduledAt);
            return;
          }
          // 409: our own earlier attempt is still in flight on the server; 503: the
          // service is there but its database is not. Both: ask again, same key.
          if (!retryUnavailable && (response.status === 503 || response.status === 429)) {
            lastShedAt = performance.now();
            if (response.status === 503) shed.unavailable += 1;
            else shed.limited += 1;
            if (response.retryAfter !== undefined && /^\d+$/.test(response.retryAfter)) shed.withRetryAfter += 1;
            return;
          }
          if ((response.status === 409 || response.status === 503) && attempt < maxAttempts) {
            await new Promise((r) => setTimeout(r, retryDelay(attempt)));
            continue;
          }
          count(`http ${response.status}`);
          return;
        } catch (error) {
          // A refused or dropped connection (a service restarting) is retried with the
          // same key for as long as a restart takes, as a patient client would.
          const kind = (error as Error).name === 'TimeoutError' ? 'timeout' : 'network';
          if (attempt >= maxAttempts) {
            count(kind);
            return;
          }
          await new Promise((r) => setTimeout(r, retryDelay(attempt)));
        }
      }
    } finally {
      inFlight -= 1;
      done += 1;
    }
  };

  const start = performance.now();
  const progress = setInterval(() => {
    const elapsed = (performance.now() - start) / 1000;
    options.progress?.(
      `t=${elapsed.toFixed(0)}s placed=${acknowledged.length} ` +
        `rate=${(done / Math.max(elapsed, 0.001)).toFixed(0)}/s p99=${placement.summary().p99}ms ` +
        `in-flight=${inFlight} errors=${Object.values(errors).reduce((a, b) => a + b, 0)}`,
    );
  }, 1000);
  const pending: Promise<void>[] = [];
  let next = 0;
  await new Promise<void>((resolve) => {
    const tick = () => {
      const now = performance.now() - start;
      while (next < times.length && (times[next] ?? Infinity) <= now) {
        const at = start + (times[next] ?? 0);
        if (now - (times[next] ?? 0) > 10) lateSends += 1;
        pending.push(send(at));
        next += 1;
      }
      if (next >= times.length) resolve();
      else setTimeout(tick, Math.max(0, Math.min(5, (times[next] ?? now) - now)));
    };
    tick();
  });
  await Promise.all(pending);
  const sendingSec = (performance.now() - start) / 1000;
  clearInterval(progress);

  const completion = new Histogram();
  const finals: Record<string, number> = {};
  if (options.orderDb !== undefined && acknowledged.length > 0) {
    const deadline = Date.now() + (options.settleTimeoutMs ?? 60_000);
    const ids = acknowledged.map((a) => a.orderId);
    let rows: { order_id: string; status: string; updated_at: Date }[];
    for (;;) {
      rows = [];
      for (let i = 0; i < ids.length; i += 5000) {
        rows.push(
          ...(await options.orderDb.query<{ order_id: string; status: string; updated_at: Date }>(
            'SELECT order_id, status, updated_at FROM orders WHERE order_id = ANY($1::uuid[])',
            [ids.slice(i, i + 5000)],
          )),
        );
      }
      if (rows.every((r) => r.status !== 'PENDING') || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    for (const row of rows) {
      finals[row.status] = (finals[row.status] ?? 0) + 1;
      const sentAt = placedAt.get(row.order_id);
      if (row.status !== 'PENDING' && sentAt !== undefined)
        completion.record((row.updated_at.getTime() - sentAt) * 1000);
    }
  }
  return {
    offeredRate: options.rate,
    achievedRate: acknowledged.length / sendingSec,
    durationSec: sendingSec,
    scheduled: times.length,
    acknowledged,
    placement: placement.summary(),
    completion: completion.summary(),
    errors,
    finals,
    lateSends,
    shed,
    lastShedAt,
  };
}

/** Creates the products and users a run needs, through the services' APIs. */
export async function prepareFixture(options: {
  inventoryUrl: string;
  paymentUrl: string;
  catalogue: 'spread' | 'hot';
  users?: number;
  sign: Sign;
  /** Resolves once the order service can price these products (its catalogue is fed by events). */
  waitUntilPriced?: (productIds: string[]) => Promise<void>;
}): Promise<Fixture> {
  const merchant = `Bearer ${await options.sign({ subject: 'load-merchant', roles: ['merchant'] })}`;
  const operator = `Bearer ${await options.sign({ subject: 'load-operator', roles: ['operator'] })}`;
  const post = async (url: string, body: unknown) => {
    const response = await fetch(url, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        authorization: url.startsWith(options.paymentUrl) ? operator : merchant,
      },
      body: JSON.stringify(body),
    });
    if (!response.ok) throw new Error(`POST ${url}: ${response.status} ${await response.text()}`);
    return (await response.json()) as { productId?: string };
  };
  const run = crypto.randomUUID().slice(0, 8);
  const count = options.catalogue === 'hot' ? 5 : 1000;
  const products: string[] = [];
  for (let i = 0; i < count; i += 50) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(50, count - i) }, (_, j) =>
        post(`${options.inventoryUrl}/products`, {
          name: `load ${run} #${i + j}`,
          price: 100 + ((i + j) % 50) * 10,
          stockQuantity: 1_000_000_000,
        }),
      ),
    );
    products.push(...batch.map((b) => b.productId ?? ''));
  }
  const soldOut =
    (await post(`${options.inventoryUrl}/products`, { name: `load ${run} sold out`, price: 100, stockQuantity: 0 }))
      .productId ?? '';
  const users = Array.from({ length: options.users ?? 100 }, (_, i) => `load-${run}-${i}`);
  await Promise.all(
    users.map((user) => post(`${options.paymentUrl}/users/${user}/credit`, { amount: 1_000_000_000_000 })),
  );
  const broke = `load-${run}-broke`;
  await post(`${options.paymentUrl}/users/${broke}/credit`, { amount: 1 });
  if (options.waitUntilPriced !== undefined) await options.waitUntilPriced([...products, soldOut]);
  else await new Promise((r) => setTimeout(r, 3000));
  return { products, soldOut, users, broke };
}

/** Waits until the order database's catalogue holds every product. */
export function pricedIn(orderDb: Db, timeoutMs = 60_000): (productIds: string[]) => Promise<void> {
  return async (productIds) => {
    const { ok, known } = await waitUntilPriced(orderDb, productIds, timeoutMs, 100);
    if (!ok) throw new Error(`the order service knows ${known} of ${productIds.length} products after ${timeoutMs} ms`);
  };
}
