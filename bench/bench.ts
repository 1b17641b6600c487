// `npm run bench`: starts the cluster (one process per service, PostgreSQL + RabbitMQ +
// Redis), warms up, then measures: a rate sweep for the highest sustainable order rate,
// the spread and hot-product scenarios at that rate, a read scenario on the caught-up
// cluster, and the embedded mode's sustainable rate. In every step the query service's
// commit-to-read-model delay histogram is scraped before and after (projection lag at
// that rate); during the scenarios it is also read at a steady rate (read latency under
// load). CPU and memory of every process and the backlog (outboxes +
// queues) are sampled each second. Writes bench/results/<timestamp>.json and .md with
// an SVG plot of latency against offered rate.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { startCluster, sampleProcess, type Cluster } from './cluster.ts';
import { prepareFixture, pricedIn, runLoad, type Fixture, type LoadReport } from './load.ts';
import { difference, histogramQuantile, parseHistogram, type Bucket } from './prometheus.ts';
import { runReads, type ReadTargets } from './reads.ts';
import { renderMarkdown, renderSvg, type BenchResult, type ProjectionDelay, type StepResult } from './report.ts';

const { values } = parseArgs({
  options: {
    rates: { type: 'string', default: '25,50,75,100,125,150,200,300,500,700,1000' },
    'embedded-rates': { type: 'string', default: '5,10,15,20,25,50,75,100' },
    step: { type: 'string', default: '20' },
    scenario: { type: 'string', default: '30' },
    /** Reads of the query service per second during the spread and hot scenarios. */
    'read-rate': { type: 'string', default: '200' },
    /** Reads per second of the read scenario, on the caught-up cluster. */
    'read-scenario-rate': { type: 'string', default: '500' },
    out: { type: 'string', default: 'bench/results' },
    'skip-embedded': { type: 'boolean', default: false },
  },
});
const rates = values.rates.split(',').map(Number);
const stepSec = Number(values.step);
const scenarioSec = Number(values.scenario);
const readRate = Number(values['read-rate']);
const log = (line: string) => process.stderr.write(`${line}\n`);

async function backlog(cluster: Cluster): Promise<number> {
  let total = 0;
  for (const name of ['order', 'inventory', 'payment'] as const) {
    const [row] = await cluster.dbs[name].query<{ n: number }>('SELECT count(*)::int AS n FROM outbox WHERE published_at IS NULL');
    total += (row?.n ?? 0) + (await cluster.queueDepth(name));
  }
  return total;
}

/** Samples CPU and memory of the service processes and the servers while `work` runs. */
/** Jiffies of the whole machine, busy and in all, from /proc/stat (Linux). */
function machineTicks(): { busy: number; total: number } | undefined {
  try {
    const fields = (fs.readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '').trim().split(/\s+/).slice(1).map(Number);
    const total = fields.reduce((a, b) => a + b, 0);
    return { busy: total - (fields[3] ?? 0) - (fields[4] ?? 0), total };
  } catch {
    return undefined;
  }
}

const pgrep = (...args: string[]): number[] => {
  try {
    return execFileSync('pgrep', args).toString().trim().split('\n').map(Number).filter((n) => n > 0);
  } catch {
    return [];
  }
};

/**
 * Samples CPU and memory of the service processes and the servers while `work` runs
 * (PostgreSQL: every server process of the cluster, its backends included), and how
 * busy the whole machine was: on a machine this size the services, the servers and
 * the load generator share the cores.
 */
async function sampled<T>(cluster: Cluster, work: () => Promise<T>): Promise<{ result: T; resources: StepResult['resources']; machineBusyPercent: number | undefined; backlog: number[] }> {
  const groups: Record<string, number[]> = Object.fromEntries(Object.entries(cluster.pids()).map(([k, pid]) => [k, pid === undefined ? [] : [pid]]));
  groups.postgres = pgrep('-f', '^postgres:|bin/postgres ');
  groups.rabbitmq = pgrep('-o', '-f', 'beam.smp');
  const cpuOf = (pids: number[]) => pids.reduce((sum, pid) => sum + (sampleProcess(pid)?.cpuSeconds ?? 0), 0);
  const first = Object.fromEntries(Object.entries(groups).map(([k, pids]) => [k, cpuOf(pids)]));
  const machineFirst = machineTicks();
  const started = Date.now();
  const backlogs: number[] = [];
  const peakRss: Record<string, number> = {};
  const timer = setInterval(() => {
    void backlog(cluster).then((n) => backlogs.push(n), () => undefined);
    for (const [k, pids] of Object.entries(groups)) {
      const rss = pids.reduce((sum, pid) => sum + (sampleProcess(pid)?.rssMb ?? 0), 0);
      peakRss[k] = Math.max(peakRss[k] ?? 0, rss);
    }
  }, 1000);
  const result = await work();
  clearInterval(timer);
  const seconds = (Date.now() - started) / 1000;
  const machineLast = machineTicks();
  const resources: StepResult['resources'] = {};
  for (const [k, pids] of Object.entries(groups)) {
    if (pids.length > 0) resources[k] = { cpuPercent: Math.round(((cpuOf(pids) - (first[k] ?? 0)) / seconds) * 100), peakRssMb: Math.round(peakRss[k] ?? 0) };
  }
  const machineBusyPercent = machineFirst === undefined || machineLast === undefined || machineLast.total === machineFirst.total
    ? undefined
    : Math.round(((machineLast.busy - machineFirst.busy) / (machineLast.total - machineFirst.total)) * 100);
  return { result, resources, machineBusyPercent, backlog: backlogs };
}

/** Achieved = offered, no errors, every order final, and the backlog not growing at the end. */
function keepsUp(report: LoadReport, backlogs: number[], rate: number): boolean {
  const tail = backlogs.slice(-3);
  const growing = tail.length > 0 && Math.min(...tail) > Math.max(50, rate * 0.5);
  const unfinished = report.finals.PENDING ?? 0;
  return report.achievedRate >= rate * 0.97 && !growing && unfinished === 0 && Object.keys(report.errors).length === 0;
}

const delayHistogram = 'converge_projection_delay_seconds';

async function scrapeDelays(cluster: Cluster): Promise<Map<string, Bucket[]>> {
  const response = await fetch(`${cluster.urls.query}/metrics`);
  if (!response.ok) throw new Error(`query /metrics answered ${response.status}`);
  return parseHistogram(await response.text(), delayHistogram, 'model');
}

/** Per read model: events applied between two scrapes and their commit-to-applied quantiles (ms). */
function projectionDelay(after: Map<string, Bucket[]>, before: Map<string, Bucket[]>): ProjectionDelay {
  const ms = (seconds: number) => Math.round(seconds * 10_000) / 10;
  return Object.fromEntries([...difference(after, before)].map(([model, buckets]) => [model, {
    events: buckets.at(-1)?.count ?? 0, p50: ms(histogramQuantile(0.5, buckets)), p99: ms(histogramQuantile(0.99, buckets)),
  }]));
}

/** What the read scenario and the reads under load ask for: orders the read models hold, the fixture's products and users. */
async function readTargets(cluster: Cluster, fixture: Fixture): Promise<ReadTargets> {
  const db = cluster.dbs.query;
  if (db === undefined) throw new Error('the cluster has no query database');
  const rows = await db.query<{ order_id: string }>('SELECT order_id FROM order_summaries ORDER BY updated_at DESC LIMIT 2000');
  return { orderIds: rows.map((r) => r.order_id), productIds: fixture.products, userIds: fixture.users };
}

/** One step of orders at `rate`; with `reading`, the query service is read at the same time. */
async function step(cluster: Cluster, fixture: Fixture, rate: number, seconds: number, scenario: string, reading = false): Promise<StepResult> {
  log(`\n${scenario}: ${rate} orders/s for ${seconds} s${reading ? `, reading the query service at ${readRate}/s` : ''}`);
  const targets = reading ? await readTargets(cluster, fixture) : undefined;
  const before = await scrapeDelays(cluster);
  const { result: [result, reads], resources, machineBusyPercent, backlog: backlogs } = await sampled(cluster, () => Promise.all([
    runLoad({ orderUrl: cluster.urls.order, fixture, rate, durationSec: seconds, orderDb: cluster.dbs.order, settleTimeoutMs: 30_000, progress: (l) => process.stderr.write(`\r  ${l}   `) }),
    targets === undefined ? undefined : runReads({ queryUrl: cluster.urls.query, targets, rate: readRate, durationSec: seconds }),
  ]));
  // Every order of the step is final (or the settle timed out): the events it caused have
  // been applied or are still waiting, and those still waiting are not in this figure.
  const delays = projectionDelay(await scrapeDelays(cluster), before);
  process.stderr.write('\n');
  const { acknowledged, ...rest } = result;
  const up = keepsUp(result, backlogs, rate);
  const ok = up && result.placement.p99 < 50;
  const worst = Math.max(0, ...Object.values(delays).map((d) => d.p99));
  log(`  achieved ${result.achievedRate.toFixed(0)}/s placement p99 ${result.placement.p99} ms completion p99 ${result.completion.p99} ms backlog max ${Math.max(0, ...backlogs)} → ${ok ? 'sustainable' : up ? 'keeps up' : 'falls behind'}`);
  log(`  ${reads === undefined ? '' : `reads p50 ${reads.all.p50} ms p99 ${reads.all.p99} ms; `}projection delay p99 ${worst} ms (slowest read model)`);
  return {
    scenario, ...rest, placed: acknowledged.length, keepsUp: up, sustainable: ok, backlogMax: Math.max(0, ...backlogs), backlogEnd: backlogs.at(-1) ?? 0,
    backlogSeries: backlogs, resources, ...(machineBusyPercent === undefined ? {} : { machineBusyPercent }), ...(reads === undefined ? {} : { reads }), projectionDelay: delays,
  };
}

function versions(): BenchResult['machine'] {
  const run = (cmd: string, args: string[]) => {
    try {
      return execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim().split('\n')[0] ?? '';
    } catch {
      return 'unknown';
    }
  };
  return {
    cpus: `${os.cpus().length} × ${os.cpus()[0]?.model ?? 'unknown'}`,
    memoryGb: Math.round(os.totalmem() / 1024 ** 3),
    os: `${os.type()} ${os.release()}`,
    node: process.version,
    postgres: run('psql', ['-h', '127.0.0.1', '-U', 'postgres', '-Atc', 'SHOW server_version']),
    rabbitmq: run('rabbitmqctl', ['version']),
  };
}

async function main(): Promise<void> {
  const startedAt = new Date();
  const result: BenchResult = { startedAt: startedAt.toISOString(), machine: versions(), sweep: [], scenarios: [], reads: undefined, embedded: undefined, targets: { sustainedRate: 1000, placementP99Ms: 50, completionP99Ms: 500, hotRate: 500, readP99Ms: 5, projectionP99Ms: 100 } };
  const cluster = await startCluster({ log: (l) => log(l) });
  try {
    const spread = await prepareFixture({ inventoryUrl: cluster.urls.inventory, paymentUrl: cluster.urls.payment, catalogue: 'spread', waitUntilPriced: pricedIn(cluster.dbs.order) });
    const hot = await prepareFixture({ inventoryUrl: cluster.urls.inventory, paymentUrl: cluster.urls.payment, catalogue: 'hot', waitUntilPriced: pricedIn(cluster.dbs.order) });
    log('warm-up: 50 orders/s for 10 s');
    await runLoad({ orderUrl: cluster.urls.order, fixture: spread, rate: 50, durationSec: 10, orderDb: cluster.dbs.order });
    // The sweep goes on while the cluster keeps up; the scenarios run at the highest
    // such rate, so their latencies are those of a loaded but not overrun system.
    let best = 0;
    for (const rate of rates) {
      const r = await step(cluster, spread, rate, stepSec, 'sweep');
      result.sweep.push(r);
      if (!r.keepsUp) break;
      best = rate;
    }
    const rate = Math.max(best, rates[0] ?? 50);
    // The sweep offers orders alone (its figures compare with earlier runs); the
    // scenarios read the query service besides: read latency under load.
    result.scenarios.push(await step(cluster, spread, rate, scenarioSec, 'spread', true));
    result.scenarios.push(await step(cluster, hot, rate, scenarioSec, 'hot', true));
    // Reads are measured on a cluster that has caught up, not one draining a backlog.
    const drainBy = Date.now() + 120_000;
    while ((await backlog(cluster)) > 0 && Date.now() < drainBy) await new Promise((r) => setTimeout(r, 500));
    const readScenarioRate = Number(values['read-scenario-rate']);
    log(`\nreads: ${readScenarioRate} requests/s for 20 s of the query service, nothing else running`);
    result.reads = await runReads({ queryUrl: cluster.urls.query, targets: await readTargets(cluster, spread), rate: readScenarioRate, durationSec: 20 });
    log(`  p50 ${result.reads.all.p50} ms p99 ${result.reads.all.p99} ms`);
  } finally {
    await cluster.stop();
  }
  // The cluster's figures are written whatever becomes of the embedded sweep.
  if (!values['skip-embedded']) {
    result.embedded = await embeddedRate().catch((error: unknown) => {
      log(`embedded sweep failed: ${(error as Error).message}`);
      return undefined;
    });
  }
  result.finishedAt = new Date().toISOString();
  const stamp = startedAt.toISOString().replace(/[:.]/g, '-');
  fs.mkdirSync(values.out, { recursive: true });
  const base = path.join(values.out, stamp);
  fs.writeFileSync(`${base}.json`, JSON.stringify(result, null, 2));
  fs.writeFileSync(`${base}.svg`, renderSvg(result));
  fs.writeFileSync(`${base}.md`, renderMarkdown(result, `${stamp}.svg`));
  log(`\nwrote ${base}.json, .md and .svg`);
  console.log(fs.readFileSync(`${base}.md`, 'utf8'));
}

/** The embedded mode (one process, PGlite, local bus) under the same sweep, placement only. */
async function embeddedRate(): Promise<BenchResult['embedded']> {
  const { embeddedSweep } = await import('./embedded.ts');
  return embeddedSweep(values['embedded-rates'].split(',').map(Number), stepSec, log);
}

await main();
