// The orchestrated saga under the faults it exists for, on both backends: a payment
// provider slower than the step's deadline (retry, then compensate, and the late
// success refunded), a compensation that keeps failing (parked, then retried by an
// operator), a duplicate reply, the orchestrator dying between a reply and its next
// command, and two orchestrator instances sharing the work. Each ends with the
// invariant checker, which in this mode also holds every saga against its order.
import crypto from 'node:crypto';
import type { Envelope } from '@converge/contracts';
import { silentLogger, startService, type RunningService } from '@converge/platform';
import { eventually } from '@converge/platform/testing';
import { expect, it } from 'vitest';
import { orchestratorService } from '../services/orchestrator/service.ts';
import { describeSystem, modes, sagaModeOf, testTimings, type Harness } from './harness.ts';

type SagaView = {
  status: string;
  reason?: string;
  steps?: { name: string; status: string; attempts: number }[];
  history: { type: string; [key: string]: unknown }[];
};

/** Deadlines the slow provider outlasts: a step waits 1 s, then 2 s; a compensation is sent three times (1, 2, 2 s). */
const quick = {
  timings: { deadlineMs: 1_000, attempts: 2, compensationAttempts: 3, maxDeadlineMs: 2_000 },
  tickMs: 25,
};
const slowChargeMs = 5_000;

/** Polls until `probe` gives a value (false and undefined mean not yet). */
const until = <T>(probe: () => Promise<T | undefined | false>, what: string, timeoutMs = 20_000): Promise<T> =>
  eventually(
    async () => {
      const value = await probe();
      return value === false ? undefined : value;
    },
    timeoutMs,
    what,
  );

const orchestrated = modes.filter((m) => sagaModeOf(m) === 'orchestration');

async function sagaOf(h: Harness, id: string): Promise<SagaView> {
  const response = await h.system.services.orchestrator.app.inject({
    headers: await h.auth(),
    method: 'GET',
    url: `/sagas/${id}`,
  });
  return response.json<SagaView>();
}

async function countIn(
  h: Harness,
  service: 'order' | 'inventory' | 'payment' | 'orchestrator',
  sql: string,
  params: unknown[] = [],
): Promise<number> {
  return (await h.system.dbs[service].query<{ n: number }>(`SELECT count(*)::int AS n FROM ${sql}`, params))[0]?.n ?? 0;
}

describeSystem('saga deadlines and compensations', orchestrated, { orchestrator: quick }, (h) => {
  const saga = (id: string) => sagaOf(h, id);
  const count = (service: 'order' | 'inventory' | 'payment' | 'orchestrator', sql: string, params: unknown[] = []) =>
    countIn(h, service, sql, params);
  /**
   * Once the saga gave up waiting for the charge, the provider answers at once again (the slow charge keeps
   * sleeping).
   */
  const whenPaymentGivenUp = async (orderId: string) => {
    await until(
      async () => (await saga(orderId)).steps?.find((s) => s.name === 'pay')?.status === 'compensating',
      'the saga to give up on payment',
    );
    h.system.provider.faults.delayMs = 0;
  };

  it(
    'given a payment provider slower than the step deadline, when an order pays, then ' +
      'payment is retried, then compensated, and the late charge is refunded',
    async () => {
      const product = await h.product(10, 700);
      const user = await h.user(10_000);
      h.system.provider.faults.delayMs = slowChargeMs;
      try {
        const placed = await h.place(user, [{ productId: product, quantity: 2 }]);
        await whenPaymentGivenUp(placed.orderId);
        // The charge goes through at the provider after the saga gave up on it.
        await until(
          async () => (await count('payment', 'payments WHERE order_id = $1', [placed.orderId])) === 1,
          'the slow charge',
        );
        const order = await h.waitFinal(placed.orderId);
        expect(order).toMatchObject({ status: 'FAILED', reason: 'no reply to pay after 2 attempt(s)' });
        await h.quiet();
        const view = await saga(placed.orderId);
        expect(view.status).toBe('COMPENSATED');
        // Two sends of the charge, each missed; then the refund (sent again while the slow
        // charge still held payment's attention), the release and the failed order.
        expect(view.history.filter((e) => e.type === 'DeadlineMissed' && e.phase === 'forward')).toHaveLength(2);
        const sent = view.history
          .filter((e) => e.type === 'CommandSent')
          .map((e) => (e.command as { type: string }).type);
        expect(sent.slice(0, 4)).toEqual(['ReserveInventory', 'ProcessPayment', 'ProcessPayment', 'RefundPayment']);
        expect(sent.slice(-2)).toEqual(['ReleaseInventory', 'FailOrder']);
        expect(view.history).toContainEqual(
          expect.objectContaining({ type: 'ReplyIgnored', reply: 'PaymentProcessed' }),
        );
        expect(view.history).toContainEqual(
          expect.objectContaining({ type: 'StepCompensated', reply: 'PaymentRefunded' }),
        );
        expect(await count('payment', "payments WHERE order_id = $1 AND status = 'REFUNDED'", [placed.orderId])).toBe(
          1,
        );
        expect(await h.credit(user)).toBe(10_000);
        expect(await h.stock(product)).toMatchObject({ stockQuantity: 10, reserved: 0, sold: 0 });
        await h.check();
      } finally {
        h.system.provider.faults.delayMs = 0;
      }
    },
  );

  it(
    'given a refund that keeps failing, when its attempts run out, then the saga ' +
      'is parked with its history; an operator retry completes the undo',
    async () => {
      const product = await h.product(10, 400);
      const user = await h.user(10_000);
      const parkedBefore = await count('payment', "dead_letters WHERE status = 'parked'");
      // The charge is slow, so the saga compensates it; the refund then fails every time.
      h.system.provider.faults.delayMs = slowChargeMs;
      h.system.provider.faults.refundsDown = true;
      let orderId = '';
      try {
        orderId = (await h.place(user, [{ productId: product, quantity: 1 }])).orderId;
        await whenPaymentGivenUp(orderId);
        const parked = await until(async () => {
          const view = await saga(orderId);
          return view.status === 'NEEDS_ATTENTION' ? view : undefined;
        }, 'the saga to be parked');
        expect(parked.reason).toBe("no reply to pay's compensation after 3 attempt(s)");
        expect(parked.steps?.find((s) => s.name === 'pay')).toMatchObject({ status: 'compensating', attempts: 3 });
        expect((await h.order(orderId)).status).toBe('PENDING');
        // Every refund command was parked at payment too, each with its reason: nothing dropped.
        await until(
          async () => (await count('payment', "dead_letters WHERE status = 'parked' AND type = 'RefundPayment'")) >= 3,
          'three parked refunds',
        );
        await until(async () => (await h.system.bus.depth('payment')) === 0, 'the payment queue to drain');
        const stuck = await h.system.services.orchestrator.app.inject({
          headers: await h.auth(),
          method: 'GET',
          url: '/sagas?state=NEEDS_ATTENTION',
        });
        expect(stuck.json<{ items: { id: string }[]; counts: Record<string, number> }>()).toMatchObject({
          items: [expect.objectContaining({ id: orderId })],
        });
        const metrics = (
          await h.system.services.orchestrator.app.inject({ headers: await h.auth(), method: 'GET', url: '/metrics' })
        ).body;
        expect(metrics).toMatch(/^converge_sagas\{state="NEEDS_ATTENTION"\} 1$/m);

        h.system.provider.faults.refundsDown = false;
        const retried = await h.system.services.orchestrator.app.inject({
          headers: await h.auth(),
          method: 'POST',
          url: `/sagas/${orderId}/retry`,
          payload: { note: 'provider is back' },
        });
        expect(retried.statusCode).toBe(200);
        expect((await h.waitFinal(orderId)).status).toBe('FAILED');
        await h.quiet();
        const view = await saga(orderId);
        expect(view.status).toBe('COMPENSATED');
        expect(view.history).toContainEqual(
          expect.objectContaining({ type: 'OperatorRetried', note: 'provider is back' }),
        );
        expect(await h.credit(user)).toBe(10_000);
        const again = await h.system.services.orchestrator.app.inject({
          headers: await h.auth(),
          method: 'POST',
          url: `/sagas/${orderId}/retry`,
          payload: { note: 'twice' },
        });
        expect(again.statusCode).toBe(409);
        expect(again.headers['content-type']).toContain('application/problem+json');
        await h.check(
          parkedBefore + (await count('payment', "dead_letters WHERE status = 'parked' AND type = 'RefundPayment'")),
        );
      } finally {
        h.system.provider.faults.delayMs = 0;
        h.system.provider.faults.refundsDown = false;
      }
    },
  );
});

describeSystem('saga orchestration', orchestrated, (h) => {
  const saga = (id: string) => sagaOf(h, id);
  const count = (service: 'order' | 'inventory' | 'payment' | 'orchestrator', sql: string, params: unknown[] = []) =>
    countIn(h, service, sql, params);

  it(
    'given a reply delivered twice, and the same reply again under a new id, when the ' +
      'orchestrator gets them, then the saga advanced once and sent nothing more',
    async () => {
      const product = await h.product(10, 300);
      const user = await h.user(10_000);
      const { orderId } = await h.place(user, [{ productId: product, quantity: 1 }]);
      expect((await h.waitFinal(orderId)).status).toBe('COMPLETED');
      await h.quiet();
      const [row] = await h.system.dbs.inventory.query<{ envelope: Envelope }>(
        "SELECT envelope FROM outbox WHERE subject = $1 AND type = 'InventoryReserved'",
        [orderId],
      );
      if (row === undefined) throw new Error('no InventoryReserved');
      const before = await saga(orderId);
      const commands = await count('orchestrator', 'outbox WHERE subject = $1', [orderId]);
      const consumer = h.system.services.orchestrator.consumer;
      expect(await consumer.process(row.envelope)).toBe('duplicate');
      const [last] = await h.system.dbs.inventory.query<{ n: number }>(
        'SELECT max(sequence)::int AS n FROM outbox WHERE subject = $1',
        [orderId],
      );
      const copy = { ...row.envelope, id: crypto.randomUUID(), sequence: (last?.n ?? 0) + 1 };
      expect(await consumer.process(copy)).toBe('applied');
      const after = await saga(orderId);
      expect(after.status).toBe('COMPLETED');
      expect(after.history).toHaveLength(before.history.length + 1);
      expect(after.history.at(-1)).toMatchObject({
        type: 'ReplyIgnored',
        reply: 'InventoryReserved',
        messageId: copy.id,
      });
      expect(after.history.filter((e) => e.type === 'StepSucceeded' && e.reply === 'InventoryReserved')).toHaveLength(
        1,
      );
      expect(await count('orchestrator', 'outbox WHERE subject = $1', [orderId])).toBe(commands);
      const metrics = (
        await h.system.services.orchestrator.app.inject({ headers: await h.auth(), method: 'GET', url: '/metrics' })
      ).body;
      expect(metrics).toMatch(/^converge_sagas\{state="COMPLETED"\} [1-9]\d*$/m);
      expect(metrics).toMatch(/^converge_sagas_stuck 0$/m);
      for (const step of ['reserve', 'pay', 'complete', 'commit']) {
        expect(metrics).toMatch(
          new RegExp(`^converge_saga_step_duration_seconds\\{step="${step}",quantile="0.99"\\} \\d+\\.\\d+$`, 'm'),
        );
      }
      await h.check();
    },
  );

  it(
    'given the orchestrator dies after deciding and before sending its command, when ' +
      'it restarts, then the command goes out once and the order completes',
    async () => {
      const product = await h.product(10, 300);
      const user = await h.user(10_000);
      await h.system.restart('orchestrator', { relay: false });
      const { orderId } = await h.place(user, [{ productId: product, quantity: 1 }]);
      await until(
        async () =>
          (await count(
            'orchestrator',
            "outbox WHERE subject = $1 AND type = 'ReserveInventory' AND published_at IS NULL",
            [orderId],
          )) >= 1,
        'the unsent command',
      );
      expect((await saga(orderId)).steps?.find((s) => s.name === 'reserve')?.status).toBe('started');
      expect(await count('inventory', 'reservations WHERE order_id = $1', [orderId])).toBe(0);
      await h.system.restart('orchestrator', { relay: true });
      expect((await h.waitFinal(orderId)).status).toBe('COMPLETED');
      await h.quiet();
      expect((await saga(orderId)).status).toBe('COMPLETED');
      expect(await count('inventory', "outbox WHERE subject = $1 AND type = 'InventoryReserved'", [orderId])).toBe(1);
      expect(await count('payment', 'payments WHERE order_id = $1', [orderId])).toBe(1);
      await h.check();
    },
  );

  it(
    'given two orchestrator instances on one database and queue, when orders flow, ' +
      'then each saga advances once per reply and every order converges',
    async () => {
      const second: RunningService = await startService(
        orchestratorService({ mode: 'orchestration', timings: testTimings, tickMs: 25 }),
        {
          db: h.system.dbs.orchestrator,
          bus: h.system.bus,
          log: silentLogger,
          verify: h.system.identities.verify,
          consumer: { backoff: { baseMs: 20, capMs: 200 }, maxAttempts: 4 },
        },
      );
      try {
        const products = [await h.product(50, 100), await h.product(50, 200)];
        const users = [await h.user(1_000_000), await h.user(1_000)];
        const placed = await Promise.all(
          Array.from({ length: 30 }, (_, i) =>
            h.place(users[i % 2] ?? '', [{ productId: products[i % 2] ?? '', quantity: 1 + (i % 3) }]),
          ),
        );
        for (const p of placed) await h.waitFinal(p.orderId);
        await h.quiet();
        const logs = await h.system.dbs.orchestrator.query<{
          saga_id: string;
          type: string;
          step: number | null;
          n: number;
        }>(
          `SELECT saga_id, type, (event->>'step')::int AS step, count(*)::int AS n FROM saga_log
          WHERE saga_id = ANY($1) AND type IN ('StepSucceeded', 'StepCompensated', 'SagaCompleted', 'SagaCompensated')
          GROUP BY 1, 2, 3 HAVING count(*) > 1`,
          [placed.map((p) => p.orderId)],
        );
        expect(logs).toEqual([]);
        const [dups] = await h.system.dbs.orchestrator.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM (SELECT subject, type FROM outbox WHERE subject = ANY($1) GROUP BY 1, 2
          HAVING count(*) > 1) d`,
          [placed.map((p) => p.orderId)],
        );
        expect(dups?.n).toBe(0);
        const finals = await Promise.all(placed.map(async (p) => (await h.order(p.orderId)).status));
        expect(new Set(finals)).toEqual(new Set(['COMPLETED', 'FAILED']));
        await h.check();
      } finally {
        await second.stop();
      }
    },
  );
});
