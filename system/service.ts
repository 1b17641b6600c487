// One service in its own process (cluster mode): config → its database on the
// PostgreSQL server (created if missing) → migrate → RabbitMQ → HTTP + relay +
// consumer → listen. Run as many instances of a service as wanted: they share its
// database and its queue; relays split the outbox partitions between them.
//   tsx system/service.ts order|inventory|payment|orchestrator|query
import { pathToFileURL } from 'node:url';
import { boundTypes } from '@converge/contracts';
import { ConfigError, createLogger, ensureDatabase, loadConfig, openPostgres, redisCache, setting, startService, type ServiceDefinition, type Spec } from '@converge/platform';
import { parseBusFaults, withFaults, type BusFaults } from '@converge/platform/faults';
import { createRabbitBus } from '@converge/platform/rabbitmq';
import { inventoryService } from '../services/inventory/service.ts';
import { defaultTimings, orchestratorService } from '../services/orchestrator/service.ts';
import { orderService } from '../services/order/service.ts';
import { httpFeed, queryService } from '../services/query/service.ts';
import { openSimulatedProvider, paymentService } from '../services/payment/service.ts';
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

export const clusterConfig = (service: ServiceName, testing = false) => ({
  /** The PostgreSQL server; each service's database is created on it if missing. */
  PG_URL: setting.string('postgres://postgres@127.0.0.1:5432/postgres'),
  /** Overrides the database for this service entirely (e.g. ORDER_DATABASE_URL). */
  DATABASE_URL: setting.optional(),
  DATABASE_PREFIX: setting.string('converge_'),
  DB_POOL_SIZE: setting.int(10, 1, 500),
  AMQP_URL: setting.string('amqp://guest:guest@127.0.0.1:5672'),
  AMQP_EXCHANGE: setting.string('converge.events'),
  AMQP_QUEUE_PREFIX: setting.string('converge.'),
  HOST: setting.string('127.0.0.1'),
  PORT: setting.int(defaultPorts[service], 0, 65_535),
  RELAY: setting.bool(true),
  PAYMENT_ALLOW_FAULTS: setting.bool(false),
  /** How the order saga runs: every service of a deployment must agree. */
  SAGA_MODE: setting.oneOf(['choreography', 'orchestration'], 'choreography'),
  /** Orchestrator: a step's first wait for its reply (later attempts wait twice as long, up to the max). */
  SAGA_STEP_DEADLINE_MS: setting.int(defaultTimings.deadlineMs, 10, 3_600_000),
  SAGA_STEP_MAX_DEADLINE_MS: setting.int(defaultTimings.maxDeadlineMs, 10, 86_400_000),
  /** Orchestrator: sends of a step's command before it counts as failed (and is compensated). */
  SAGA_STEP_ATTEMPTS: setting.int(defaultTimings.attempts, 1, 100),
  /** Orchestrator: sends of a compensation before the saga is parked as NEEDS_ATTENTION. */
  SAGA_COMPENSATION_ATTEMPTS: setting.int(defaultTimings.compensationAttempts, 1, 100),
  /** Orchestrator: a saga not final and unchanged this long counts as stuck (converge_sagas_stuck). */
  SAGA_STUCK_AFTER_MS: setting.int(60_000, 1_000, 86_400_000),
  /** Query: how long a read carrying a consistency token waits for its write before answering 503. */
  QUERY_READ_WAIT_MS: setting.int(2_000, 0, 30_000),
  /** Query: how often the sources' feeds are swept for events the broker lost (0: only on a gap, at start-up, on demand). */
  QUERY_SWEEP_MS: setting.int(15_000, 0, 86_400_000),
  /** Query: the Redis of the read cache; empty for an in-process cache per instance. */
  REDIS_URL: setting.string('redis://127.0.0.1:6379'),
  /** Query: where the sources' feeds are, for rebuilds. */
  ORDER_URL: setting.string(`http://127.0.0.1:${defaultPorts.order}`),
  INVENTORY_URL: setting.string(`http://127.0.0.1:${defaultPorts.inventory}`),
  PAYMENT_URL: setting.string(`http://127.0.0.1:${defaultPorts.payment}`),
  LOG_LEVEL: setting.oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], 'info'),
  /**
   * Test-only fault switch (the chaos suite): `duplicate=0.1,delay=0.1,max-delay-ms=3000`
   * duplicates and delays that fraction of deliveries. Refused at start-up unless
   * NODE_ENV=test, so a production config cannot turn it on, even by mistake.
   */
  BUS_FAULTS: busFaultsSetting(testing),
});

export async function runService(service: ServiceName, env: Record<string, string | undefined> = process.env): Promise<() => Promise<void>> {
  const prefixed = (key: string) => env[`${service.toUpperCase()}_${key}`] ?? env[key];
  const config = loadConfig(clusterConfig(service, env.NODE_ENV === 'test'), new Proxy({}, { get: (_target, key: string) => prefixed(key) }));
  const log = createLogger(service, config.LOG_LEVEL);
  const databaseFor = async (name: string) => config.DATABASE_URL !== undefined && name === service
    ? config.DATABASE_URL
    : ensureDatabase(config.PG_URL, `${config.DATABASE_PREFIX}${name}`);
  const db = await openPostgres(service, await databaseFor(service), { max: config.DB_POOL_SIZE, log: (m, f) => log.warn(m, f) });
  const rabbit = await createRabbitBus({
    url: config.AMQP_URL, exchange: config.AMQP_EXCHANGE, queuePrefix: config.AMQP_QUEUE_PREFIX,
    log: (level, message, fields) => log[level](message, fields),
  });
  const faulty = config.BUS_FAULTS === undefined ? undefined : withFaults(rabbit, config.BUS_FAULTS);
  if (faulty !== undefined) log.warn('test-only bus faults are ON', { ...config.BUS_FAULTS });
  const bus = faulty ?? rabbit;
  let definition: ServiceDefinition;
  const closeLater: (() => Promise<void>)[] = [];
  const mode = config.SAGA_MODE;
  if (service === 'payment') {
    const providerDb = await openPostgres('provider', await databaseFor('provider'), { max: 5 });
    closeLater.push(() => providerDb.close());
    definition = paymentService(await openSimulatedProvider(providerDb), { mode, allowFaults: config.PAYMENT_ALLOW_FAULTS });
  } else if (service === 'orchestrator') {
    definition = orchestratorService({
      mode,
      stuckAfterMs: config.SAGA_STUCK_AFTER_MS,
      timings: {
        deadlineMs: config.SAGA_STEP_DEADLINE_MS, maxDeadlineMs: config.SAGA_STEP_MAX_DEADLINE_MS,
        attempts: config.SAGA_STEP_ATTEMPTS, compensationAttempts: config.SAGA_COMPENSATION_ATTEMPTS,
      },
    });
  } else if (service === 'query') {
    const feeds = [httpFeed('order', config.ORDER_URL), httpFeed('inventory', config.INVENTORY_URL), httpFeed('payment', config.PAYMENT_URL)];
    const cache = config.REDIS_URL === '' ? undefined : redisCache({ url: config.REDIS_URL, prefix: `${config.DATABASE_PREFIX}cache:`, log: (m, f) => log.warn(m, f) });
    if (cache !== undefined) closeLater.push(() => cache.close());
    definition = queryService({ waitMs: config.QUERY_READ_WAIT_MS, feeds: () => feeds, watch: { sweepEveryMs: config.QUERY_SWEEP_MS }, ...(cache === undefined ? {} : { cache }) });
  } else {
    definition = service === 'order' ? orderService(mode) : inventoryService(mode);
  }
  await bus.declare(service, boundTypes(service, definition.sources));
  const running = await startService(definition, { db, bus, log, relay: config.RELAY, ...(faulty === undefined ? {} : { faults: faulty.faultStats }) });
  const url = await running.listen(config.PORT, config.HOST);
  log.info('service ready', { url, relay: config.RELAY, sagaMode: mode });
  return async () => {
    await running.stop();
    await bus.close();
    await db.close();
    for (const close of closeLater) await close();
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
    stop().then(() => process.exit(0), () => process.exit(1));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) void main();
