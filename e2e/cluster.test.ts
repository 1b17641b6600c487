// Cluster mode with real processes: each service is its own OS process (the compiled
// dist/service.js, launched by system/launcher.ts) on PostgreSQL and RabbitMQ. A
// process is killed with SIGKILL after committing and before publishing, another one
// in the middle of a stream of orders; restarted, the system finishes every order
// once, and the invariant checker agrees. The query service runs too: some events
// (InventoryCommitted, PaymentRefunded…) are bound by it alone, and an event that no
// queue binds stays in its outbox, as it must.
import crypto from 'node:crypto';
import { userIdentity, type Bus, type Identity } from '@converge/platform';
import { serverAvailable, servers, uniqueName } from '@converge/platform/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRabbitBus } from '@converge/platform/rabbitmq';
import { assertInvariants, waitForQuiet, type Acknowledged, type CheckedDbs } from '../system/invariants.ts';
import { deploymentIdentities, identityEnv } from '../system/identities.ts';
import { launcher, openRunDatabase, type Run } from '../system/launcher.ts';

const up =
  (await serverAvailable('postgres')) && (await serverAvailable('rabbitmq')) && (await serverAvailable('redis'));
const run: Run = { name: uniqueName('cluster'), postgres: servers.postgres, rabbitmq: servers.rabbitmq };
const basePort = 20_000 + Math.floor(Math.random() * 20_000);
const ports = { order: basePort, inventory: basePort + 1, payment: basePort + 2, query: basePort + 3 } as const;
type Name = keyof typeof ports;
const url = (name: Name) => `http://127.0.0.1:${ports[name]}`;

const identities = await deploymentIdentities();
const env = {
  order: await identityEnv(identities, 'order'),
  inventory: await identityEnv(identities, 'inventory'),
  payment: await identityEnv(identities, 'payment'),
  query: await identityEnv(identities, 'query'),
};
const processes = launcher({
  runner: 'bundle',
  run,
  env: {
    LOG_LEVEL: 'warn',
    // Where the query service reads the feeds (its read cache is the machine's Redis, under the run's prefix).
    ORDER_URL: url('order'),
    INVENTORY_URL: url('inventory'),
    PAYMENT_URL: url('payment'),
  },
  processes: (Object.keys(ports) as Name[]).map((name) => ({
    name,
    entry: 'service',
    args: [name],
    env: { PORT: String(ports[name]), ...env[name] },
    url: url(name),
  })),
});

const post = async (name: Name, as: Identity, path: string, body: unknown, headers: Record<string, string> = {}) => {
  const authorization = `Bearer ${await identities.token(as)}`;
  const response = await fetch(`${url(name)}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization, ...headers },
    body: JSON.stringify(body),
  });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
};

describe.skipIf(!up)('cluster mode with real processes (PostgreSQL + RabbitMQ)', () => {
  let dbs: CheckedDbs;
  let bus: Bus;
  const acknowledged: Acknowledged[] = [];
  let product = '';

  const place = async (userId: string, quantity = 1) => {
    const key = crypto.randomUUID();
    const { status, body } = await post(
      'order',
      userIdentity(userId),
      '/orders',
      { items: [{ productId: product, quantity }] },
      { 'idempotency-key': key },
    );
    expect(status).toBe(201);
    acknowledged.push({ orderId: body.orderId as string, userId, idempotencyKey: key });
    return body.orderId as string;
  };

  beforeAll(async () => {
    const open = (name: string) => openRunDatabase(run, name);
    dbs = {
      order: await open('order'),
      inventory: await open('inventory'),
      payment: await open('payment'),
      provider: await open('provider'),
      query: await open('query'),
    };
    bus = await createRabbitBus({ url: servers.rabbitmq, exchange: `${run.name}.events`, queuePrefix: `${run.name}.` });
    await processes.startAll();
    const created = await post('inventory', { subject: 'acme', roles: ['merchant'] }, '/products', {
      name: 'cluster widget',
      price: 100,
      stockQuantity: 1000,
    });
    product = created.body.productId as string;
    await post('payment', { subject: 'ops', roles: ['operator'] }, '/users/carol/credit', { amount: 1_000_000 });
    const deadline = Date.now() + 20_000;
    while ((await dbs.order.query('SELECT 1 FROM catalogue WHERE product_id = $1', [product])).length === 0) {
      if (Date.now() > deadline) throw new Error('catalogue never reached the order service');
      await new Promise((r) => setTimeout(r, 50));
    }
  });

  afterAll(async () => {
    for (const name of processes.names) await processes.kill(name);
    await bus.close();
    for (const db of Object.values(dbs)) await db.close();
    await processes.shutdown();
  });

  const queueDepth = (name: string) => bus.depth(name);

  it(
    'given the order process killed after committing orders and before ' +
      'publishing them, when it restarts, then every order completes once',
    async () => {
      await processes.restart('order', { kill: true, env: { RELAY: 'false' } });
      const orders = await Promise.all(Array.from({ length: 20 }, () => place('carol')));
      const [pending] = await dbs.order.query<{ n: number }>(
        'SELECT count(*)::int AS n FROM outbox WHERE published_at IS NULL',
      );
      expect(pending?.n).toBe(20);
      await processes.restart('order', { kill: true });
      await waitForQuiet({ dbs, queueDepth }, 60_000);
      const statuses = await dbs.order.query<{ status: string }>(
        'SELECT status FROM orders WHERE order_id = ANY($1::uuid[])',
        [orders],
      );
      expect(statuses.map((s) => s.status)).toEqual(Array.from({ length: 20 }, () => 'COMPLETED'));
      await assertInvariants({ dbs, acknowledged, queueDepth });
    },
  );

  it(
    'given a stream of orders, when inventory and then payment are killed ' +
      'mid-stream and restarted, then nothing is lost or doubled',
    async () => {
      const placing = (async () => {
        for (let i = 0; i < 60; i++) {
          await place('carol');
          await new Promise((r) => setTimeout(r, 15));
        }
      })();
      await new Promise((r) => setTimeout(r, 250));
      await processes.restart('inventory', { kill: true });
      await processes.restart('payment', { kill: true });
      await placing;
      await waitForQuiet({ dbs, queueDepth }, 90_000);
      const report = await assertInvariants({ dbs, acknowledged, queueDepth });
      expect(report.summary.completed).toBe(acknowledged.length);
    },
  );
});
