// `npm start`: the whole system in one process, no servers needed. Each service keeps
// its PGlite database under DATA_DIR/<service> and the local bus keeps its queues
// there too, so a process killed mid-flow picks up where it stopped: unpublished
// outbox rows are relayed, unacknowledged messages redelivered, and every order in
// flight reaches its final state. Then the demo catalogue and users are seeded (again
// changes nothing), every service listens on its port and the gateway in front of them.
// Tokens are signed with the key kept in DATA_DIR/auth; the demo identities' API keys
// (`demo-alice`, …, `demo-operator`) work at the gateway, and the dashboard signs in
// with them.
import crypto from 'node:crypto';
import path from 'node:path';
import { ConfigError, createLogger, isProduction, lingerDefaults, loadConfig, setting } from '@converge/platform';
import { startGateway, type RunningGateway } from '../services/gateway/main.ts';
import { waitUntilPriced } from '../services/order/service.ts';
import { demoCatalogue, seedDemo } from './demo.ts';
import { demoApiKey, demoApiKeys, demoIdentities, deploymentIdentities } from '../system/identities.ts';
import { defaultPorts, serviceNames, startSystem, type ServiceName } from '../system/system.ts';

const port = (fallback: number) => setting.int(fallback, 0, 65_535);

function readConfig() {
  try {
    return loadConfig({
      DATA_DIR: setting.string('./data'),
      HOST: setting.string('127.0.0.1'),
      GATEWAY_PORT: port(defaultPorts.gateway),
      ORDER_PORT: port(defaultPorts.order),
      INVENTORY_PORT: port(defaultPorts.inventory),
      PAYMENT_PORT: port(defaultPorts.payment),
      ORCHESTRATOR_PORT: port(defaultPorts.orchestrator),
      QUERY_PORT: port(defaultPorts.query),
      SAGA_MODE: setting.oneOf(['choreography', 'orchestration'], 'choreography'),
      /** How long relay and consumer batches wait to fill (README, "Batches that fill"). */
      RELAY_LINGER_MS: setting.int(lingerDefaults.relayMs, 0, 1_000),
      CONSUMER_LINGER_MS: setting.int(lingerDefaults.consumerMs, 0, 1_000),
      LOG_LEVEL: setting.oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], 'warn'),
    });
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    console.error(error.message);
    process.exit(2);
  }
}

/** Where this process can reach a server bound to `host`: a wildcard address means loopback. */
function baseUrl(host: string, listening: number): string {
  const reachable = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  return `http://${reachable.includes(':') ? `[${reachable}]` : reachable}:${listening}`;
}

const portOf = (url: string) => Number(new URL(url).port);

async function main(): Promise<void> {
  const config = readConfig();
  if (isProduction()) {
    console.error(
      'npm start is the embedded demo (demo data and identities) and is refused when NODE_ENV=production; ' +
        'deploy the services one per process (README: cluster mode)',
    );
    process.exit(2);
  }
  const log = createLogger('converge', config.LOG_LEVEL);
  const dataDir = path.resolve(config.DATA_DIR);
  const ports: Record<ServiceName, number> = {
    order: config.ORDER_PORT,
    inventory: config.INVENTORY_PORT,
    payment: config.PAYMENT_PORT,
    orchestrator: config.ORCHESTRATOR_PORT,
    query: config.QUERY_PORT,
  };

  const identities = await deploymentIdentities(dataDir);
  const system = await startSystem({
    identities,
    storage: { kind: 'pglite', dataDir },
    bus: { kind: 'local' },
    log,
    sagaMode: config.SAGA_MODE,
    linger: { relayMs: config.RELAY_LINGER_MS, consumerMs: config.CONSUMER_LINGER_MS },
  });
  let gateway: RunningGateway | undefined;
  let stopping: Promise<void> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      await gateway?.stop();
      await system.stop();
    })();
    return stopping;
  };
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping !== undefined) {
      console.error(`\n${signal} again: exiting without waiting`);
      process.exit(130);
    }
    console.log(`\n${signal}: stopping…`);
    const force = setTimeout(() => {
      console.error('did not stop within 15 s: exiting');
      process.exit(1);
    }, 15_000);
    force.unref();
    stop().then(
      () => {
        console.log('stopped cleanly; data kept in', dataDir);
        process.exit(0);
      },
      (error: unknown) => {
        console.error('stopping failed:', error);
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  try {
    await seedDemo(system);
    const urls = {} as Record<ServiceName, string>;
    for (const name of serviceNames)
      urls[name] = baseUrl(config.HOST, portOf(await system.services[name].listen(ports[name], config.HOST)));
    gateway = await startGateway({
      log: log.child({ service: 'gateway' }),
      upstreams: urls,
      auth: {
        verify: identities.verify,
        issuer: identities.issuer,
        apiKeys: demoApiKeys(),
        demo: demoIdentities,
      },
      port: config.GATEWAY_PORT,
      host: config.HOST,
    });
    const product = demoCatalogue[0];
    if (product === undefined) throw new Error('the demo catalogue is empty');
    // Products reach the order service through events: wait, so the first curl works.
    if (!(await waitUntilPriced(system.dbs.order, [product.productId], 15_000)).ok) {
      console.warn(`the order service has not received the demo catalogue yet; orders may be refused for a moment`);
    }
    const site = baseUrl(config.HOST, portOf(gateway.url));
    const order = JSON.stringify({ items: [{ productId: product.productId, quantity: 1 }] });
    console.log(
      [
        '',
        `  Converge is running (embedded: PGlite in ${dataDir}, in-process bus)`,
        '',
        `  Dashboard   ${site}/`,
        ...serviceNames.map((name) => `  ${name.padEnd(13)} ${urls[name]}   (OpenAPI: ${urls[name]}/openapi.json)`),
        '',
        `  Demo identities (API key → who): ${(Object.keys(demoIdentities) as (keyof typeof demoIdentities)[])
          .map((name) => demoApiKey(name))
          .join(', ')}; the dashboard signs in with them.`,
        `  Place an order as alice (${product.name}); the same Idempotency-Key again replays the first answer:`,
        `    curl -s -X POST ${site}/api/order/orders -H 'x-api-key: ${demoApiKey('alice')}' ` +
          `-H 'content-type: application/json' -H 'idempotency-key: ${crypto.randomUUID()}' -d '${order}'`,
        "  Look at alice's latest orders (PENDING, then COMPLETED a moment later):",
        `    curl -s -H 'x-api-key: ${demoApiKey('alice')}' '${site}/api/order/orders?limit=3'`,
        '',
        '  Ctrl-C stops everything; the data stays for the next start.',
        '',
      ].join('\n'),
    );
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    console.error(`start-up failed: ${message}`);
    if ((error as { code?: unknown }).code === 'EADDRINUSE')
      console.error(
        'a port is taken: set GATEWAY_PORT, ORDER_PORT, INVENTORY_PORT, PAYMENT_PORT, ORCHESTRATOR_PORT or QUERY_PORT',
      );
    await stop().catch(() => undefined);
    process.exit(1);
  }
}

main().catch((error: unknown) => {
  console.error('start-up failed:', error instanceof Error ? error.message : error);
  process.exit(1);
});
