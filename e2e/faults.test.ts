// Crashes and poison, end to end. A service that committed but died before publishing
// publishes on restart, and the event takes effect once. A message that cannot take
// effect is parked with its reason while other orders flow past it, and completes when
// an operator replays it after the cause is fixed.
import crypto from 'node:crypto';
import type { Envelope } from '@converge/contracts';
import { expect, it } from 'vitest';
import { describeSystem, modes, operator, sagaModeOf, type Harness } from './harness.ts';

const count = async (
  h: Harness,
  service: 'order' | 'inventory' | 'payment' | 'orchestrator' | 'query',
  sql: string,
  params: unknown[] = [],
) => (await h.system.dbs[service].query<{ n: number }>(`SELECT count(*)::int AS n FROM ${sql}`, params))[0]?.n ?? 0;

describeSystem('crashes and poison', modes, (h, name) => {
  const orchestrated = sagaModeOf(name) === 'orchestration';
  // What asks payment to charge, and who binds OrderCreated (the malformed messages' type), in this mode.
  const chargeRequest = orchestrated ? 'ProcessPayment' : 'InventoryReserved';
  const orderConsumers = orchestrated ? (['orchestrator', 'query'] as const) : (['inventory', 'query'] as const);

  it(
    'given the order service dies after committing an order and before publishing ' +
      'it, when it restarts, then the order goes out and completes once',
    async () => {
      const product = await h.product(10, 500);
      const user = await h.user(100_000);
      await h.system.restart('order', { relay: false });
      const placed = await h.place(user, [{ productId: product, quantity: 2 }]);
      expect(placed.status).toBe(201);
      await new Promise((r) => setTimeout(r, 500));
      expect(await count(h, 'order', 'outbox WHERE subject = $1 AND published_at IS NULL', [placed.orderId])).toBe(1);
      expect(await count(h, 'inventory', 'reservations WHERE order_id = $1', [placed.orderId])).toBe(0);

      await h.system.restart('order', { relay: true });
      expect((await h.waitFinal(placed.orderId)).status).toBe('COMPLETED');
      await h.quiet();
      expect(
        await count(h, 'inventory', "outbox WHERE subject = $1 AND type = 'InventoryReserved'", [placed.orderId]),
      ).toBe(1);
      expect(await h.stock(product)).toMatchObject({ stockQuantity: 8, sold: 2, reserved: 0 });
      expect(await h.credit(user)).toBe(100_000 - 1000);
      await h.check();
    },
  );

  it(
    'given inventory dies after reserving and before publishing, when it ' +
      'restarts, then payment is taken once and the order completes',
    async () => {
      const product = await h.product(10, 500);
      const user = await h.user(100_000);
      await h.system.restart('inventory', { relay: false });
      const placed = await h.place(user, [{ productId: product, quantity: 1 }]);
      const deadline = Date.now() + 10_000;
      while (
        (await count(h, 'inventory', "reservations WHERE order_id = $1 AND status = 'RESERVED'", [placed.orderId])) ===
        0
      ) {
        if (Date.now() > deadline) throw new Error('never reserved');
        await new Promise((r) => setTimeout(r, 20));
      }
      expect((await h.order(placed.orderId)).status).toBe('PENDING');
      await h.system.restart('inventory', { relay: true });
      expect((await h.waitFinal(placed.orderId)).status).toBe('COMPLETED');
      await h.quiet();
      expect(await count(h, 'payment', 'payments WHERE order_id = $1', [placed.orderId])).toBe(1);
      expect(await h.credit(user)).toBe(100_000 - 500);
      await h.check();
    },
  );

  it(
    'given the provider failing longer than the retries, when an order pays, then its ' +
      'message is parked, later orders complete, and a replay completes it',
    async () => {
      const product = await h.product(50, 300);
      const user = await h.user(100_000);
      h.system.provider.faults.failNext = 4; // the consumer's maxAttempts in the harness
      const stuck = await h.place(user, [{ productId: product, quantity: 1 }]);
      const payment = h.system.services.payment.app;
      const deadline = Date.now() + 15_000;
      let parked: { id: string; reason: string; error: string; type: string; subject: string } | undefined;
      while (parked === undefined) {
        parked = (await payment.inject({ headers: await h.auth(), method: 'GET', url: '/dead-letters' })).json<{
          items: (typeof parked)[];
        }>().items[0];
        if (Date.now() > deadline) throw new Error('never dead-lettered');
        await new Promise((r) => setTimeout(r, 20));
      }
      expect(parked).toMatchObject({ reason: 'retries exhausted', type: chargeRequest, subject: stuck.orderId });
      expect(parked.error).toContain('payment provider failed');

      const behind = await Promise.all([1, 2, 3].map(() => h.place(user, [{ productId: product, quantity: 1 }])));
      for (const order of behind) expect((await h.waitFinal(order.orderId)).status).toBe('COMPLETED');
      expect((await h.order(stuck.orderId)).status).toBe('PENDING');
      const metrics = await payment.inject({ headers: await h.auth(), method: 'GET', url: '/metrics' });
      expect(metrics.body).toContain('converge_dead_letters{service="payment"} 1');
      expect(metrics.body).toMatch(/converge_event_loop_delay_seconds\{service="payment",quantile="0.99"\} \d+\.\d+/);

      // The audit names the authenticated operator, whatever a header claims.
      const replay = await payment.inject({
        method: 'POST',
        url: `/dead-letters/${parked.id}/replay`,
        headers: { ...(await h.auth(operator)), 'x-actor': 'someone-else@example.com' },
      });
      expect(replay.json()).toEqual({ id: parked.id, outcome: 'applied' });
      expect((await h.waitFinal(stuck.orderId)).status).toBe('COMPLETED');
      const again = await payment.inject({
        headers: await h.auth(),
        method: 'POST',
        url: `/dead-letters/${parked.id}/replay`,
      });
      expect(again.json()).toMatchObject({ outcome: 'duplicate' });
      const audit = await h.system.dbs.payment.query<{ actor: string; outcome: string }>(
        'SELECT actor, outcome FROM dead_letter_audit WHERE dead_letter_id = $1',
        [parked.id],
      );
      expect(audit).toEqual([{ actor: operator.subject, outcome: 'applied' }]);
      await h.quiet();
      expect(await h.credit(user)).toBe(100_000 - 4 * 300);
      await h.check();
    },
  );

  it(
    'given malformed messages on the bus, when consumers receive them, then ' +
      'each is parked with its reason and orders keep flowing',
    async () => {
      const product = await h.product(10, 100);
      const user = await h.user(100_000);
      const base = {
        specversion: '1.0',
        source: 'order',
        subject: crypto.randomUUID(),
        time: new Date().toISOString(),
        datacontenttype: 'application/json',
        dataversion: 1,
        sequence: 1,
        correlationid: 'poison',
      };
      const poison = [
        {
          ...base,
          id: crypto.randomUUID(),
          type: 'OrderCreated',
          data: { orderId: 'not-a-uuid', userId: 'x', items: [], totalAmount: -1, currency: 'eur' },
        },
        { ...base, id: crypto.randomUUID(), type: 'OrderCreated', data: null },
        { ...base, id: crypto.randomUUID(), type: 'OrderCreated', sequence: 0, data: {} },
      ] as unknown as Envelope[];
      await h.system.bus.publish(poison);
      const placed = await h.place(user, [{ productId: product, quantity: 1 }]);
      expect((await h.waitFinal(placed.orderId)).status).toBe('COMPLETED');
      await h.quiet();
      const [consumer, ...others] = orderConsumers;
      const parked = await h.system.dbs[consumer].query<{ reason: string; error: string; message_id: string }>(
        'SELECT reason, error, message_id FROM dead_letters WHERE status = ' +
          "'parked' AND reason = 'invalid message' ORDER BY parked_at",
      );
      expect(parked).toHaveLength(3);
      // OrderCreated may be bound to several queues: each consumer parks its own copy.
      for (const other of others)
        expect(await count(h, other, "dead_letters WHERE status = 'parked' AND reason = 'invalid message'")).toBe(3);
      expect(new Set(parked.map((p) => p.message_id))).toEqual(new Set(poison.map((p) => p.id)));
      expect(parked.map((p) => p.error).join(' ')).toMatch(/data\/orderId/);
      // Still invalid: a replay says so and changes nothing.
      const [first] = await h.system.dbs[consumer].query<{ id: string }>(
        "SELECT id FROM dead_letters WHERE reason = 'invalid message' LIMIT 1",
      );
      const replay = await h.system.services[consumer].app.inject({
        headers: await h.auth(),
        method: 'POST',
        url: `/dead-letters/${first?.id ?? ''}/replay`,
      });
      expect(replay.json()).toMatchObject({ outcome: 'failed' });
      await h.check(3 * orderConsumers.length);
    },
  );
});
