// Reads of the query service, the read side, straight (no gateway), open loop like the
// order load: each request has its scheduled time and its latency counts from then, so
// a stall shows. The mix is what a shop's pages read: an order's summary (half), a
// product's availability (three tenths), a user's latest orders (a fifth). Orders are
// ones the read models hold; during a load step many of them are changing, so their
// cached documents are being invalidated while they are read. The reader is signed in
// (`headers`: every route of the query service wants an identity), as one who may read
// every order, so each read passes the same access check a customer's does.
import { Histogram, type Summary } from './histogram.ts';
import { getJson } from './load.ts';

export type ReadTargets = { orderIds: readonly string[]; productIds: readonly string[]; userIds: readonly string[] };
export type ReadReport = {
  rate: number;
  durationSec: number;
  all: Summary;
  orderSummary: Summary;
  product: Summary;
  userOrders: Summary;
  /** Answers other than 200, by status ("network" for no answer). */
  errors: Record<string, number>;
};

const kinds = [
  {
    name: 'orderSummary',
    share: 0.5,
    path: (t: ReadTargets, i: number) => `/orders/${t.orderIds[i % t.orderIds.length] ?? ''}`,
  },
  {
    name: 'product',
    share: 0.3,
    path: (t: ReadTargets, i: number) => `/products/${t.productIds[i % t.productIds.length] ?? ''}`,
  },
  {
    name: 'userOrders',
    share: 0.2,
    path: (t: ReadTargets, i: number) =>
      `/users/${encodeURIComponent(t.userIds[i % t.userIds.length] ?? '')}/orders?limit=20`,
  },
] as const;
type Kind = (typeof kinds)[number]['name'];

export async function runReads(options: {
  queryUrl: string;
  targets: ReadTargets;
  rate: number;
  durationSec: number;
  headers: Record<string, string>;
}): Promise<ReadReport> {
  const { queryUrl, targets, rate, durationSec, headers } = options;
  if (targets.orderIds.length === 0) throw new Error('no orders in the read models to read');
  const histograms = Object.fromEntries(kinds.map((k) => [k.name, new Histogram()])) as Record<Kind, Histogram>;
  const counters: Record<Kind, number> = { orderSummary: 0, product: 0, userOrders: 0 };
  const errors: Record<string, number> = {};
  const start = performance.now();
  const total = Math.round(rate * durationSec);
  const pending: Promise<void>[] = [];
  for (let i = 0; i < total; i++) {
    const at = start + (i * 1000) / rate;
    const wait = at - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    // A fixed cycle of twenty slots keeps the shares exact over any whole number of cycles.
    const slot = (i % 20) / 20;
    const kind = slot < 0.5 ? kinds[0] : slot < 0.8 ? kinds[1] : kinds[2];
    const n = (counters[kind.name] += 1);
    pending.push(
      getJson(`${queryUrl}${kind.path(targets, n)}`, 10_000, headers).then(
        (r) => {
          histograms[kind.name].record((performance.now() - at) * 1000);
          if (r.status !== 200) errors[String(r.status)] = (errors[String(r.status)] ?? 0) + 1;
        },
        () => {
          errors.network = (errors.network ?? 0) + 1;
        },
      ),
    );
  }
  await Promise.all(pending);
  const all = new Histogram();
  for (const h of Object.values(histograms)) all.merge(h);
  return {
    rate,
    durationSec,
    all: all.summary(),
    orderSummary: histograms.orderSummary.summary(),
    product: histograms.product.summary(),
    userOrders: histograms.userOrders.summary(),
    errors,
  };
}
