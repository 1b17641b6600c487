// The whole system in one process: every service with its own database, one bus.
// Embedded mode (npm start) uses PGlite directories and the local bus; tests use the
// same composition in memory, or against PostgreSQL and RabbitMQ. Cluster mode runs
// one process per service instead (system/service.ts), with the same definitions.
import fs from 'node:fs';
import path from 'node:path';
import { boundTypes } from '@converge/contracts';
import {
  createIdentities,
  createLocalBus,
  ensureDatabase,
  inProcessFeed,
  openPglite,
  openPostgres,
  serviceIdentity,
  startService,
  silentLogger,
  type Bus,
  type BusFaults,
  type Db,
  type HttpApp,
  type Identities,
  type ReadCache,
  type Logger,
  type RunningService,
  type SagaMode,
  type ServiceDefinition,
  type ServiceDeps,
} from '@converge/platform';
import type { FaultStats } from '@converge/platform/faults';
import { createRabbitBus } from '@converge/platform/rabbitmq';
import { inventoryService } from '../services/inventory/service.ts';
import { orchestratorService, type OrchestratorOptions } from '../services/orchestrator/service.ts';
import { orderService } from '../services/order/service.ts';
import { querySources, type WatchTimings, queryService } from '../services/query/service.ts';
import { openSimulatedProvider, paymentService, type SimulatedProvider } from '../services/payment/service.ts';

export const serviceNames = ['order', 'inventory', 'payment', 'orchestrator', 'query'] as const;
export type ServiceName = (typeof serviceNames)[number];

export const defaultPorts: Record<ServiceName | 'gateway', number> = {
  gateway: 3000,
  order: 3001,
  inventory: 3002,
  payment: 3003,
  orchestrator: 3004,
  query: 3005,
};

export type Storage =
  { kind: 'pglite'; dataDir?: string } | { kind: 'postgres'; serverUrl: string; databasePrefix: string };

export type BusChoice =
  { kind: 'local'; faults?: BusFaults } | { kind: 'rabbitmq'; url: string; exchange?: string; queuePrefix?: string };

export type SystemOptions = {
  storage: Storage;
  bus: BusChoice;
  log?: Logger;
  /** Services started without their relay (a crash between commit and publish). */
  withoutRelay?: readonly ServiceName[];
  consumer?: ServiceDeps['consumer'];
  /** How long relay and consumer batches may wait to fill (ServiceDeps). */
  linger?: ServiceDeps['linger'];
  allowFaults?: boolean;
  /** Choreography (default) or orchestration of the order saga. */
  sagaMode?: SagaMode;
  /** The orchestrator's deadlines and thresholds (tests shorten them). */
  orchestrator?: Omit<OrchestratorOptions, 'mode'>;
  /** The query service's read cache (Redis); in-process by default. */
  queryCache?: ReadCache;
  /** When the query service reads the feeds for what the broker lost (tests shorten it). */
  queryWatch?: WatchTimings;
  /** Who signs and verifies callers' tokens; a new signing key unless given. */
  identities?: Identities;
};

/** Every service of the system, wired for one saga mode. */
export function serviceDefinitions(
  mode: SagaMode,
  provider: SimulatedProvider,
  options: {
    allowFaults?: boolean;
    orchestrator?: Omit<OrchestratorOptions, 'mode'>;
    appOf?: (name: string) => HttpApp | undefined;
    /** The query service's own token, for reading the other services' feeds. */
    queryToken?: () => Promise<string>;
    queryCache?: ReadCache;
    queryWatch?: WatchTimings;
  } = {},
): Record<ServiceName, ServiceDefinition> {
  return {
    order: orderService(mode),
    inventory: inventoryService(mode),
    payment: paymentService(provider, { mode, allowFaults: options.allowFaults ?? false }),
    orchestrator: orchestratorService({ mode, ...options.orchestrator }),
    // Rebuilds read the other services' feeds through their HTTP apps, in process.
    query: queryService({
      feeds: () =>
        querySources.map((source) => inProcessFeed(source, () => options.appOf?.(source), options.queryToken)),
      ...(options.queryCache === undefined ? {} : { cache: options.queryCache }),
      ...(options.queryWatch === undefined ? {} : { watch: options.queryWatch }),
    }),
  };
}

export type System = {
  services: Record<ServiceName, RunningService>;
  dbs: Record<ServiceName | 'provider', Db>;
  provider: SimulatedProvider;
  bus: Bus;
  /** The system's token issuer and verifier: tests, the demo and the gateway sign callers' tokens with it. */
  identities: Identities;
  options: SystemOptions;
  /** Stops one service and starts it again on the same database (a process restart). */
  restart(name: ServiceName, overrides?: { relay?: boolean }): Promise<RunningService>;
  stop(): Promise<void>;
};

// Its shared buffers are set small by openPglite (their zeroing was most of an open).
const openEmbedded = (name: string, dir: string): Promise<Db> => openPglite(name, dir);

/**
 * A new PGlite directory costs seconds of initdb, so the first start runs it once and
 * copies the result (a cleanly closed cluster) to every other directory still missing.
 * Each is made under a temporary name and renamed into place whole, so a crash leaves
 * no half-made database.
 */
async function createDataDirs(dataDir: string, names: readonly string[]): Promise<void> {
  const isEmpty = (dir: string) => !fs.existsSync(dir) || fs.readdirSync(dir).length === 0;
  const missing = names.filter((name) => isEmpty(path.join(dataDir, name)));
  const [first, ...others] = missing;
  if (first === undefined) return;
  const partial = (name: string) => path.join(dataDir, `.${name}.partial`);
  for (const name of missing) fs.rmSync(partial(name), { recursive: true, force: true });
  await (await openEmbedded(first, partial(first))).close();
  for (const name of others) fs.cpSync(partial(first), partial(name), { recursive: true });
  for (const name of missing) {
    fs.rmSync(path.join(dataDir, name), { recursive: true, force: true });
    fs.renameSync(partial(name), path.join(dataDir, name));
  }
}

export async function openDatabase(storage: Storage, name: string, log: Logger): Promise<Db> {
  if (storage.kind === 'pglite')
    return storage.dataDir === undefined ? openPglite(name) : openEmbedded(name, path.join(storage.dataDir, name));
  const url = await ensureDatabase(storage.serverUrl, `${storage.databasePrefix}${name}`);
  return openPostgres(name, url, { log: (message, fields) => log.warn(message, fields) });
}

export async function openBus(
  choice: BusChoice,
  storage: Storage,
  log: Logger,
): Promise<{ bus: Bus; busDb?: Db; faults?: FaultStats }> {
  if (choice.kind === 'rabbitmq') {
    const bus = await createRabbitBus({
      url: choice.url,
      ...(choice.exchange === undefined ? {} : { exchange: choice.exchange }),
      ...(choice.queuePrefix === undefined ? {} : { queuePrefix: choice.queuePrefix }),
      log: (level, message, fields) => log[level](message, fields),
    });
    return { bus };
  }
  const busDb =
    storage.kind === 'pglite' && storage.dataDir !== undefined
      ? await openEmbedded('bus', path.join(storage.dataDir, 'bus'))
      : await openPglite('bus');
  if (choice.faults === undefined) return { bus: await createLocalBus(busDb), busDb };
  const bus = await createLocalBus(busDb, { faults: choice.faults });
  return { bus, busDb, faults: bus.faultStats };
}

export async function startSystem(options: SystemOptions): Promise<System> {
  const log = options.log ?? silentLogger;
  const { storage } = options;
  if (storage.kind === 'pglite' && storage.dataDir !== undefined)
    await createDataDirs(storage.dataDir, [...serviceNames, 'provider', 'bus']);
  // Opened together: an open waits on files as much as it computes.
  const open = (name: string) => openDatabase(storage, name, log);
  const [order, inventory, payment, orchestrator, query, providerDb, { bus, busDb, faults }] = await Promise.all([
    open('order'),
    open('inventory'),
    open('payment'),
    open('orchestrator'),
    open('query'),
    open('provider'),
    openBus(options.bus, storage, log),
  ]);
  const dbs = { order, inventory, payment, orchestrator, query, provider: providerDb };
  const provider = await openSimulatedProvider(dbs.provider);
  const identities = options.identities ?? (await createIdentities());
  // The services, once started: the query service reads their feeds for rebuilds.
  const started: { services?: Partial<Record<ServiceName, RunningService>> } = {};
  const definitions = serviceDefinitions(options.sagaMode ?? 'choreography', provider, {
    ...(options.allowFaults === undefined ? {} : { allowFaults: options.allowFaults }),
    ...(options.orchestrator === undefined ? {} : { orchestrator: options.orchestrator }),
    appOf: (name) => started.services?.[name as ServiceName]?.app,
    queryToken: () => identities.token(serviceIdentity('query')),
    ...(options.queryCache === undefined ? {} : { queryCache: options.queryCache }),
    ...(options.queryWatch === undefined ? {} : { queryWatch: options.queryWatch }),
  });
  const start = (name: ServiceName, relay?: boolean) =>
    startService(definitions[name], {
      db: dbs[name],
      bus,
      log,
      verify: identities.verify,
      relay: relay ?? !(options.withoutRelay ?? []).includes(name),
      ...(options.consumer === undefined ? {} : { consumer: options.consumer }),
      ...(options.linger === undefined ? {} : { linger: options.linger }),
      ...(faults === undefined ? {} : { faults }),
    });
  // Queues are declared before any relay runs, so no early event is routed nowhere.
  for (const name of serviceNames) await bus.declare(name, boundTypes(name, definitions[name].sources));
  const services = {
    inventory: await start('inventory'),
    payment: await start('payment'),
    orchestrator: await start('orchestrator'),
    query: await start('query'),
    order: await start('order'),
  };
  started.services = services;
  return {
    services,
    dbs,
    provider,
    bus,
    identities,
    options,
    restart: async (name, overrides = {}) => {
      await services[name].stop();
      services[name] = await start(name, overrides.relay);
      return services[name];
    },
    stop: async () => {
      for (const name of serviceNames) await services[name].stop();
      await bus.close();
      for (const db of Object.values(dbs)) await db.close();
      await busDb?.close();
    },
  };
}
