// Payment's shell and the provider's batch entry points, on PGlite and on a real
// PostgreSQL server: a batch of messages is loaded, decided, charged, refunded and
// written back with a fixed number of statements, whatever its size, and the provider
// keeps its per-user credit and its first answers across batches.
import crypto from 'node:crypto';
import type { DomainEvent, Envelope } from '@converge/contracts';
import {
  costCounters,
  dropDatabase,
  ensureDatabase,
  migrate,
  openPglite,
  openPostgres,
  type Db,
  type Message,
  type Outgoing,
} from '@converge/platform';
import { serverAvailable, servers, uniqueName } from '@converge/platform/testing';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { paymentBatchHandler } from './consumers.ts';
import { openSimulatedProvider } from './service.ts';
import type { SimulatedProvider } from './provider.ts';

const here = path.dirname(fileURLToPath(import.meta.url));
const pgUp = await serverAvailable('postgres');
const databases: string[] = [];
const cleanups: (() => Promise<void>)[] = [];

afterAll(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  for (const database of databases) await dropDatabase(servers.postgres, database);
});

type Backend = { name: string; up: boolean; open(what: string): Promise<Db> };
const backends: Backend[] = [
  { name: 'pglite', up: true, open: (what) => openPglite(what) },
  {
    name: 'postgres',
    up: pgUp,
    open: async (what) => {
      const database = uniqueName(what);
      databases.push(database);
      return openPostgres(what, await ensureDatabase(servers.postgres, database));
    },
  },
];

function message(event: DomainEvent, source: string, subject: string): Message {
  const id = crypto.randomUUID();
  const envelope: Envelope = {
    specversion: '1.0',
    id,
    source,
    type: event.type,
    subject,
    time: new Date().toISOString(),
    datacontenttype: 'application/json',
    dataversion: 1,
    sequence: 1,
    correlationid: `correlation-${id}`,
    data: event.data,
  };
  return { ...envelope, ...event };
}

const reserved = (orderId: string, userId: string, totalAmount: number) =>
  message(
    {
      type: 'InventoryReserved',
      data: { orderId, userId, items: [{ productId: orderId, quantity: 1 }], totalAmount, currency: 'EUR' },
    },
    'inventory',
    orderId,
  );
const cancelled = (orderId: string, userId: string) =>
  message({ type: 'OrderCancelled', data: { orderId, userId, reason: 'changed my mind' } }, 'order', orderId);

const someone = (name: string) => `${name}-${crypto.randomUUID().slice(0, 8)}`;

const statements = async <T>(
  run: () => Promise<T>,
): Promise<{ result: T; statements: number; transactions: number }> => {
  const before = costCounters();
  const result = await run();
  const after = costCounters();
  return {
    result,
    statements: after.statements - before.statements,
    transactions: after.transactions - before.transactions,
  };
};

describe.each(backends)('payment on $name', (backend) => {
  let payment: Db;
  let provider: SimulatedProvider;

  // One pair of databases for the suite: every test has users and orders of its own.
  beforeAll(async () => {
    if (!backend.up) return;
    payment = await backend.open('payment');
    const providerDb = await backend.open('provider');
    cleanups.push(
      () => payment.close(),
      () => providerDb.close(),
    );
    await migrate(payment, { payment: path.join(here, 'migrations') });
    provider = await openSimulatedProvider(providerDb);
  });

  /** Runs the choreography's batch handler over `messages` in one transaction; what it emitted, by cause. */
  async function handle(messages: readonly Message[]) {
    const emitted = new Map<string, Outgoing[]>();
    const handler = paymentBatchHandler(provider, 'choreography');
    const counted = await statements(() =>
      payment.transaction((tx) =>
        handler(tx, messages, {
          now: new Date(),
          emit: (cause, events) => emitted.set(cause.id, [...(emitted.get(cause.id) ?? []), ...events]),
        }),
      ),
    );
    const types = messages.map((m) => (emitted.get(m.id) ?? []).map((e) => e.type));
    return { ...counted, types };
  }

  const status = async (orderId: string) =>
    (
      await payment.query<{ status: string; reason: string | null }>(
        'SELECT status, reason FROM payments WHERE order_id = $1',
        [orderId],
      )
    )[0];

  describe.skipIf(!backend.up)('the provider, a batch at a time', () => {
    it(
      "given two users' credit, when one batch charges them, then each user's charges draw in " +
        'order, are declined once the credit runs out, and a retry gets the first answers',
      async () => {
        const [ada, bob, eve] = [someone('ada'), someone('bob'), someone('eve')];
        await provider.deposit(ada, 1000);
        await provider.deposit(bob, 100);
        const requests = [
          { paymentId: crypto.randomUUID(), userId: ada, amount: 400, currency: 'EUR' },
          { paymentId: crypto.randomUUID(), userId: bob, amount: 300, currency: 'EUR' },
          { paymentId: crypto.randomUUID(), userId: ada, amount: 400, currency: 'EUR' },
          { paymentId: crypto.randomUUID(), userId: ada, amount: 400, currency: 'EUR' },
          { paymentId: crypto.randomUUID(), userId: ada, amount: 200, currency: 'EUR' },
          { paymentId: crypto.randomUUID(), userId: eve, amount: 1, currency: 'EUR' },
        ];
        const first = await statements(() => provider.chargeMany(requests));
        expect(first.result).toEqual([
          { status: 'approved' },
          { status: 'declined', reason: 'insufficient credit' },
          { status: 'approved' },
          { status: 'declined', reason: 'insufficient credit' },
          { status: 'approved' },
          { status: 'declined', reason: 'no payment account' },
        ]);
        expect(first).toMatchObject({ statements: 2, transactions: 1 });
        expect([await provider.credit(ada), await provider.credit(bob)]).toEqual([0, 100]);

        await provider.deposit(ada, 1000);
        expect(await provider.chargeMany(requests)).toEqual(first.result);
        expect(await provider.credit(ada)).toBe(1000);
      },
    );

    it('given captured charges, when refunded in one batch (twice), then each is given back once', async () => {
      const ada = someone('ada');
      await provider.deposit(ada, 1000);
      const charges = [300, 200, 100].map((amount) => ({
        paymentId: crypto.randomUUID(),
        userId: ada,
        amount,
        currency: 'EUR',
      }));
      await provider.chargeMany(charges);
      const refunds = [...charges.slice(0, 2), { paymentId: crypto.randomUUID() }].map(({ paymentId }) => ({
        paymentId,
      }));
      expect((await statements(() => provider.refundMany(refunds))).statements).toBe(1);
      await provider.refundMany(refunds);
      expect(await provider.credit(ada)).toBe(900);
    });

    it('given the fault switches, when a batch is charged or refunded, then it fails as one call', async () => {
      const ada = someone('ada');
      await provider.deposit(ada, 1000);
      const charge = [
        { paymentId: crypto.randomUUID(), userId: ada, amount: 100, currency: 'EUR' },
        { paymentId: crypto.randomUUID(), userId: ada, amount: 100, currency: 'EUR' },
      ];
      provider.faults.failNext = 1;
      await expect(provider.chargeMany(charge)).rejects.toThrow('payment provider failed (injected)');
      expect(provider.faults.failNext).toBe(0);
      provider.faults.refundsDown = true;
      expect(await provider.chargeMany(charge)).toEqual([{ status: 'approved' }, { status: 'approved' }]);
      await expect(provider.refundMany(charge)).rejects.toThrow('refuses refunds');
      provider.faults.refundsDown = false;
      provider.faults.down = true;
      await expect(provider.chargeMany(charge)).rejects.toThrow('payment provider unavailable');
      provider.faults.down = false;
      expect(await provider.credit(ada)).toBe(800);
    });
  });

  describe.skipIf(!backend.up)('the batch handler', () => {
    it(
      'given charges, a cancellation before its charge and a refund in batches, when handled, ' +
        'then each message gets its own outcome and our records match the provider',
      async () => {
        const ada = someone('ada');
        await provider.deposit(ada, 1000);
        const [a, b, c] = [crypto.randomUUID(), crypto.randomUUID(), crypto.randomUUID()];

        const first = await handle([reserved(a, ada, 600), cancelled(b, ada), reserved(c, ada, 600)]);
        expect(first.types).toEqual([['PaymentProcessed'], [], ['PaymentFailed']]);
        expect(await status(a)).toEqual({ status: 'PROCESSED', reason: null });
        expect(await status(b)).toBeUndefined();
        expect(await status(c)).toEqual({ status: 'FAILED', reason: 'insufficient credit' });

        // The refund of a gives ada the credit that the charge of d, in the same batch, takes.
        const d = crypto.randomUUID();
        const second = await handle([
          cancelled(a, ada),
          reserved(b, ada, 100),
          reserved(d, ada, 1000),
          reserved(c, ada, 600),
        ]);
        expect(second.types).toEqual([['PaymentRefunded'], ['PaymentFailed'], ['PaymentProcessed'], []]);
        expect(await status(a)).toEqual({ status: 'REFUNDED', reason: null });
        expect(await status(b)).toEqual({ status: 'FAILED', reason: 'order cancelled before payment' });
        expect(await provider.credit(ada)).toBe(0);

        expect((await handle([cancelled(a, ada), reserved(d, ada, 1000)])).types).toEqual([[], []]);
        expect(await provider.credit(ada)).toBe(0);
      },
    );

    it(
      'given a batch of 1 and one of 50 reservations, when handled, ' +
        'then both cost the same statements in each database',
      async () => {
        const users = Array.from({ length: 50 }, (_, k) => someone(`user${k}`));
        for (const user of users) await provider.deposit(user, 1000);
        const one = await handle([reserved(crypto.randomUUID(), users[0] ?? '', 100)]);
        const many = await handle(users.map((user) => reserved(crypto.randomUUID(), user, 100)));
        expect(many.types.flat()).toEqual(users.map(() => 'PaymentProcessed'));
        // Payment: load, write back. Provider: load, write (one transaction of its own).
        expect(one).toMatchObject({ statements: 4, transactions: 2 });
        expect(many).toMatchObject({ statements: 4, transactions: 2 });
      },
    );
  });
});
