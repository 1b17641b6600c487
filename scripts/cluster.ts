// `npm run start:cluster`: one OS process per service instance against PostgreSQL and
// RabbitMQ, plus the gateway, supervised: a process that dies is started again (after
// a short backoff), as a process manager would. The demo catalogue and users are
// seeded over HTTP once everything is ready. Configuration is the environment (see
// system/service.ts); ORDER_INSTANCES=2 etc. run more instances of a service, on
// ports base + 100·i. Each process runs its compiled bundle (dist/service.js,
// dist/gateway.js), built first if a source changed; system/launcher.ts starts,
// supervises and stops them. Callers' tokens are signed with the deployment's key,
// kept in DATA_DIR/auth (made on the first start); each process gets the key set, its
// own service token, and the gateway the key itself, to exchange the demo API keys.
import path from 'node:path';
import { ConfigError, isProduction, loadConfig, setting, testOnly } from '@converge/platform';
import { demoCatalogue, demoUsers } from './demo.ts';
import { demoApiKey, demoIdentities, deploymentIdentities, identityEnv } from '../system/identities.ts';
import { defaultPorts, serviceNames, type ServiceName } from '../system/system.ts';
import { launcher, type ProcessSpec } from '../system/launcher.ts';

function readConfig() {
  try {
    return loadConfig({
      HOST: setting.string('127.0.0.1'),
      GATEWAY_PORT: setting.int(defaultPorts.gateway, 0, 65_535),
      ORDER_INSTANCES: setting.int(1, 1, 16),
      INVENTORY_INSTANCES: setting.int(1, 1, 16),
      PAYMENT_INSTANCES: setting.int(1, 1, 16),
      ORCHESTRATOR_INSTANCES: setting.int(1, 1, 16),
      QUERY_INSTANCES: setting.int(1, 1, 16),
      ORDER_PORT: setting.int(defaultPorts.order, 1, 65_535),
      INVENTORY_PORT: setting.int(defaultPorts.inventory, 1, 65_535),
      PAYMENT_PORT: setting.int(defaultPorts.payment, 1, 65_535),
      ORCHESTRATOR_PORT: setting.int(defaultPorts.orchestrator, 1, 65_535),
      QUERY_PORT: setting.int(defaultPorts.query, 1, 65_535),
      // Demo data and demo identities: off in production, and refused there.
      SEED_DEMO: testOnly(setting.bool(!isProduction()), isProduction(), false),
      DATA_DIR: setting.string('./data'),
    });
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(error.message);
      process.exit(2);
    }
    throw error;
  }
}

async function seed(
  inventoryUrl: string,
  paymentUrl: string,
  token: (as: 'merchant' | 'operator') => Promise<string>,
): Promise<void> {
  const merchant = { authorization: `Bearer ${await token('merchant')}` };
  const operator = { authorization: `Bearer ${await token('operator')}` };
  for (const product of demoCatalogue) {
    const response = await fetch(`${inventoryUrl}/products`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...merchant },
      body: JSON.stringify(product),
    });
    if (!response.ok) throw new Error(`seeding ${product.name}: ${response.status} ${await response.text()}`);
  }
  for (const [userId, credit] of Object.entries(demoUsers)) {
    const known = await fetch(`${paymentUrl}/users/${userId}/credit`, { headers: operator });
    if (known.status === 404) {
      await fetch(`${paymentUrl}/users/${userId}/credit`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...operator },
        body: JSON.stringify({ amount: credit }),
      });
    }
  }
}

async function main(): Promise<void> {
  const config = readConfig();
  const instances: Record<ServiceName, number> = {
    order: config.ORDER_INSTANCES,
    inventory: config.INVENTORY_INSTANCES,
    payment: config.PAYMENT_INSTANCES,
    orchestrator: config.ORCHESTRATOR_INSTANCES,
    query: config.QUERY_INSTANCES,
  };
  const basePorts: Record<ServiceName, number> = {
    order: config.ORDER_PORT,
    inventory: config.INVENTORY_PORT,
    payment: config.PAYMENT_PORT,
    orchestrator: config.ORCHESTRATOR_PORT,
    query: config.QUERY_PORT,
  };
  const identities = await deploymentIdentities(path.resolve(config.DATA_DIR));
  const members: ProcessSpec[] = [];
  const urls: Record<ServiceName, string[]> = { order: [], inventory: [], payment: [], orchestrator: [], query: [] };
  for (const service of serviceNames) {
    for (let i = 0; i < instances[service]; i++) {
      const port = basePorts[service] + 100 * i;
      const url = `http://${config.HOST}:${port}`;
      urls[service].push(url);
      // The query service reads the first instance's feeds for rebuilds.
      const feeds = {
        ORDER_URL: `http://${config.HOST}:${basePorts.order}`,
        INVENTORY_URL: `http://${config.HOST}:${basePorts.inventory}`,
        PAYMENT_URL: `http://${config.HOST}:${basePorts.payment}`,
      };
      members.push({
        name: `${service}#${i + 1}`,
        entry: 'service',
        args: [service],
        env: {
          [`${service.toUpperCase()}_PORT`]: String(port),
          ...feeds,
          ...(await identityEnv(identities, service)),
        },
        url,
      });
    }
  }
  const first = (service: ServiceName) => urls[service][0] ?? '';
  const gateway = `http://${config.HOST}:${config.GATEWAY_PORT}`;
  members.push({
    name: 'gateway',
    entry: 'gateway',
    url: gateway,
    env: {
      GATEWAY_PORT: String(config.GATEWAY_PORT),
      // The gateway balances over every instance of each service.
      ORDER_URL: urls.order.join(','),
      INVENTORY_URL: urls.inventory.join(','),
      PAYMENT_URL: urls.payment.join(','),
      ORCHESTRATOR_URL: urls.orchestrator.join(','),
      QUERY_URL: urls.query.join(','),
      GATEWAY_DEMO_IDENTITIES: String(config.SEED_DEMO),
      ...(await identityEnv(identities, 'gateway', { signing: true })),
    },
  });

  const cluster = launcher({
    runner: 'bundle',
    processes: members,
    supervise: true,
    stdout: 'inherit',
    stopGraceMs: 15_000,
    // CPU_PROFILE_DIR=dir: every process writes a V8 CPU profile there when it stops.
    ...(process.env.CPU_PROFILE_DIR === undefined ? {} : { cpuProfileDir: process.env.CPU_PROFILE_DIR }),
  });
  let stopping = false;
  const shutdown = (signal: string) => {
    if (stopping) return;
    stopping = true;
    console.log(`\n[cluster] ${signal}: stopping ${members.length} processes…`);
    void cluster.shutdown().then(
      ({ forced }) => process.exit(forced.length === 0 ? 0 : 1),
      () => process.exit(1),
    );
  };
  process.once('SIGINT', () => shutdown('SIGINT'));
  process.once('SIGTERM', () => shutdown('SIGTERM'));

  await cluster.startAll();
  if (config.SEED_DEMO) await seed(first('inventory'), first('payment'), (as) => identities.token(demoIdentities[as]));
  const product = demoCatalogue[0]?.productId ?? '';
  const curlHeaders =
    `-H 'x-api-key: ${demoApiKey('alice')}' -H 'content-type: application/json' ` +
    `-H "idempotency-key: $(uuidgen || date +%s%N)"`;
  console.log(`
Converge is running in cluster mode (PostgreSQL + RabbitMQ, ${members.length} processes).
  dashboard   ${gateway}/
${serviceNames.map((s) => `  ${s.padEnd(13)} ${urls[s].join(' ')}`).join('\n')}
Place an order as alice (demo API keys: ${Object.keys(demoIdentities)
    .map((name) => demoApiKey(name as keyof typeof demoIdentities))
    .join(', ')}):
  curl -s -X POST ${gateway}/api/order/orders ${curlHeaders} \\
    -d '{"items":[{"productId":"${product}","quantity":1}]}'
Stop with Ctrl-C.`);
}

void main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
