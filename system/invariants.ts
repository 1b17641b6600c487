// The invariant checker: DESIGN.md's invariants 1–5 and 7–9, checked across the order,
// inventory and payment databases and the payment provider's books (and, when the
// orchestrator's database is given, its sagas: each final and agreeing with its order)
// after the system went quiet. It reads the databases directly (not the APIs), so it checks what was
// stored, and reports every violation with the evidence. Used by the end-to-end tests,
// the chaos suite and the benchmark.
import type { Db } from '@converge/platform';
import type { Envelope } from '@converge/contracts';
import { paymentIdFor } from '../services/payment/service.ts';
import {
  allAvailability,
  allUserOrders,
  foldReadModels,
  type SourceEvent,
  type OrderSummary,
} from '../services/query/service.ts';

export type CheckedDbs = { order: Db; inventory: Db; payment: Db; provider: Db; orchestrator?: Db; query?: Db };

/** The services whose outbox, holds, dead letters and queue the checker looks at. */
const servicesOf = (dbs: CheckedDbs): Record<string, Db> => ({
  order: dbs.order,
  inventory: dbs.inventory,
  payment: dbs.payment,
  ...(dbs.orchestrator === undefined ? {} : { orchestrator: dbs.orchestrator }),
  ...(dbs.query === undefined ? {} : { query: dbs.query }),
});

export type Acknowledged = { orderId: string; userId: string; idempotencyKey: string };

export type CheckInput = {
  dbs: CheckedDbs;
  /** Orders the API answered 201 for. */
  acknowledged?: readonly Acknowledged[];
  /** Messages waiting in each service's queue. */
  queueDepth?: (service: string) => Promise<number>;
  /** Dead letters expected (e.g. injected poison); anything else is a violation. */
  expectedDeadLetters?: number;
  /** In orchestration mode every order must have a saga that agrees with it. */
  sagaMode?: 'choreography' | 'orchestration';
};

export type Violation = { invariant: number; message: string; evidence: unknown };

export type Report = { ok: boolean; violations: Violation[]; summary: Record<string, number> };

type OrderRow = {
  order_id: string;
  user_id: string;
  status: string;
  total_amount: number;
  items: { productId: string; quantity: number }[];
};

export async function checkInvariants({
  dbs,
  acknowledged = [],
  queueDepth,
  expectedDeadLetters = 0,
  sagaMode = 'choreography',
}: CheckInput): Promise<Report> {
  const violations: Violation[] = [];
  const fail = (invariant: number, message: string, evidence: unknown) =>
    violations.push({ invariant, message, evidence });

  const orders = await dbs.order.query<OrderRow>('SELECT order_id, user_id, status, total_amount, items FROM orders');
  const byId = new Map(orders.map((o) => [o.order_id, o]));
  const products = await dbs.inventory.query<{
    product_id: string;
    stock_quantity: number;
    reserved: number;
    sold: number;
    adjusted: number;
  }>(
    `SELECT p.product_id, p.stock_quantity, p.reserved, p.sold, coalesce(sum(a.delta), 0)::int AS adjusted
       FROM products p LEFT JOIN stock_adjustments a USING (product_id) GROUP BY p.product_id`,
  );
  const reservations = new Map(
    (await dbs.inventory.query<{ order_id: string; status: string }>('SELECT order_id, status FROM reservations')).map(
      (r) => [r.order_id, r.status],
    ),
  );
  const payments = new Map(
    (
      await dbs.payment.query<{ order_id: string; status: string; amount: number }>(
        'SELECT order_id, status, amount FROM payments',
      )
    ).map((p) => [p.order_id, p]),
  );
  const charges = new Map(
    (
      await dbs.provider.query<{ payment_id: string; status: string; amount: number }>(
        'SELECT payment_id, status, amount FROM provider_charges',
      )
    ).map((c) => [c.payment_id, c]),
  );

  // 1. Stock is conserved, never negative, nothing stays reserved.
  for (const p of products) {
    if (p.adjusted !== p.stock_quantity + p.reserved + p.sold) {
      fail(
        1,
        `stock of ${p.product_id} not conserved: adjustments ${p.adjusted} ` +
          `≠ available ${p.stock_quantity} + reserved ${p.reserved} + sold ${p.sold}`,
        p,
      );
    }
    if (p.stock_quantity < 0 || p.reserved < 0 || p.sold < 0) fail(1, `negative stock on ${p.product_id}`, p);
    if (p.reserved !== 0)
      fail(1, `${p.reserved} units of ${p.product_id} still reserved after the system went quiet`, p);
  }

  // 2. sold = quantity over COMPLETED orders.
  const soldByOrders = new Map<string, number>();
  for (const o of orders) {
    if (o.status !== 'COMPLETED') continue;
    for (const line of o.items)
      soldByOrders.set(line.productId, (soldByOrders.get(line.productId) ?? 0) + line.quantity);
  }
  for (const p of products) {
    const expected = soldByOrders.get(p.product_id) ?? 0;
    if (p.sold !== expected)
      fail(2, `sold ${p.sold} of ${p.product_id} but COMPLETED orders hold ${expected}`, {
        productId: p.product_id,
        sold: p.sold,
        expected,
      });
  }

  // 3. Every acknowledged order exists; every order is final.
  for (const ack of acknowledged) {
    if (!byId.has(ack.orderId)) fail(3, `acknowledged order ${ack.orderId} does not exist`, ack);
  }
  const pending = orders.filter((o) => o.status === 'PENDING');
  if (pending.length > 0)
    fail(
      3,
      `${pending.length} orders are still PENDING`,
      pending.slice(0, 5).map((o) => o.order_id),
    );

  // 4. No double charge: net charge = total for COMPLETED, 0 otherwise.
  let netCaptured = 0;
  let completedTotal = 0;
  for (const o of orders) {
    const charge = charges.get(paymentIdFor(o.order_id));
    const net = charge?.status === 'captured' ? charge.amount : 0;
    netCaptured += net;
    if (o.status === 'COMPLETED') {
      completedTotal += o.total_amount;
      if (net !== o.total_amount)
        fail(4, `COMPLETED order ${o.order_id} has net charge ${net}, expected ${o.total_amount}`, {
          order: o.order_id,
          charge,
        });
    } else if (net !== 0) {
      fail(4, `${o.status} order ${o.order_id} has net charge ${net}`, { order: o.order_id, charge });
    }
  }
  const orderPayments = new Set(orders.map((o) => paymentIdFor(o.order_id)));
  const orphanCharges = [...charges.keys()].filter((id) => !orderPayments.has(id));
  if (orphanCharges.length > 0)
    fail(4, `${orphanCharges.length} provider charges belong to no order`, orphanCharges.slice(0, 5));
  if (netCaptured !== completedTotal)
    fail(4, `captured − refunded = ${netCaptured} but COMPLETED orders total ${completedTotal}`, {
      netCaptured,
      completedTotal,
    });
  const [books] = await dbs.provider.query<{ credit: number; deposited: number; captured: number }>(
    `SELECT (SELECT coalesce(sum(credit), 0) FROM provider_accounts)::bigint AS credit,
            (SELECT coalesce(sum(deposited), 0) FROM provider_accounts)::bigint AS deposited,
            (SELECT coalesce(sum(amount), 0) FROM provider_charges WHERE status = 'captured')::bigint AS captured`,
  );
  if (books !== undefined && books.credit + books.captured !== books.deposited) {
    fail(
      4,
      `money not conserved: credit ${books.credit} + captured ${books.captured} ≠ deposited ${books.deposited}`,
      books,
    );
  }

  // 5. COMPLETED ⇔ payment captured and stock sold.
  for (const o of orders) {
    const reservation = reservations.get(o.order_id);
    const payment = payments.get(o.order_id);
    if (o.status === 'COMPLETED') {
      if (payment?.status !== 'PROCESSED')
        fail(5, `COMPLETED order ${o.order_id} has payment ${payment?.status ?? 'none'}`, { order: o, payment });
      if (reservation !== 'COMMITTED')
        fail(5, `COMPLETED order ${o.order_id} has reservation ${reservation ?? 'none'}`, {
          order: o.order_id,
          reservation,
        });
    } else {
      if (payment?.status === 'PROCESSED')
        fail(5, `${o.status} order ${o.order_id} has a payment still PROCESSED`, { order: o.order_id, payment });
      if (reservation === 'COMMITTED' || reservation === 'RESERVED')
        fail(5, `${o.status} order ${o.order_id} has reservation ${reservation}`, { order: o.order_id, reservation });
    }
  }

  // 3 and 5, orchestrated: every order has one saga, final, and saga and order agree.
  if (sagaMode === 'orchestration') {
    if (dbs.orchestrator === undefined)
      throw new Error('orchestration mode: the checker needs the orchestrator database');
    const sagas = new Map(
      (await dbs.orchestrator.query<{ saga_id: string; status: string }>('SELECT saga_id, status FROM sagas')).map(
        (s) => [s.saga_id, s.status],
      ),
    );
    for (const o of orders) {
      const saga = sagas.get(o.order_id);
      const agrees = o.status === 'COMPLETED' ? saga === 'COMPLETED' : saga === 'COMPENSATED' || saga === 'RESOLVED';
      if (saga === undefined) fail(3, `order ${o.order_id} has no saga`, { order: o.order_id, status: o.status });
      else if (!agrees)
        fail(5, `${o.status} order ${o.order_id} has a ${saga} saga`, { order: o.order_id, status: o.status, saga });
    }
    const orphans = [...sagas.keys()].filter((id) => !byId.has(id));
    if (orphans.length > 0) fail(3, `${orphans.length} sagas belong to no order`, orphans.slice(0, 5));
  }

  // 6. Every read model equals a fold of its sources' events (their feeds, in order).
  if (dbs.query !== undefined) await checkReadModels(dbs, dbs.query, fail);

  // 7. Each effect at most once: one creation and at most one outcome per order stream.
  const streams = await dbs.order.query<{ subject: string; created: number; outcomes: number }>(
    `SELECT subject, count(*) FILTER (WHERE type = 'OrderCreated')::int AS created,
            count(*) FILTER (WHERE type <> 'OrderCreated')::int AS outcomes FROM outbox GROUP BY subject`,
  );
  for (const s of streams) {
    if (s.created !== 1 || s.outcomes > 1)
      fail(7, `order stream ${s.subject} has ${s.created} creations and ${s.outcomes} outcomes`, s);
  }
  for (const [name, db] of Object.entries({ inventory: dbs.inventory, payment: dbs.payment })) {
    const dup = await db.query<{ subject: string; type: string; n: number }>(
      `SELECT subject, type, count(*)::int AS n FROM outbox WHERE type NOT IN ('StockAdjusted')
         GROUP BY subject, type HAVING count(*) > 1 LIMIT 5`,
    );
    if (dup.length > 0) fail(7, `${name} emitted the same event twice for one order`, dup);
  }

  // 8. Nothing stuck: outboxes drained, holds and queues empty, dead letters as expected.
  let deadLetters = 0;
  for (const [name, db] of Object.entries(servicesOf(dbs))) {
    const [row] = await db.query<{
      backlog: number;
      held: number;
      dead: number;
      published: number;
      positioned: number;
      head: number;
    }>(
      `SELECT (SELECT count(*) FROM outbox WHERE published_at IS NULL)::int AS backlog,
              (SELECT count(*) FROM held_messages)::int AS held,
              (SELECT count(*) FROM dead_letters WHERE status = 'parked')::int AS dead,
              (SELECT count(*) FROM outbox WHERE published_at IS NOT NULL)::int AS published,
              (SELECT count(feed_position) FROM outbox)::int AS positioned,
              (SELECT coalesce(max(feed_position), 0) FROM outbox)::int AS head`,
    );
    if (row === undefined) continue;
    if (row.backlog > 0) fail(8, `${name} outbox holds ${row.backlog} unpublished events`, row);
    // The feed serves every published event, positions 1..n without a gap.
    if (row.positioned !== row.published || row.head !== row.published) {
      fail(
        8,
        `${name} feed: ${row.published} events published, ${row.positioned} in the feed, head at ${row.head}`,
        row,
      );
    }
    if (row.held > 0) fail(8, `${name} holds ${row.held} early messages whose predecessors never came`, row);
    deadLetters += row.dead;
    if (queueDepth !== undefined) {
      const depth = await queueDepth(name);
      if (depth > 0) fail(8, `${name} queue still holds ${depth} messages`, { depth });
    }
  }
  if (deadLetters !== expectedDeadLetters)
    fail(8, `${deadLetters} dead letters parked, expected ${expectedDeadLetters}`, { deadLetters });

  // 9. One order per (user, Idempotency-Key).
  const keys = await dbs.order.query<{ user_id: string; key: string; order_id: string | null; state: string }>(
    'SELECT user_id, key, order_id, state FROM idempotency_keys',
  );
  const keyOrders = new Map(keys.map((k) => [`${k.user_id}\u0000${k.key}`, k.order_id]));
  for (const ack of acknowledged) {
    const bound = keyOrders.get(`${ack.userId}\u0000${ack.idempotencyKey}`);
    if (bound !== ack.orderId)
      fail(
        9,
        `key ${ack.idempotencyKey} of ${ack.userId} is bound to ${bound ?? 'nothing'}, the API answered ${ack.orderId}`,
        ack,
      );
  }
  const done = keys.filter((k) => k.state === 'done');
  if (new Set(done.map((k) => k.order_id)).size !== done.length || done.length !== orders.length) {
    fail(9, `${orders.length} orders but ${done.length} completed idempotency keys`, {
      orders: orders.length,
      keys: done.length,
    });
  }

  const count = (status: string) => orders.filter((o) => o.status === status).length;
  return {
    ok: violations.length === 0,
    violations,
    summary: {
      orders: orders.length,
      completed: count('COMPLETED'),
      failed: count('FAILED'),
      cancelled: count('CANCELLED'),
      pending: pending.length,
      products: products.length,
      deadLetters,
      netCaptured,
    },
  };
}

/** JSON with object keys sorted at every depth (jsonb keeps its own key order). */
function canonical(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v !== null && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : v,
  );
}

async function checkReadModels(
  dbs: CheckedDbs,
  query: Db,
  fail: (invariant: number, message: string, evidence: unknown) => void,
): Promise<void> {
  const events: SourceEvent[] = [];
  for (const source of [dbs.order, dbs.inventory, dbs.payment]) {
    const rows = await source.query<{ envelope: Envelope & SourceEvent }>(
      'SELECT envelope FROM outbox WHERE feed_position IS NOT NULL ORDER BY feed_position',
    );
    // Not push(...rows): a long run's feeds hold more events than a call may take arguments.
    for (const row of rows) events.push(row.envelope);
  }
  const folded = foldReadModels(events);
  const compare = <T>(model: string, expected: Map<string, T>, actual: Map<string, T>) => {
    for (const [id, value] of expected) {
      if (canonical(actual.get(id)) !== canonical(value))
        fail(6, `${model} ${id} differs from the fold of its events`, {
          expected: value,
          actual: actual.get(id) ?? null,
        });
    }
    const extra = [...actual.keys()].filter((id) => !expected.has(id));
    if (extra.length > 0) fail(6, `${model} holds ${extra.length} rows no event explains`, extra.slice(0, 5));
  };
  const summaries = await query.query<{ order_id: string; document: OrderSummary }>(
    'SELECT order_id, document FROM order_summaries',
  );
  compare('order summary', folded.summaries, new Map(summaries.map((r) => [r.order_id, r.document])));
  compare('user order', folded.userOrders, await allUserOrders(query));
  compare('product availability', folded.availability, await allAvailability(query));
  const counts = Object.fromEntries(
    (await query.query<{ status: string; n: number }>('SELECT status, n FROM order_counts WHERE n <> 0')).map((r) => [
      r.status,
      r.n,
    ]),
  );
  if (canonical(counts) !== canonical(folded.counts))
    fail(6, 'order counts differ from the fold of the order events', { expected: folded.counts, actual: counts });
}

export function formatReport(report: Report): string {
  if (report.ok) return `invariants hold: ${JSON.stringify(report.summary)}`;
  const lines = report.violations
    .slice(0, 30)
    .map((v) => `  [${v.invariant}] ${v.message}\n      evidence: ${JSON.stringify(v.evidence)}`);
  return `${report.violations.length} invariant violations (${JSON.stringify(report.summary)}):\n${lines.join('\n')}`;
}

/** Throws with the evidence when any invariant is broken. */
export async function assertInvariants(input: CheckInput): Promise<Report> {
  const report = await checkInvariants(input);
  if (!report.ok) throw new Error(formatReport(report));
  return report;
}

/** Waits until outboxes are drained, queues and holds empty and no order is PENDING. */
export async function waitForQuiet(input: Pick<CheckInput, 'dbs' | 'queueDepth'>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let calm = 0;
  let last = '';
  while (Date.now() < deadline) {
    const parts: number[] = [];
    for (const [name, db] of Object.entries(servicesOf(input.dbs))) {
      const [row] = await db.query<{ n: number }>(
        `SELECT ((SELECT count(*) FROM outbox WHERE published_at IS NULL)
                + (SELECT count(*) FROM held_messages))::int AS n`,
      );
      parts.push(row?.n ?? 0, (await input.queueDepth?.(name)) ?? 0);
    }
    const [pending] = await input.dbs.order.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM orders WHERE status = 'PENDING'`,
    );
    parts.push(pending?.n ?? 0);
    if (input.dbs.orchestrator !== undefined) {
      const [active] = await input.dbs.orchestrator.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM sagas WHERE status IN ('RUNNING', 'COMPENSATING')`,
      );
      parts.push(active?.n ?? 0);
    }
    last = parts.join(',');
    calm = parts.every((n) => n === 0) ? calm + 1 : 0;
    if (calm >= 3) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(
    `system not quiet after ${timeoutMs} ms (outbox+held, queue per service, pending orders, active sagas: ${last})`,
  );
}
