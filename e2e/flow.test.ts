// The order flow end to end, in both modes: each test places real orders through the
// order API and ends with the invariant checker over all databases.
import { expect, it } from 'vitest';
import { requestHash } from '../services/order/service.ts';
import { customer, describeSystem, modes } from './harness.ts';
import { checkInvariants } from '../system/invariants.ts';

describeSystem('order flow', modes, (h) => {
  it(
    'given stock and credit, when an order is placed, ' + 'then it completes, stock is sold and the user charged',
    async () => {
      const product = await h.product(10, 1250);
      const user = await h.user(10_000);
      const placed = await h.place(user, [{ productId: product, quantity: 3 }]);
      expect(placed.status).toBe(201);
      expect(placed.body).toMatchObject({
        status: 'PENDING',
        totalAmount: 3750,
        currency: 'EUR',
        items: [{ productId: product, quantity: 3, unitPrice: 1250 }],
      });
      const final = await h.waitFinal(placed.orderId);
      expect(final.status).toBe('COMPLETED');
      await h.quiet();
      expect(await h.stock(product)).toMatchObject({ stockQuantity: 7, reserved: 0, sold: 3 });
      expect(await h.credit(user)).toBe(10_000 - 3750);
      await h.check();
    },
  );

  it(
    'given too little stock for one line, when an order is placed, ' + 'then it fails and nothing is reserved',
    async () => {
      const plenty = await h.product(100);
      const scarce = await h.product(1);
      const user = await h.user(1_000_000);
      const placed = await h.place(user, [
        { productId: plenty, quantity: 5 },
        { productId: scarce, quantity: 2 },
      ]);
      const final = await h.waitFinal(placed.orderId);
      expect(final.status).toBe('FAILED');
      expect(final.reason).toContain('insufficient stock');
      await h.quiet();
      expect(await h.stock(plenty)).toMatchObject({ stockQuantity: 100, reserved: 0, sold: 0 });
      expect(await h.stock(scarce)).toMatchObject({ stockQuantity: 1, reserved: 0, sold: 0 });
      expect(await h.credit(user)).toBe(1_000_000);
      await h.check();
    },
  );

  it('given too little credit, when an order is placed, then payment is declined and the stock released', async () => {
    const product = await h.product(5, 1000);
    const user = await h.user(500);
    const placed = await h.place(user, [{ productId: product, quantity: 2 }]);
    const final = await h.waitFinal(placed.orderId);
    expect(final.status).toBe('FAILED');
    expect(final.reason).toBe('payment failed: insufficient credit');
    await h.quiet();
    expect(await h.stock(product)).toMatchObject({ stockQuantity: 5, reserved: 0, sold: 0 });
    expect(await h.credit(user)).toBe(500);
    const payments = await h.system.services.payment.app.inject({
      headers: await h.auth(),
      method: 'GET',
      url: `/payments?orderId=${placed.orderId}`,
    });
    expect(payments.json()).toMatchObject({ items: [{ status: 'FAILED', reason: 'insufficient credit' }] });
    await h.check();
  });

  it('given a PENDING order, when it is cancelled, then stock is released and nothing stays charged', async () => {
    const product = await h.product(5, 1000);
    const user = await h.user(100_000);
    h.system.provider.faults.delayMs = 300; // keep the order PENDING long enough to cancel it
    try {
      const placed = await h.place(user, [{ productId: product, quantity: 2 }]);
      const cancelled = await h.system.services.order.app.inject({
        headers: await h.auth(customer(user)),
        method: 'POST',
        url: `/orders/${placed.orderId}/cancel`,
        payload: { reason: 'changed my mind' },
      });
      expect(cancelled.statusCode).toBe(200);
      expect(cancelled.json()).toMatchObject({ status: 'CANCELLED', reason: 'changed my mind' });
      const again = await h.system.services.order.app.inject({
        headers: await h.auth(),
        method: 'POST',
        url: `/orders/${placed.orderId}/cancel`,
      });
      expect(again.statusCode).toBe(200);
    } finally {
      h.system.provider.faults.delayMs = 0;
    }
    await h.quiet();
    expect(await h.stock(product)).toMatchObject({ stockQuantity: 5, reserved: 0, sold: 0 });
    expect(await h.credit(user)).toBe(100_000);
    await h.check();
  });

  it(
    'given orders whose payment is in flight, when each is cancelled at a different ' +
      'moment, then every one converges to CANCELLED with no net charge',
    async () => {
      const product = await h.product(50, 700);
      const user = await h.user(1_000_000);
      const orders: string[] = [];
      for (let i = 0; i < 10; i++) orders.push((await h.place(user, [{ productId: product, quantity: 1 }])).orderId);
      // Cancel each after a different delay, so some cancels land before the reservation,
      // some while the charge is made, some after PaymentProcessed is on its way.
      const outcomes = await Promise.all(
        orders.map(async (orderId, i) => {
          await new Promise((r) => setTimeout(r, i * 7));
          return (
            await h.system.services.order.app.inject({
              headers: await h.auth(),
              method: 'POST',
              url: `/orders/${orderId}/cancel`,
            })
          ).statusCode;
        }),
      );
      for (const status of outcomes) expect([200, 409]).toContain(status);
      await h.quiet();
      let completed = 0;
      for (const [i, orderId] of orders.entries()) {
        const order = await h.order(orderId);
        expect(order.status).toBe(outcomes[i] === 200 ? 'CANCELLED' : 'COMPLETED');
        if (order.status === 'COMPLETED') completed += 1;
      }
      expect(await h.stock(product)).toMatchObject({ stockQuantity: 50 - completed, reserved: 0, sold: completed });
      expect(await h.credit(user)).toBe(1_000_000 - completed * 700);
      await h.check();
    },
  );

  it(
    'given the same Idempotency-Key, when the request is repeated, then ' +
      'it replays the first order; a different body is refused',
    async () => {
      const product = await h.product(10);
      const user = await h.user(100_000);
      const first = await h.place(user, [{ productId: product, quantity: 1 }], 'key-1');
      const replay = await h.place(user, [{ productId: product, quantity: 1 }], 'key-1');
      expect(replay.status).toBe(201);
      expect(replay.orderId).toBe(first.orderId);
      const different = await h.place(user, [{ productId: product, quantity: 2 }], 'key-1');
      expect(different.status).toBe(422);
      const [row] = await h.system.dbs.order.query<{ n: number }>(
        'SELECT count(*)::int AS n FROM orders WHERE user_id = $1',
        [user],
      );
      expect(row?.n).toBe(1);
      await h.check();
    },
  );

  it(
    'given two requests with the same key at once, when both are placed, ' + 'then one order exists and both answer it',
    async () => {
      const user = await h.user(1000);
      const product = await h.product(5);
      const items = [{ productId: product, quantity: 1 }];
      const answers = await Promise.all(Array.from({ length: 8 }, () => h.place(user, items, 'same-key')));
      expect(answers.map((a) => a.status)).toEqual(answers.map(() => 201));
      expect(new Set(answers.map((a) => a.orderId)).size).toBe(1);
      const [row] = await h.system.dbs.order.query<{ n: number }>(
        'SELECT count(*)::int AS n FROM orders WHERE user_id = $1',
        [user],
      );
      expect(row?.n).toBe(1);
      await h.check();
    },
  );

  it(
    'given an order placed with a key, when the key table is read, then the ' +
      'key holds its response, and a claim without one is refused',
    async () => {
      const user = await h.user(1000);
      const product = await h.product(1);
      const items = [{ productId: product, quantity: 1 }];
      const placed = await h.place(user, items, 'once');
      expect(placed.status).toBe(201);
      const [key] = await h.system.dbs.order.query<{
        state: string;
        order_id: string;
        response_body: { orderId: string };
      }>(`SELECT state, order_id, response_body FROM idempotency_keys WHERE user_id = $1 AND key = 'once'`, [user]);
      expect(key).toMatchObject({
        state: 'done',
        order_id: placed.orderId,
        response_body: { orderId: placed.orderId },
      });
      await expect(
        h.system.dbs.order.query(
          `INSERT INTO idempotency_keys (user_id, key, request_hash, state, created_at)
          VALUES ($1, 'died', $2, 'in_flight', now())`,
          [user, requestHash({ userId: user, items })],
        ),
      ).rejects.toThrow(/violates/);
      await h.check();
    },
  );

  it(
    "given orders of every outcome, when every service's feed is read from the start, " +
      'then it holds exactly what the service published, each subject in order',
    async () => {
      const product = await h.product(10, 500);
      const rich = await h.user(100_000);
      const poor = await h.user(100);
      for (const placed of [
        await h.place(rich, [{ productId: product, quantity: 2 }]),
        await h.place(poor, [{ productId: product, quantity: 1 }]),
      ]) {
        await h.waitFinal(placed.orderId);
      }
      await h.quiet();
      for (const service of ['order', 'inventory', 'payment', 'orchestrator'] as const) {
        const read: { position: number; event: { id: string; subject: string; sequence: number } }[] = [];
        for (let after = 0; ;) {
          const page = (
            await h.system.services[service].app.inject({
              headers: await h.auth(),
              method: 'GET',
              url: `/events?after=${after}&limit=7`,
            })
          ).json<{ events: typeof read; next: number; head: number }>();
          read.push(...page.events);
          if (page.next === page.head) break;
          after = page.next;
        }
        const published = await h.system.dbs[service].query<{ id: string }>(
          'SELECT id::text AS id FROM outbox WHERE published_at IS NOT NULL',
        );
        expect(
          read.map((e) => e.position),
          service,
        ).toEqual(read.map((_, i) => i + 1));
        expect(new Set(read.map((e) => e.event.id)), service).toEqual(new Set(published.map((p) => p.id)));
        const last = new Map<string, number>();
        for (const { event } of read) {
          expect(event.sequence, `${service} ${event.subject}`).toBe((last.get(event.subject) ?? 0) + 1);
          last.set(event.subject, event.sequence);
        }
      }
      await h.check();
    },
  );

  it('given the read models, when one drifts from its events, then the checker reports it as invariant 6', async () => {
    const product = await h.product(5, 200);
    const user = await h.user(10_000);
    await h.waitFinal((await h.place(user, [{ productId: product, quantity: 1 }])).orderId);
    await h.quiet();
    const query = h.system.dbs.query;
    expect(
      (
        await h.system.services.query.app.inject({
          headers: await h.auth(),
          method: 'GET',
          url: `/products/${product}`,
        })
      ).json(),
    ).toMatchObject({ stockQuantity: 4, reserved: 0, sold: 1 });
    await query.query('UPDATE product_availability SET sold = sold + 1 WHERE product_id = $1', [product]);
    try {
      const report = await checkInvariants({ dbs: h.system.dbs });
      expect(report.violations.filter((v) => v.invariant === 6).map((v) => v.message)).toEqual([
        `product availability ${product} differs from the fold of its events`,
      ]);
    } finally {
      await query.query('UPDATE product_availability SET sold = sold - 1 WHERE product_id = $1', [product]);
    }
    await h.check();
  });
});
