// A cluster of real processes for the benchmark and the chaos suite: one OS process per
// service (system/service.ts, through tsx) on PostgreSQL and RabbitMQ, with names unique
// to the run so nothing collides with a running deployment. The processes themselves are
// system/launcher.ts's; this adds what the benchmark and chaos need around them: each
// process's pid for the cost model (bench/cost.ts), the databases opened for the
// invariant checker, a bus to read queue depths, and the run's identities (its own
// signing key), so the load generator and the probes call the services with tokens.
import { serviceIdentity, type Bus, type Identities, type Identity, type SagaMode } from '@converge/platform';
import { servers, uniqueName } from '@converge/platform/testing';
import { createRabbitBus } from '@converge/platform/rabbitmq';
import { deploymentIdentities, identityEnv } from '../system/identities.ts';
import type { CheckedDbs } from '../system/invariants.ts';
import { launcher, openRunDatabase, type Run } from '../system/launcher.ts';

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
  identities: Identities;
  /** The Authorization header of a request as `identity` (this run's operations tooling unless told). */
  auth(identity?: Identity): Promise<{ authorization: string }>;
  pids(): Record<ClusterService, number | undefined>;
  kill(service: ClusterService): Promise<void>;
  start(service: ClusterService, env?: Record<string, string>): Promise<void>;
  queueDepth(service: string): Promise<number>;
  stop(options?: { keepData?: boolean }): Promise<void>;
};

/** The benchmark's and chaos suite's own probes read figures and feeds as a service would. */
const tooling: Identity = { ...serviceIdentity('bench'), roles: ['service', 'operator', 'merchant'] };

export async function startCluster(
  options: { env?: Record<string, string>; log?: (line: string) => void } = {},
): Promise<Cluster> {
  const run: Run = { name: uniqueName('run'), postgres: servers.postgres, rabbitmq: servers.rabbitmq };
  const base = 21_000 + Math.floor(Math.random() * 20_000);
  const ports: Record<ClusterService, number> = {
    order: base,
    inventory: base + 1,
    payment: base + 2,
    orchestrator: base + 3,
    query: base + 4,
  };
  const urls = Object.fromEntries(clusterServices.map((s) => [s, `http://127.0.0.1:${ports[s]}`])) as Record<
    ClusterService,
    string
  >;
  const sagaMode: SagaMode =
    (options.env?.SAGA_MODE ?? process.env.SAGA_MODE) === 'orchestration' ? 'orchestration' : 'choreography';
  const services = clusterServices.filter((s) => s !== 'orchestrator' || sagaMode === 'orchestration');
  const identities = await deploymentIdentities();
  const processEnv = Object.fromEntries(
    await Promise.all(services.map(async (s) => [s, await identityEnv(identities, s)] as const)),
  );
  const processes = launcher({
    runner: 'tsx',
    run,
    env: {
      LOG_LEVEL: 'warn',
      ...options.env,
      ORDER_URL: urls.order,
      INVENTORY_URL: urls.inventory,
      PAYMENT_URL: urls.payment,
    },
    processes: services.map((s) => ({
      name: s,
      entry: 'service',
      args: [s],
      env: { PORT: String(ports[s]), ...processEnv[s] },
      url: urls[s],
    })),
    readyTimeoutMs: 90_000,
    ...(options.log === undefined ? {} : { log: options.log }),
    ...(process.env.CPU_PROFILE_DIR === undefined ? {} : { cpuProfileDir: process.env.CPU_PROFILE_DIR }),
  });

  const open = (db: string) => openRunDatabase(run, db, { max: 4 });
  const dbs: CheckedDbs = {
    order: await open('order'),
    inventory: await open('inventory'),
    payment: await open('payment'),
    provider: await open('provider'),
    ...(sagaMode === 'orchestration' ? { orchestrator: await open('orchestrator') } : {}),
    query: await open('query'),
  };
  const bus = await createRabbitBus({ url: run.rabbitmq, exchange: `${run.name}.events`, queuePrefix: `${run.name}.` });
  const closeClients = async () => {
    await bus.close();
    for (const db of Object.values(dbs)) await db.close();
  };
  try {
    await processes.startAll();
  } catch (error) {
    await closeClients();
    await processes.shutdown();
    throw error;
  }

  return {
    name: run.name,
    sagaMode,
    services,
    urls,
    dbs,
    bus,
    identities,
    auth: async (identity = tooling) => ({ authorization: `Bearer ${await identities.token(identity)}` }),
    pids: () => processes.pids(),
    kill: (service) => processes.kill(service),
    start: (service, env) => processes.start(service, env),
    queueDepth: (service) => bus.depth(service),
    stop: async ({ keepData = false } = {}) => {
      // This process's own connections go first, so that nothing of ours holds the run's data when it is dropped.
      await closeClients();
      await processes.shutdown({ keepData });
    },
  };
}
