// A cluster of real processes for the benchmark and the chaos suite: one OS process per
// service (system/service.ts) on PostgreSQL and RabbitMQ, with names unique to the run
// so nothing collides with a running deployment. It can kill (SIGKILL) and restart any
// service, reports each process's pid for the cost model (bench/cost.ts), and opens
// the databases for the invariant checker.
import { spawn, type ChildProcess } from 'node:child_process';
import amqp from 'amqplib';
import { dropDatabase, ensureDatabase, openPostgres, type Bus, type Db, type SagaMode } from '@converge/platform';
import { servers, uniqueName } from '@converge/platform/testing';
import { createRabbitBus } from '@converge/platform/rabbitmq';
import type { CheckedDbs } from '../system/invariants.ts';

export const clusterServices = ['order', 'inventory', 'payment', 'orchestrator', 'query'] as const;
export type ClusterService = (typeof clusterServices)[number];

export type Cluster = {
  name: string;
  sagaMode: SagaMode;
  /** The processes of this run: the orchestrator only in orchestration mode (it idles otherwise). */
  services: readonly ClusterService[];
  urls: Record<ClusterService, string>;
  dbs: CheckedDbs;
  bus: Bus;
  pids(): Record<ClusterService, number | undefined>;
  kill(service: ClusterService): Promise<void>;
  start(service: ClusterService, env?: Record<string, string>): Promise<void>;
  queueDepth(service: string): Promise<number>;
  stop(options?: { keepData?: boolean }): Promise<void>;
};

export async function startCluster(options: { env?: Record<string, string>; log?: (line: string) => void } = {}): Promise<Cluster> {
  const name = uniqueName('run');
  const base = 21_000 + Math.floor(Math.random() * 20_000);
  const ports: Record<ClusterService, number> = { order: base, inventory: base + 1, payment: base + 2, orchestrator: base + 3, query: base + 4 };
  const urls = Object.fromEntries(clusterServices.map((s) => [s, `http://127.0.0.1:${ports[s]}`])) as Record<ClusterService, string>;
  const env = {
    PG_URL: servers.postgres, DATABASE_PREFIX: `${name}_`, AMQP_URL: servers.rabbitmq,
    AMQP_EXCHANGE: `${name}.events`, AMQP_QUEUE_PREFIX: `${name}.`, LOG_LEVEL: 'warn', ...options.env,
  };
  const sagaMode: SagaMode = (options.env?.SAGA_MODE ?? process.env.SAGA_MODE) === 'orchestration' ? 'orchestration' : 'choreography';
  const services = clusterServices.filter((s) => s !== 'orchestrator' || sagaMode === 'orchestration');
  const children = new Map<ClusterService, ChildProcess>();

  const start = async (service: ClusterService, extra: Record<string, string> = {}) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'system/service.ts', service], {
      env: { ...process.env, ...env, PORT: String(ports[service]), ORDER_URL: urls.order, INVENTORY_URL: urls.inventory, PAYMENT_URL: urls.payment, ...extra },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    // The last words of a process that dies during start-up go into the error.
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr = (stderr + chunk.toString()).slice(-4000);
      options.log?.(`[${service}] ${chunk.toString().trimEnd()}`);
    });
    children.set(service, child);
    const deadline = Date.now() + 90_000;
    while (!(await fetch(`${urls[service]}/readyz`).then((r) => r.ok, () => false))) {
      if (Date.now() > deadline) throw new Error(`${service} not ready after 90 s:\n${stderr}`);
      if (child.exitCode !== null) throw new Error(`${service} exited with ${child.exitCode}:\n${stderr}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const kill = async (service: ClusterService) => {
    const child = children.get(service);
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
  };

  const open = async (db: string): Promise<Db> => openPostgres(db, await ensureDatabase(servers.postgres, `${name}_${db}`), { max: 4 });
  const dbs: CheckedDbs = {
    order: await open('order'), inventory: await open('inventory'), payment: await open('payment'), provider: await open('provider'),
    ...(sagaMode === 'orchestration' ? { orchestrator: await open('orchestrator') } : {}),
    query: await open('query'),
  };
  const bus = await createRabbitBus({ url: servers.rabbitmq, exchange: `${name}.events`, queuePrefix: `${name}.` });
  await Promise.all(services.map((s) => start(s)));

  return {
    name,
    sagaMode,
    services,
    urls,
    dbs,
    bus,
    pids: () => Object.fromEntries(services.map((s) => [s, children.get(s)?.pid])) as Record<ClusterService, number | undefined>,
    kill,
    start,
    queueDepth: (service) => bus.depth(service),
    stop: async ({ keepData = false } = {}) => {
      for (const service of services) {
        const child = children.get(service);
        if (child !== undefined && child.exitCode === null && child.signalCode === null) {
          const exited = new Promise((resolve) => child.once('exit', resolve));
          child.kill('SIGTERM');
          await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
          await kill(service);
        }
      }
      await bus.close();
      for (const db of Object.values(dbs)) await db.close();
      if (keepData) return;
      for (const db of [...clusterServices, 'provider']) await dropDatabase(servers.postgres, `${name}_${db}`).catch(() => undefined);
      const connection = await amqp.connect(servers.rabbitmq);
      const channel = await connection.createChannel();
      for (const service of clusterServices) await channel.deleteQueue(`${name}.${service}`).catch(() => undefined);
      await channel.deleteExchange(`${name}.events`).catch(() => undefined);
      await connection.close().catch(() => undefined);
    },
  };
}
