// `npm run start:cluster`: one OS process per service instance against PostgreSQL and
// RabbitMQ, plus the gateway, supervised: a process that dies is started again (after
// a short backoff), as a process manager would. The demo catalogue and users are
// seeded over HTTP once everything is ready. Configuration is the environment (see
// system/service.ts); ORDER_INSTANCES=2 etc. run more instances of a service, on
// ports base + 100·i. Each process runs its compiled bundle (dist/service.js,
// dist/gateway.js), built first if a source changed.
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError, loadConfig, setting } from '@converge/platform';
import { builtEntry } from './build.ts';
import { demoCatalogue, demoUsers } from './demo.ts';
import { defaultPorts, serviceNames, type ServiceName } from '../system/system.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

type Member = { name: string; entry: 'service' | 'gateway'; args: string[]; env: Record<string, string>; child?: ChildProcess; restarts: number };

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
      SEED_DEMO: setting.bool(true),
    });
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(error.message);
      process.exit(2);
    }
    throw error;
  }
}

async function waitReady(url: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const ok = await fetch(`${url}/readyz`).then((r) => r.ok, () => false);
    if (ok) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`${url} not ready after ${timeoutMs} ms`);
}

async function seed(inventoryUrl: string, paymentUrl: string): Promise<void> {
  for (const product of demoCatalogue) {
    const response = await fetch(`${inventoryUrl}/products`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(product) });
    if (!response.ok) throw new Error(`seeding ${product.name}: ${response.status} ${await response.text()}`);
  }
  for (const [userId, credit] of Object.entries(demoUsers)) {
    const known = await fetch(`${paymentUrl}/users/${userId}/credit`);
    if (known.status === 404) {
      await fetch(`${paymentUrl}/users/${userId}/credit`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ amount: credit }) });
    }
  }
}

async function main(): Promise<void> {
  const config = readConfig();
  const instances: Record<ServiceName, number> = {
    order: config.ORDER_INSTANCES, inventory: config.INVENTORY_INSTANCES, payment: config.PAYMENT_INSTANCES, orchestrator: config.ORCHESTRATOR_INSTANCES,
    query: config.QUERY_INSTANCES,
  };
  const basePorts: Record<ServiceName, number> = {
    order: config.ORDER_PORT, inventory: config.INVENTORY_PORT, payment: config.PAYMENT_PORT, orchestrator: config.ORCHESTRATOR_PORT, query: config.QUERY_PORT,
  };
  const members: Member[] = [];
  const urls: Record<ServiceName, string[]> = { order: [], inventory: [], payment: [], orchestrator: [], query: [] };
  for (const service of serviceNames) {
    for (let i = 0; i < instances[service]; i++) {
      const port = basePorts[service] + 100 * i;
      urls[service].push(`http://${config.HOST}:${port}`);
      // The query service reads the first instance's feeds for rebuilds.
      const feeds = { ORDER_URL: `http://${config.HOST}:${basePorts.order}`, INVENTORY_URL: `http://${config.HOST}:${basePorts.inventory}`, PAYMENT_URL: `http://${config.HOST}:${basePorts.payment}` };
      members.push({ name: `${service}#${i + 1}`, entry: 'service', args: [service], env: { [`${service.toUpperCase()}_PORT`]: String(port), ...feeds }, restarts: 0 });
    }
  }
  const first = (service: ServiceName) => urls[service][0] ?? '';
  members.push({
    name: 'gateway', entry: 'gateway', args: [], restarts: 0,
    env: {
      GATEWAY_PORT: String(config.GATEWAY_PORT), ORDER_URL: first('order'), INVENTORY_URL: first('inventory'),
      PAYMENT_URL: first('payment'), ORCHESTRATOR_URL: first('orchestrator'), QUERY_URL: first('query'),
    },
  });

  const bundles = { service: await builtEntry('service'), gateway: await builtEntry('gateway') };
  let stopping = false;
  const start = (member: Member) => {
    // CPU_PROFILE_DIR=dir: every process writes a V8 CPU profile there when it stops.
    const profile = process.env.CPU_PROFILE_DIR === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${process.env.CPU_PROFILE_DIR}`];
    const child = spawn(process.execPath, ['--enable-source-maps', ...profile, bundles[member.entry], ...member.args], {
      cwd: root, env: { ...process.env, ...member.env }, stdio: ['ignore', 'inherit', 'inherit'],
    });
    member.child = child;
    child.on('exit', (code, signal) => {
      if (stopping) return;
      member.restarts += 1;
      const delay = Math.min(5000, 250 * 2 ** Math.min(member.restarts, 5));
      console.error(`[cluster] ${member.name} (pid ${child.pid ?? '?'}) exited (${signal ?? String(code)}); restarting in ${delay} ms`);
      setTimeout(() => {
        if (!stopping) start(member);
      }, delay);
    });
  };
  for (const member of members) start(member);

  const shutdown = (signal: string) => {
    if (stopping) return;
    stopping = true;
    console.log(`\n[cluster] ${signal}: stopping ${members.length} processes…`);
    for (const member of members) member.child?.kill('SIGTERM');
    const alive = () => members.some((m) => m.child !== undefined && m.child.exitCode === null && m.child.signalCode === null);
    const timer = setInterval(() => {
      if (!alive()) process.exit(0);
    }, 100);
    setTimeout(() => {
      clearInterval(timer);
      for (const member of members) member.child?.kill('SIGKILL');
      process.exit(1);
    }, 15_000).unref();
  };
  process.once('SIGINT', () => shutdown('SIGINT'));
  process.once('SIGTERM', () => shutdown('SIGTERM'));

  for (const service of serviceNames) for (const url of urls[service]) await waitReady(url, 60_000);
  if (config.SEED_DEMO) await seed(first('inventory'), first('payment'));
  const gateway = `http://${config.HOST}:${config.GATEWAY_PORT}`;
  await waitReady(gateway, 30_000);
  const product = demoCatalogue[0]?.productId ?? '';
  console.log(`
Converge is running in cluster mode (PostgreSQL + RabbitMQ, ${members.length} processes).
  dashboard   ${gateway}/
${serviceNames.map((s) => `  ${s.padEnd(13)} ${urls[s].join(' ')}`).join('\n')}
Place an order:
  curl -s -X POST ${gateway}/api/order/orders -H 'content-type: application/json' -H "idempotency-key: $(uuidgen || date +%s%N)" \\
    -d '{"userId":"alice","items":[{"productId":"${product}","quantity":1}]}'
Stop with Ctrl-C.`);
}

void main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
