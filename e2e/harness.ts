// Boots the whole system for an end-to-end suite on one of two backends, embedded
// (PGlite + local bus, in memory) or real (PostgreSQL databases + RabbitMQ, unique
// names per suite, dropped afterwards), with the order saga choreographed or
// orchestrated: four modes. `describeSystem` runs a suite once in each mode it names,
// booting the system before its tests and stopping it after them. Tests speak to the
// services through their HTTP apps, each request with the token of the identity it
// acts as (a customer for their own orders, the merchant for the catalogue, an operator
// for the rest), and end with the invariant checker.
import crypto from 'node:crypto';
import { afterAll, beforeAll, describe } from 'vitest';
import { redisCache, userIdentity, type Db, type Identity, type SagaMode } from '@converge/platform';
import { serverAvailable, servers, uniqueName } from '@converge/platform/testing';
import { startSystem, type System, type SystemOptions } from '../system/system.ts';
import { waitUntilPriced } from '../services/order/service.ts';
import { assertInvariants, waitForQuiet, type Acknowledged, type Report } from '../system/invariants.ts';
import { dropRun } from '../system/launcher.ts';

export type Backend = 'embedded' | 'postgres+rabbitmq';
export type ModeName = Backend | `${Backend} · orchestration`;

export const backendOf = (mode: ModeName): Backend => (mode.startsWith('embedded') ? 'embedded' : 'postgres+rabbitmq');
export const sagaModeOf = (mode: ModeName): SagaMode =>
  mode.endsWith('orchestration') ? 'orchestration' : 'choreography';

// Probed once, on import: under CI=true a missing server fails the run here, loudly;
// elsewhere a notice is printed and the real backend's suites are skipped.
const realUp =
  (await serverAvailable('postgres')) && (await serverAvailable('rabbitmq')) && (await serverAvailable('redis'));

/**
 * The modes an end-to-end suite can run in: each backend with the saga choreographed (the plain name) and
 * orchestrated.
 */
export const modes: readonly ModeName[] = [
  'embedded',
  'embedded · orchestration',
  'postgres+rabbitmq',
  'postgres+rabbitmq · orchestration',
];

/**
 * No periodic sweep of the feeds by the query service in tests: it would repair what a
 * test means to catch (a bus losing a message). The tests of the sweep turn it on.
 */
export const testWatch = { sweepEveryMs: 0 };
/** Deadlines short enough for tests to see them expire, long enough not to fire on a busy machine. */
export const testTimings = { deadlineMs: 4_000, attempts: 3, compensationAttempts: 3, maxDeadlineMs: 10_000 };

export type Line = { productId: string; quantity: number };

export const operator: Identity = { subject: 'ops', roles: ['operator'] };
export const merchant: Identity = { subject: 'acme', roles: ['merchant'] };
export const customer = (userId: string): Identity => userIdentity(userId);

export type Harness = {
  system: System;
  acknowledged: Acknowledged[];
  /** The Authorization header of a request made as `identity` (an operator unless told). */
  auth(identity?: Identity): Promise<{ authorization: string }>;
  product(stock: number, price?: number): Promise<string>;
  user(credit: number): Promise<string>;
  place(
    userId: string,
    items: Line[],
    key?: string,
  ): Promise<{ status: number; body: Record<string, unknown>; orderId: string }>;
  order(orderId: string): Promise<Record<string, unknown> & { status: string }>;
  waitFinal(orderId: string, timeoutMs?: number): Promise<Record<string, unknown> & { status: string }>;
  stock(productId: string): Promise<{ stockQuantity: number; reserved: number; sold: number }>;
  credit(userId: string): Promise<number>;
  quiet(timeoutMs?: number): Promise<void>;
  check(expectedDeadLetters?: number): Promise<Report>;
  stop(): Promise<void>;
};

export async function boot(mode: ModeName, overrides: Partial<SystemOptions> = {}): Promise<Harness> {
  const suite = uniqueName('e2e');
  const saga = { sagaMode: sagaModeOf(mode), orchestrator: { timings: testTimings, tickMs: 50 } };
  const options: SystemOptions =
    backendOf(mode) === 'embedded'
      ? { storage: { kind: 'pglite' }, bus: { kind: 'local' }, ...saga, ...overrides }
      : {
          storage: { kind: 'postgres', serverUrl: servers.postgres, databasePrefix: `${suite}_` },
          bus: { kind: 'rabbitmq', url: servers.rabbitmq, exchange: `${suite}.events`, queuePrefix: `${suite}.` },
          queryCache: redisCache({ url: servers.redis, prefix: `${suite}:` }),
          ...saga,
          ...overrides,
        };
  const system = await startSystem({
    consumer: { backoff: { baseMs: 20, capMs: 200 }, maxAttempts: 4 },
    queryWatch: testWatch,
    ...options,
  });
  const acknowledged: Acknowledged[] = [];
  const auth = async (identity: Identity = operator) => ({
    authorization: `Bearer ${await system.identities.token(identity)}`,
  });
  const inject = async (
    service: 'order' | 'inventory' | 'payment',
    as: Identity,
    method: 'GET' | 'POST',
    url: string,
    payload?: object,
    headers?: Record<string, string>,
  ) => {
    const response = await system.services[service].app.inject({
      method,
      url,
      ...(payload === undefined ? {} : { payload }),
      headers: { ...headers, ...(await auth(as)) },
    });
    return { status: response.statusCode, body: response.json<Record<string, unknown>>() };
  };
  const queueDepth = (name: string) => system.bus.depth(name);
  const dbs = system.dbs;

  const harness: Harness = {
    system,
    acknowledged,
    auth,
    product: async (stock, price = 1000) => {
      const { status, body } = await inject('inventory', merchant, 'POST', '/products', {
        name: `product ${crypto.randomUUID().slice(0, 8)}`,
        price,
        stockQuantity: stock,
      });
      if (status !== 201) throw new Error(`product not created: ${JSON.stringify(body)}`);
      const productId = body.productId as string;
      if (!(await waitUntilPriced(dbs.order, [productId], 15_000, 20)).ok)
        throw new Error(`product ${productId} never reached the order service`);
      return productId;
    },
    user: async (credit) => {
      const userId = `user-${crypto.randomUUID().slice(0, 8)}`;
      const { status } = await inject('payment', operator, 'POST', `/users/${userId}/credit`, {
        amount: credit,
      });
      if (status !== 200) throw new Error('credit not added');
      return userId;
    },
    place: async (userId, items, key = crypto.randomUUID()) => {
      const { status, body } = await inject(
        'order',
        customer(userId),
        'POST',
        '/orders',
        { items },
        { 'idempotency-key': key },
      );
      const orderId = typeof body.orderId === 'string' ? body.orderId : '';
      if (status === 201 && !acknowledged.some((a) => a.orderId === orderId))
        acknowledged.push({ orderId, userId, idempotencyKey: key });
      return { status, body, orderId };
    },
    order: async (orderId) =>
      (await inject('order', operator, 'GET', `/orders/${orderId}`)).body as Record<string, unknown> & {
        status: string;
      },
    waitFinal: async (orderId, timeoutMs = 20_000) => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const order = await harness.order(orderId);
        if (order.status !== 'PENDING') return order;
        if (Date.now() > deadline) throw new Error(`order ${orderId} still PENDING after ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    stock: async (productId) =>
      (await inject('inventory', operator, 'GET', `/products/${productId}`)).body as {
        stockQuantity: number;
        reserved: number;
        sold: number;
      },
    credit: async (userId) =>
      (await inject('payment', operator, 'GET', `/users/${userId}/credit`)).body.credit as number,
    quiet: (timeoutMs = 30_000) => waitForQuiet({ dbs, queueDepth }, timeoutMs),
    check: async (expectedDeadLetters = 0) => {
      await harness.quiet();
      return assertInvariants({ dbs, acknowledged, queueDepth, expectedDeadLetters, sagaMode: sagaModeOf(mode) });
    },
    stop: async () => {
      await system.stop();
      await options.queryCache?.close();
      if (backendOf(mode) === 'postgres+rabbitmq')
        await dropRun({ name: suite, postgres: servers.postgres, rabbitmq: servers.rabbitmq });
    },
  };
  return harness;
}

export type SuiteBody = (h: Harness, mode: ModeName) => void;

/**
 * `<title> (<mode>)` once for each of `modes`, each on a system of its own booted before
 * the suite's tests (with `overrides` over the test defaults) and stopped after them.
 * The body registers hooks and tests as a describe block does; the harness it gets may
 * be used inside them, not while they are being registered. A mode whose servers are
 * missing is skipped, visibly (see realUp).
 */
export function describeSystem(title: string, modes: readonly ModeName[], body: SuiteBody): void;
export function describeSystem(
  title: string,
  modes: readonly ModeName[],
  overrides: Partial<SystemOptions>,
  body: SuiteBody,
): void;
export function describeSystem(
  title: string,
  modes: readonly ModeName[],
  ...rest: [SuiteBody] | [Partial<SystemOptions>, SuiteBody]
): void {
  const [overrides, body] = rest.length === 1 ? [{}, rest[0]] : rest;
  for (const mode of modes) {
    // describe.each formats the mode into the title as these suites always named it.
    describe.skipIf(backendOf(mode) === 'postgres+rabbitmq' && !realUp).each([{ name: mode }])(
      `${title} ($name)`,
      ({ name }) => {
        let booted: Harness | undefined;
        beforeAll(async () => {
          booted = await boot(name, overrides);
        });
        afterAll(async () => {
          await booted?.stop();
        });
        body(
          bootedLater(() => {
            if (booted === undefined) throw new Error(`the system of "${title} (${name})" is not booted`);
            return booted;
          }),
          name,
        );
      },
    );
  }
}

/** A harness that forwards to the one booted later, so that a suite's body can hold it from the start. */
function bootedLater(current: () => Harness): Harness {
  return {
    get system() {
      return current().system;
    },
    get acknowledged() {
      return current().acknowledged;
    },
    auth: (identity) => current().auth(identity),
    product: (stock, price) => current().product(stock, price),
    user: (credit) => current().user(credit),
    place: (userId, items, key) => current().place(userId, items, key),
    order: (orderId) => current().order(orderId),
    waitFinal: (orderId, timeoutMs) => current().waitFinal(orderId, timeoutMs),
    stock: (productId) => current().stock(productId),
    credit: (userId) => current().credit(userId),
    quiet: (timeoutMs) => current().quiet(timeoutMs),
    check: (expectedDeadLetters) => current().check(expectedDeadLetters),
    stop: () => current().stop(),
  };
}

export type { Db };
