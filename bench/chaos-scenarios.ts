// The faults of the chaos suite (bench/chaos.ts runs them), one function per scenario.
// Each runs while the steady load does, injects its fault and returns its evidence and
// the checks particular to it, made once the system is quiet. Stopping RabbitMQ and
// restarting PostgreSQL hit the servers themselves, so whatever else uses them on this
// machine feels it too: `restoreServers` starts again whatever is still stopped.
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { promisify } from 'node:util';
import amqp from 'amqplib';
import { boundTypes, catalogue, isEventType } from '@converge/contracts';
import { servers } from '@converge/platform/testing';
import type { Acknowledged } from '../system/invariants.ts';
import { inventorySources } from '../services/inventory/service.ts';
import { orderSources } from '../services/order/service.ts';
import { paymentSources } from '../services/payment/service.ts';
import { orchestratorSources } from '../services/orchestrator/service.ts';
import { querySources } from '../services/query/service.ts';
import { userIdentity, type SagaMode } from '@converge/platform';
import type { Cluster, ClusterService } from './cluster.ts';
import { pricedIn, type Fixture, type LoadReport } from './load.ts';

const exec = promisify(execFile);

export type Check = { name: string; pass: boolean; detail: string };

/** What a fault injection leaves behind: its evidence, and what to check after quiet. */
export type Injected = {
  evidence: Record<string, unknown>;
  /** Orders acknowledged outside the steady load (the contention burst). */
  acknowledged?: Acknowledged[];
  expectedDeadLetters?: number;
  verify?: (load: LoadReport) => Promise<Check[]>;
};

export type Run = {
  cluster: Cluster;
  fixture: Fixture;
  /** How long the load runs, in seconds. */
  seconds: number;
  short: boolean;
  /** Seconds since the load started. */
  elapsed(): number;
  note(line: string): void;
};

export type Scenario = {
  seconds: number;
  shortSeconds: number;
  /** The shortest load that lets the fault mean something for a cluster of this many services. */
  minSeconds?: (services: number) => number;
  env?: Record<string, string>;
  inject(run: Run): Promise<Injected>;
};

export const check = (name: string, pass: boolean, detail: string): Check => ({ name, pass, detail });
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
const until = (run: Run, second: number) => sleep((second - run.elapsed()) * 1000);

// The servers this suite stops; whatever is stopped when a scenario ends is started again.
const stopped = { rabbitmq: false, postgres: false };
const rabbitmqctl = async (action: 'stop_app' | 'start_app') => {
  await exec('rabbitmqctl', [action], { timeout: 120_000 });
};
const pgVersion = () =>
  fs
    .readdirSync('/etc/postgresql')
    .filter((v) => fs.existsSync(`/etc/postgresql/${v}/main`))
    .sort()
    .at(-1) ?? '';
const pgctl = async (action: 'restart' | 'start') => {
  await exec('pg_ctlcluster', ['--skip-systemctl-redirect', pgVersion(), 'main', action], { timeout: 120_000 });
};
export async function restoreServers(): Promise<void> {
  if (stopped.rabbitmq)
    await rabbitmqctl('start_app').then(
      () => (stopped.rabbitmq = false),
      (e: unknown) => console.error('cannot start RabbitMQ again:', e),
    );
  if (stopped.postgres)
    await pgctl('start').then(
      () => (stopped.postgres = false),
      (e: unknown) => console.error('cannot start PostgreSQL again:', e),
    );
}

// Messages in each of the cluster's queues, ready *and* unacked. The bus's own depth
// (AMQP queue.declare) counts only ready messages and what its own process holds, so a
// delivery held by a service (being handled, or waiting out a delay) would look quiet.
// One `rabbitmqctl list_queues` serves the three queues of one poll; -1 when the broker
// does not answer (not quiet).
export function brokerDepth(cluster: Cluster): (service: string) => Promise<number> {
  let last: { at: number; counts: Promise<Map<string, number> | undefined> } | undefined;
  const list = () =>
    exec('rabbitmqctl', ['list_queues', 'name', 'messages', '--no-table-headers', '-q'], { timeout: 30_000 }).then(
      ({ stdout }) =>
        new Map(
          stdout
            .trim()
            .split('\n')
            .map((line) => line.split('\t'))
            .map(([name = '', n = '']) => [name, Number(n)]),
        ),
      () => undefined,
    );
  return async (service) => {
    if (last === undefined || Date.now() - last.at > 500) last = { at: Date.now(), counts: list() };
    const counts = await last.counts;
    return counts === undefined ? -1 : (counts.get(`${cluster.name}.${service}`) ?? 0);
  };
}

// 1. kill -9 a service every 10–20 s and start it again at once; each one at least twice.
// The next kill does not wait for the last restart (a slow start must not stretch the
// schedule), but a process is never killed while it is still starting.
async function killServices(run: Run): Promise<Injected> {
  const window = run.seconds - 5;
  // Two kills per service must fit the window (minSeconds makes it long enough).
  const longest = Math.max(10, Math.min(20, window / (2 * run.cluster.services.length)));
  const next = roundRobinWithJitter(run.cluster.services);
  type Kill = { at: number; service: ClusterService; pid: number | undefined; backAfterSec?: number };
  const kills: Kill[] = [];
  const starting = new Map<ClusterService, Promise<void>>();
  for (let due = 10 + Math.random() * (longest - 10); due <= window; due += 10 + Math.random() * (longest - 10)) {
    await until(run, due);
    const service = next();
    await starting.get(service);
    const kill: Kill = { at: round(run.elapsed()), service, pid: run.cluster.pids()[service] };
    kills.push(kill);
    run.note(`kill -9 ${service} (pid ${kill.pid ?? '?'})`);
    await run.cluster.kill(service);
    const restart = run.cluster.start(service).then(() => {
      kill.backAfterSec = round(run.elapsed() - kill.at);
      run.note(`${service} ready again after ${kill.backAfterSec} s`);
    });
    restart.catch(() => undefined); // awaited below; this only keeps an early failure from going unhandled
    starting.set(service, restart);
  }
  await Promise.all(starting.values());
  const perService = Object.fromEntries(
    run.cluster.services.map((s) => [s, kills.filter((k) => k.service === s).length]),
  );
  return {
    evidence: { kills: kills.length, perService, schedule: kills },
    verify: () =>
      Promise.resolve(
        run.cluster.services.map((s) =>
          check(`${s} killed at least twice`, (perService[s] ?? 0) >= 2, `${perService[s] ?? 0} kills`),
        ),
      ),
  };
}

/** Each round visits every item once in a random order, never the same one twice in a row. */
function roundRobinWithJitter<T>(items: readonly T[]): () => T {
  let round: T[] = [];
  let last: T | undefined;
  return () => {
    if (round.length === 0) {
      do round = [...items].sort(() => Math.random() - 0.5);
      while (items.length > 1 && round[0] === last);
    }
    last = round.shift();
    if (last === undefined) throw new Error('nothing to pick');
    return last;
  };
}

// 2. RabbitMQ stopped twice; the order API keeps answering 201 (orders wait in the outbox).
async function brokerOutage(run: Run): Promise<Injected> {
  const outages: { downAt: Date; upAt: Date; seconds: number; orderOutboxBacklog: number }[] = [];
  let backAt = 0;
  for (const planned of [0.15, 0.55].map((f) => f * run.seconds)) {
    // at least 10 s between outages, for the cluster to reconnect in between
    await until(run, Math.max(planned, backAt + 10));
    const length = run.short ? 15 + Math.random() * 5 : 20;
    run.note('rabbitmqctl stop_app');
    stopped.rabbitmq = true;
    await rabbitmqctl('stop_app');
    const downAt = new Date();
    await sleep(length * 1000);
    const [row] = await run.cluster.dbs.order.query<{ n: number }>(
      'SELECT count(*)::int AS n FROM outbox WHERE published_at IS NULL',
    );
    const upAt = new Date();
    run.note(
      `rabbitmqctl start_app (down ${((upAt.getTime() - downAt.getTime()) / 1000).toFixed(1)} s, ` +
        `order outbox backlog ${row?.n ?? 0})`,
    );
    await rabbitmqctl('start_app');
    stopped.rabbitmq = false;
    backAt = run.elapsed();
    outages.push({
      downAt,
      upAt,
      seconds: round((upAt.getTime() - downAt.getTime()) / 1000),
      orderOutboxBacklog: row?.n ?? 0,
    });
  }
  const evidence: Record<string, unknown> = { outages };
  return {
    evidence,
    verify: async (load) => {
      const ids = load.acknowledged.map((a) => a.orderId);
      const checks: Check[] = [];
      const during: number[] = [];
      for (const [i, outage] of outages.entries()) {
        const [row] = await run.cluster.dbs.order.query<{ n: number }>(
          'SELECT count(*)::int AS n FROM orders WHERE order_id = ANY($1::uuid[]) AND created_at BETWEEN $2 AND $3',
          [ids, outage.downAt, outage.upAt],
        );
        const n = row?.n ?? 0;
        during.push(n);
        checks.push(
          check(
            `orders acknowledged while the broker was down (outage ${i + 1})`,
            n > 0,
            `${n} orders answered 201 in ${outage.seconds} s without a broker`,
          ),
        );
      }
      evidence.acknowledgedDuringOutages = during;
      return checks;
    },
  };
}

// 3. The PostgreSQL server restarts mid-load.
async function dbRestart(run: Run): Promise<Injected> {
  await until(run, run.seconds * 0.4);
  run.note('pg_ctlcluster restart');
  const started = Date.now();
  stopped.postgres = true;
  await pgctl('restart');
  stopped.postgres = false;
  const seconds = round((Date.now() - started) / 1000);
  const back = new Date();
  run.note(`PostgreSQL back after ${seconds} s`);
  const evidence: Record<string, unknown> = { restartAt: round(run.elapsed() - seconds), restartSeconds: seconds };
  return {
    evidence,
    verify: async (load) => {
      const [row] = await run.cluster.dbs.order.query<{ n: number }>(
        'SELECT count(*)::int AS n FROM orders WHERE order_id = ANY($1::uuid[]) AND created_at > $2',
        [load.acknowledged.map((a) => a.orderId), back],
      );
      evidence.acknowledgedAfterRestart = row?.n ?? 0;
      return [
        check(
          'orders acknowledged after the restart',
          (row?.n ?? 0) > 0,
          `${row?.n ?? 0} orders answered 201 after PostgreSQL came back`,
        ),
      ];
    },
  };
}

// 4. The bus duplicates and delays deliveries (BUS_FAULTS, test-only): effects stay single.
async function duplicatesReorder(run: Run): Promise<Injected> {
  await until(run, run.seconds);
  const evidence: Record<string, unknown> = {};
  return {
    evidence,
    verify: async () => {
      const statuses = await Promise.all(
        run.cluster.services.map(async (s) => {
          const status = (await (
            await fetch(`${run.cluster.urls[s]}/status`, { headers: await run.cluster.auth() })
          ).json()) as {
            consumer: Record<string, number>;
            held: number;
            busFaults?: { duplicated: number; delayed: number };
          };
          return [s, { busFaults: status.busFaults, consumer: status.consumer }] as const;
        }),
      );
      const sum = (f: (v: (typeof statuses)[number][1]) => number) =>
        statuses.reduce((total, [, v]) => total + f(v), 0);
      const duplicated = sum((v) => v.busFaults?.duplicated ?? 0);
      const delayed = sum((v) => v.busFaults?.delayed ?? 0);
      const duplicateOutcomes = sum((v) => v.consumer.duplicate ?? 0);
      const held = sum((v) => v.consumer.held ?? 0);
      Object.assign(evidence, {
        duplicated,
        delayed,
        duplicateOutcomes,
        heldOutcomes: held,
        perService: Object.fromEntries(statuses),
      });
      return [
        check(
          'deliveries duplicated and delayed by the bus',
          duplicated > 0 && delayed > 0,
          `${duplicated} duplicated, ${delayed} delayed (from /status)`,
        ),
        check(
          'duplicates recognised by the consumers',
          duplicateOutcomes > 0,
          `${duplicateOutcomes} 'duplicate' outcomes, ${held} messages held for their predecessor`,
        ),
      ];
    },
  };
}

// 5. Malformed messages: exactly those are dead-lettered and alerted; the rest completes.
const sourcesOf = (mode: SagaMode): Record<ClusterService, readonly string[]> => ({
  order: orderSources(mode),
  inventory: inventorySources(mode),
  payment: paymentSources(mode),
  orchestrator: mode === 'orchestration' ? orchestratorSources : [],
  query: querySources,
});

const poisonKinds = [
  'not JSON',
  'not an envelope',
  'unknown type',
  'wrong source',
  'payload against its schema',
] as const;

function poisonMessage(kind: number): { routingKey: string; id: string; body: string } {
  const id = crypto.randomUUID();
  const routingKeys = [
    'OrderCreated',
    'InventoryReserved',
    'PaymentProcessed',
    'InventoryRejected',
    'PaymentFailed',
    'OrderCancelled',
  ];
  const routingKey = routingKeys[kind % routingKeys.length] ?? 'OrderCreated';
  const source = isEventType(routingKey) ? catalogue[routingKey].source : 'order';
  const envelope = {
    specversion: '1.0',
    id,
    source,
    type: routingKey,
    subject: crypto.randomUUID(),
    time: new Date().toISOString(),
    datacontenttype: 'application/json',
    dataversion: 1,
    sequence: 1,
    correlationid: id,
    data: {},
  };
  const bodies: Record<(typeof poisonKinds)[number], string> = {
    'not JSON': `{"id": "${id}", "type": "${routingKey}", "data": {`,
    'not an envelope': JSON.stringify({ id, hello: 'not an envelope' }),
    'unknown type': JSON.stringify({ ...envelope, type: 'OrderExploded' }),
    'wrong source': JSON.stringify({ ...envelope, source: source === 'order' ? 'payment' : 'order' }),
    'payload against its schema': JSON.stringify({ ...envelope, data: { orderId: 'not-a-uuid', amount: -5 } }),
  };
  return { routingKey, id, body: bodies[poisonKinds[kind % poisonKinds.length] ?? 'not JSON'] };
}

async function poison(run: Run): Promise<Injected> {
  const count = run.short ? 10 : 20;
  const connection = await amqp.connect(servers.rabbitmq);
  const channel = await connection.createConfirmChannel();
  const injected: { id: string; routingKey: string; services: ClusterService[] }[] = [];
  try {
    for (let i = 0; i < count; i++) {
      await until(run, ((i + 1) * run.seconds * 0.8) / count);
      const message = poisonMessage(i);
      channel.publish(`${run.cluster.name}.events`, message.routingKey, Buffer.from(message.body), {
        messageId: message.id,
        contentType: 'application/cloudevents+json',
        persistent: true,
      });
      await channel.waitForConfirms();
      // Routed by type: it reaches the services that bind it, whatever its envelope says.
      const bound = (s: ClusterService) =>
        boundTypes(s, sourcesOf(run.cluster.sagaMode)[s]).some((type) => type === message.routingKey);
      injected.push({ id: message.id, routingKey: message.routingKey, services: run.cluster.services.filter(bound) });
    }
  } finally {
    await connection.close().catch(() => undefined);
  }
  run.note(`${injected.length} malformed messages injected`);
  const expected = injected.flatMap((m) => m.services.map((s) => `${s} ${m.id}`)).sort();
  const evidence: Record<string, unknown> = {
    injected: injected.length,
    kinds: poisonKinds,
    expectedDeadLetters: expected.length,
  };
  return {
    evidence,
    expectedDeadLetters: expected.length,
    verify: async (load) => {
      const parked: string[] = [];
      const metrics: Record<string, number> = {};
      for (const s of run.cluster.services) {
        const db =
          s === 'orchestrator'
            ? run.cluster.dbs.orchestrator
            : s === 'query'
              ? run.cluster.dbs.query
              : run.cluster.dbs[s];
        if (db === undefined) continue;
        const rows = await db.query<{ consumer: string; message_id: string | null }>(
          "SELECT consumer, message_id FROM dead_letters WHERE status = 'parked'",
        );
        parked.push(...rows.map((r) => `${r.consumer} ${r.message_id ?? 'null'}`));
        const text = await (
          await fetch(`${run.cluster.urls[s]}/metrics`, { headers: await run.cluster.auth() })
        ).text();
        metrics[s] = Number(/^converge_dead_letters\{[^}]*\} (\d+)$/m.exec(text)?.[1] ?? -1);
      }
      parked.sort();
      const missing = expected.filter((e) => !parked.includes(e));
      const unexpected = parked.filter((p) => !expected.includes(p));
      Object.assign(evidence, { parked: parked.length, missing, unexpected, deadLetterMetric: metrics });
      const affected = run.cluster.services.filter((s) => expected.some((e) => e.startsWith(`${s} `)));
      return [
        check(
          'dead letters are exactly the injected messages',
          missing.length === 0 && unexpected.length === 0 && parked.length === expected.length,
          `${parked.length} parked, ${expected.length} expected; ` +
            `missing ${JSON.stringify(missing)}, unexpected ${JSON.stringify(unexpected)}`,
        ),
        ...affected.map((s) => {
          const want = expected.filter((e) => e.startsWith(`${s} `)).length;
          return check(
            `converge_dead_letters alerts on ${s}`,
            metrics[s] === want,
            `metric ${metrics[s] ?? '?'}, ${want} injected into its queue`,
          );
        }),
        check('every other order completed', (load.finals.PENDING ?? 0) === 0, `finals ${JSON.stringify(load.finals)}`),
      ];
    },
  };
}

// 6. 500 concurrent orders for the 20 units of one product.
async function hotContention(run: Run): Promise<Injected> {
  const { cluster, fixture } = run;
  const response = await fetch(`${cluster.urls.inventory}/products`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(await cluster.auth()) },
    body: JSON.stringify({ name: `hot ${crypto.randomUUID().slice(0, 8)}`, price: 500, stockQuantity: 20 }),
  });
  const { productId } = (await response.json()) as { productId: string };
  await pricedIn(cluster.dbs.order)([productId]);
  await until(run, run.seconds * 0.3);
  let lowest = { stock: Number.POSITIVE_INFINITY, reserved: Number.POSITIVE_INFINITY };
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const [row] = await cluster.dbs.inventory.query<{ stock_quantity: number; reserved: number }>(
        'SELECT stock_quantity, reserved FROM products WHERE product_id = $1',
        [productId],
      );
      if (row !== undefined)
        lowest = {
          stock: Math.min(lowest.stock, row.stock_quantity),
          reserved: Math.min(lowest.reserved, row.reserved),
        };
      await sleep(20);
    }
  })();
  run.note('500 concurrent orders for 20 units');
  const burstStart = Date.now();
  const placed = await Promise.all(
    Array.from({ length: 500 }, (_, i) =>
      placeOrder(cluster, fixture.users[i % fixture.users.length] ?? fixture.broke, productId),
    ),
  );
  const acknowledged = placed.filter((a) => a !== undefined);
  const placedSec = round((Date.now() - burstStart) / 1000);
  const ids = acknowledged.map((a) => a.orderId);
  const deadline = Date.now() + 120_000;
  while (
    Date.now() < deadline &&
    (
      await cluster.dbs.order.query(
        "SELECT 1 FROM orders WHERE order_id = ANY($1::uuid[]) AND status = 'PENDING' LIMIT 1",
        [ids],
      )
    ).length > 0
  )
    await sleep(100);
  sampling = false;
  await sampler;
  const settledSec = round((Date.now() - burstStart) / 1000);
  run.note(`burst: ${acknowledged.length} acknowledged in ${placedSec} s, all final after ${settledSec} s`);
  const evidence: Record<string, unknown> = {
    productId,
    burstAcknowledged: acknowledged.length,
    placedSec,
    settledSec,
  };
  return {
    evidence,
    acknowledged,
    verify: async () => {
      const statuses = Object.fromEntries(
        (
          await cluster.dbs.order.query<{ status: string; n: number }>(
            'SELECT status, count(*)::int AS n FROM orders WHERE items @> $1::jsonb GROUP BY status',
            [JSON.stringify([{ productId }])],
          )
        ).map((r) => [r.status, r.n]),
      );
      const [stock] = await cluster.dbs.inventory.query<{ stock_quantity: number; reserved: number; sold: number }>(
        'SELECT stock_quantity, reserved, sold FROM products WHERE product_id = $1',
        [productId],
      );
      Object.assign(evidence, { statuses, stock, lowestSampled: lowest });
      return [
        check('all 500 orders acknowledged', acknowledged.length === 500, `${acknowledged.length} of 500`),
        check(
          'exactly 20 COMPLETED and 480 FAILED',
          statuses.COMPLETED === 20 && statuses.FAILED === 480 && Object.keys(statuses).length === 2,
          JSON.stringify(statuses),
        ),
        check(
          'stock never negative, all 20 sold',
          lowest.stock >= 0 &&
            lowest.reserved >= 0 &&
            stock?.stock_quantity === 0 &&
            stock.sold === 20 &&
            stock.reserved === 0,
          `final ${JSON.stringify(stock)}, lowest sampled ${JSON.stringify(lowest)}`,
        ),
      ];
    },
  };
}

/** One order with an Idempotency-Key, retried as a real client would; undefined if never acknowledged. */
async function placeOrder(cluster: Cluster, userId: string, productId: string): Promise<Acknowledged | undefined> {
  const key = crypto.randomUUID();
  const body = JSON.stringify({ items: [{ productId, quantity: 1 }] });
  const orderUrl = cluster.urls.order;
  const caller = await cluster.auth(userIdentity(userId));
  for (let attempt = 1; attempt <= 20; attempt++) {
    try {
      const response = await fetch(`${orderUrl}/orders`, {
        method: 'POST',
        body,
        headers: { 'content-type': 'application/json', 'idempotency-key': key, ...caller },
        signal: AbortSignal.timeout(30_000),
      });
      const answer = (await response.json()) as { orderId?: string };
      if (response.status === 201 && typeof answer.orderId === 'string')
        return { orderId: answer.orderId, userId, idempotencyKey: key };
      if (response.status !== 409 && response.status < 500) return undefined;
    } catch {
      // network or timeout: the same key again
    }
    await sleep(100 * attempt);
  }
  return undefined;
}

export const scenarios = {
  'kill-services': {
    seconds: 120,
    shortSeconds: 65,
    minSeconds: (services) => 2 * services * 10 + 10,
    inject: killServices,
  },
  'broker-outage': { seconds: 100, shortSeconds: 70, inject: brokerOutage },
  'db-restart': { seconds: 60, shortSeconds: 40, inject: dbRestart },
  'duplicates-reorder': {
    seconds: 60,
    shortSeconds: 40,
    inject: duplicatesReorder,
    env: { NODE_ENV: 'test', BUS_FAULTS: 'duplicate=0.1,delay=0.1,max-delay-ms=3000' },
  },
  poison: { seconds: 60, shortSeconds: 40, inject: poison },
  'hot-contention': { seconds: 40, shortSeconds: 30, inject: hotContention },
} satisfies Record<string, Scenario>;

export type ScenarioName = keyof typeof scenarios;
export const scenarioNames = Object.keys(scenarios) as ScenarioName[];

export const round = (n: number) => Math.round(n * 10) / 10;
