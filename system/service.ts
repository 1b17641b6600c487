// One service in its own process (cluster mode): config → its database on the
// PostgreSQL server (created if missing) → migrate → RabbitMQ → HTTP + relay +
// consumer → listen. Run as many instances of a service as wanted: they share its
// database and its queue; relays split the outbox partitions between them.
//   tsx system/service.ts order|inventory|payment|orchestrator|query
import { pathToFileURL } from 'node:url';
import { boundTypes } from '@converge/contracts';
import {
  ConfigError,
  createLogger,
  defaultIssuer,
  ensureDatabase,
  isProduction,
  keySetSetting,
  lingerDefaults,
  loadConfig,
  openPostgres,
  postgresDefaults,
  redisCache,
  setting,
  startService,
  testOnly,
  tokenVerifier,
  type Logger,
  type ServiceDefinition,
  type Spec,
} from '@converge/platform';
import { parseBusFaults, withFaults, type BusFaults } from '@converge/platform/faults';
import { createRabbitBus } from '@converge/platform/rabbitmq';
import { inventoryService } from '../services/inventory/service.ts';
import { orchestratorConfig, orchestratorService } from '../services/orchestrator/service.ts';
import { orderConfig, orderService } from '../services/order/service.ts';
import { httpFeed, queryConfig, queryService } from '../services/query/service.ts';
import { openSimulatedProvider, paymentConfig, paymentService } from '../services/payment/service.ts';
import { defaultPorts, serviceNames, type ServiceName } from './system.ts';

const busFaultsSetting = (testing: boolean): Spec<BusFaults | undefined> => ({
  parse: (raw, key) => {
    if (raw === undefined || raw === '') return undefined;
    if (!testing) throw new Error(`${key} is a test-only fault switch and is refused unless NODE_ENV=test`);
    try {
      return parseBusFaults(raw);
    } catch (error) {
      throw new Error(`${key}: ${(error as Error).message}`, { cause: error });
    }
  },
});

/**
 * The settings every service shares: its database, the broker, where it listens, its
 * relay, the saga mode and logging. A service's own settings are in its config.ts and
 * are read together with these, so a bad deployment hears of every bad key at once.
 */
export const sharedConfig = (service: ServiceName, testing = false, production = false) => ({
  /** The PostgreSQL server; each service's database is created on it if missing. */
  PG_URL: setting.string('postgres://postgres@127.0.0.1:5432/postgres'),
  /** Overrides the database for this service entirely (e.g. ORDER_DATABASE_URL). */
  DATABASE_URL: setting.optional(),
  DATABASE_PREFIX: setting.string('converge_'),
  DB_POOL_SIZE: setting.int(10, 1, 500),
  /** Longest wait for a database connection, new or pooled; then 503 (0: none). */
  DB_CONNECT_TIMEOUT_MS: setting.int(postgresDefaults.connectTimeoutMs, 0, 600_000),
  /** Longest a statement may run; then 503 (0: none). Migrations are exempt. */
  DB_STATEMENT_TIMEOUT_MS: setting.int(postgresDefaults.statementTimeoutMs, 0, 3_600_000),
  /** Longest a transaction may sit idle before the server ends it (0: none). */
  DB_IDLE_IN_TRANSACTION_TIMEOUT_MS: setting.int(postgresDefaults.idleInTransactionTimeoutMs, 0, 3_600_000),
  AMQP_URL: setting.string('amqp://guest:guest@127.0.0.1:5672'),
  AMQP_EXCHANGE: setting.string('converge.events'),
  AMQP_QUEUE_PREFIX: setting.string('converge.'),
  HOST: setting.string('127.0.0.1'),
  PORT: setting.int(defaultPorts[service], 0, 65_535),
  /**
   * How long a relay batch, and a consumer batch, may wait for more messages to join it.
   * A batch costs about the same for one message as for fifty: latency traded for cost
   * per message (README, "Batches that fill").
   */
  RELAY_LINGER_MS: setting.int(lingerDefaults.relayMs, 0, 1_000),
  CONSUMER_LINGER_MS: setting.int(lingerDefaults.consumerMs, 0, 1_000),
  /** `false` runs without publishing (tests of the crash window); refused in production. */
  RELAY: testOnly(setting.bool(true), production, true),
  /** The token issuer's public keys (JWK set JSON, or its URL): every caller's token is verified against them. */
  AUTH_JWKS: keySetSetting,
  AUTH_ISSUER: setting.string(defaultIssuer.issuer),
  AUTH_AUDIENCE: setting.string(defaultIssuer.audience),
  /** This service's own token (role service), for what it reads from other services: the query service's feeds. */
  AUTH_SERVICE_TOKEN: setting.optional(),
  /** How the order saga runs: every service of a deployment must agree. */
  SAGA_MODE: setting.oneOf(['choreography', 'orchestration'], 'choreography'),
  LOG_LEVEL: setting.oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], 'info'),
  /**
   * Test-only fault switch (the chaos suite): `duplicate=0.1,delay=0.1,max-delay-ms=3000`
   * duplicates and delays that fraction of deliveries. Refused at start-up unless
   * NODE_ENV=test, so a production config cannot turn it on, even by mistake.
   */
  BUS_FAULTS: busFaultsSetting(testing),
});

type SharedConfig = ReturnType<typeof loadConfig<ReturnType<typeof sharedConfig>>>;

/** What a service needs beyond the shared shell: its definition, and anything else it opened. */
type Wiring = { definition: ServiceDefinition; close?: () => Promise<void> };
type WiringContext = {
  log: Logger;
  databaseFor: (name: string) => Promise<string>;
  /** The service's own token for calls to other services, when it has one. */
  serviceToken: (() => Promise<string>) | undefined;
};

export async function runService(
  service: ServiceName,
  env: Record<string, string | undefined> = process.env,
): Promise<() => Promise<void>> {
  // ORDER_PORT wins over PORT for the order service, and so on for every key.
  const prefixed = (key: string) => env[`${service.toUpperCase()}_${key}`] ?? env[key];
  const read = new Proxy({}, { get: (_target, key: string) => prefixed(key) });
  const shared = sharedConfig(service, env.NODE_ENV === 'test', isProduction(env));
  switch (service) {
    case 'payment': {
      const config = loadConfig({ ...shared, ...paymentConfig(isProduction(env)) }, read);
      return runWith(service, config, async ({ databaseFor }) => {
        const providerDb = await openPostgres('provider', await databaseFor('provider'), { max: 5 });
        const provider = await openSimulatedProvider(providerDb);
        return {
          definition: paymentService(provider, { mode: config.SAGA_MODE, allowFaults: config.PAYMENT_ALLOW_FAULTS }),
          close: () => providerDb.close(),
        };
      });
    }
    case 'orchestrator': {
      const config = loadConfig({ ...shared, ...orchestratorConfig }, read);
      return runWith(service, config, () =>
        Promise.resolve({
          definition: orchestratorService({
            mode: config.SAGA_MODE,
            stuckAfterMs: config.SAGA_STUCK_AFTER_MS,
            timings: {
              deadlineMs: config.SAGA_STEP_DEADLINE_MS,
              maxDeadlineMs: config.SAGA_STEP_MAX_DEADLINE_MS,
              attempts: config.SAGA_STEP_ATTEMPTS,
              compensationAttempts: config.SAGA_COMPENSATION_ATTEMPTS,
            },
          }),
        }),
      );
    }
    case 'query': {
      const config = loadConfig({ ...shared, ...queryConfig }, read);
      return runWith(service, config, ({ log, serviceToken }) => {
        if (serviceToken === undefined)
          throw new ConfigError(
            'invalid configuration:\n  - AUTH_SERVICE_TOKEN is required: the query service reads feeds',
          );
        const feeds = [
          httpFeed('order', config.ORDER_URL, serviceToken),
          httpFeed('inventory', config.INVENTORY_URL, serviceToken),
          httpFeed('payment', config.PAYMENT_URL, serviceToken),
        ];
        const cache =
          config.REDIS_URL === ''
            ? undefined
            : redisCache({
                url: config.REDIS_URL,
                prefix: `${config.DATABASE_PREFIX}cache:`,
                log: (m, f) => log.warn(m, f),
              });
        const definition = queryService({
          waitMs: config.QUERY_READ_WAIT_MS,
          feeds: () => feeds,
          watch: { sweepEveryMs: config.QUERY_SWEEP_MS },
          ...(cache === undefined ? {} : { cache }),
        });
        return Promise.resolve({ definition, ...(cache === undefined ? {} : { close: () => cache.close() }) });
      });
    }
    case 'order': {
      const config = loadConfig({ ...shared, ...orderConfig }, read);
      const definition = orderService(config.SAGA_MODE, {
        admission: {
          maxBacklog: config.ADMISSION_MAX_BACKLOG,
          maxPoolWaitMs: config.ADMISSION_MAX_POOL_WAIT_MS,
          maxPending: config.ADMISSION_MAX_PENDING,
          maxConcurrent: config.ADMISSION_MAX_CONCURRENT,
        },
        placement: { lingerMs: config.PLACEMENT_LINGER_MS },
      });
      return runWith(service, config, () => Promise.resolve({ definition }));
    }
    case 'inventory': {
      // It has no settings of its own.
      const config = loadConfig(shared, read);
      return runWith(service, config, () => Promise.resolve({ definition: inventoryService(config.SAGA_MODE) }));
    }
  }
}

/** The shell every service runs in: log → database → bus → its wiring → consumers, relay and HTTP. */
async function runWith(
  service: ServiceName,
  config: SharedConfig,
  wire: (context: WiringContext) => Promise<Wiring>,
): Promise<() => Promise<void>> {
  const log = createLogger(service, config.LOG_LEVEL);
  const databaseFor = async (name: string) =>
    config.DATABASE_URL !== undefined && name === service
      ? config.DATABASE_URL
      : ensureDatabase(config.PG_URL, `${config.DATABASE_PREFIX}${name}`);
  const db = await openPostgres(service, await databaseFor(service), {
    max: config.DB_POOL_SIZE,
    log: (m, f) => log.warn(m, f),
    connectTimeoutMs: config.DB_CONNECT_TIMEOUT_MS,
    statementTimeoutMs: config.DB_STATEMENT_TIMEOUT_MS,
    idleInTransactionTimeoutMs: config.DB_IDLE_IN_TRANSACTION_TIMEOUT_MS,
  });
  const rabbit = await createRabbitBus({
    url: config.AMQP_URL,
    exchange: config.AMQP_EXCHANGE,
    queuePrefix: config.AMQP_QUEUE_PREFIX,
    log: (level, message, fields) => log[level](message, fields),
  });
  const faulty = config.BUS_FAULTS === undefined ? undefined : withFaults(rabbit, config.BUS_FAULTS);
  if (faulty !== undefined) log.warn('test-only bus faults are ON', { ...config.BUS_FAULTS });
  const bus = faulty ?? rabbit;
  const token = config.AUTH_SERVICE_TOKEN;
  const { definition, close } = await wire({
    log,
    databaseFor,
    serviceToken: token === undefined ? undefined : () => Promise.resolve(token),
  });
  await bus.declare(service, boundTypes(service, definition.sources));
  const running = await startService(definition, {
    db,
    bus,
    log,
    verify: tokenVerifier({ keys: config.AUTH_JWKS, issuer: config.AUTH_ISSUER, audience: config.AUTH_AUDIENCE }),
    relay: config.RELAY,
    linger: { relayMs: config.RELAY_LINGER_MS, consumerMs: config.CONSUMER_LINGER_MS },
    ...(faulty === undefined ? {} : { faults: faulty.faultStats }),
  });
  const url = await running.listen(config.PORT, config.HOST);
  log.info('service ready', { url, relay: config.RELAY, sagaMode: config.SAGA_MODE });
  return async () => {
    await running.stop();
    await bus.close();
    await db.close();
    await close?.();
  };
}

async function main(): Promise<void> {
  const service = process.argv[2];
  if (!serviceNames.includes(service as ServiceName)) {
    console.error(`usage: tsx system/service.ts ${serviceNames.join('|')}`);
    process.exit(2);
  }
  let stop: () => Promise<void>;
  try {
    stop = await runService(service as ServiceName);
  } catch (error) {
    console.error(error instanceof ConfigError ? error.message : error);
    process.exit(error instanceof ConfigError ? 2 : 1);
  }
  const onSignal = () => {
    stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) void main();
