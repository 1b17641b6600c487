// `npm run bench`: starts the cluster (one process per service, PostgreSQL + RabbitMQ +
// Redis), warms up, then measures: a steady cost step (the cost model per completed
// order, the headline), a choreography rate sweep, a hot-product sweep (5 products),
// orders and query reads together at a fixed rate, a read scenario on the caught-up
// cluster; then an orchestration sweep on a cluster of its own, and the embedded mode's
// sweep. Every step carries its cost model (bench/cost.ts): CPU per process and for the
// whole machine, the load generator apart, and the services' database and broker
// counters, per completed order. The query service's commit-to-read-model histogram is
// scraped before and after each step. Writes bench/results/<timestamp>.json and .md
// with an SVG plot of latency against offered rate.
//   npm run bench -- --only cost --scenario 30      one cost step of 30 s
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { startCluster, type Cluster } from './cluster.ts';
import { perOrder, startCostMeter, type CostModel } from './cost.ts';
import { prepareFixture, pricedIn, runLoad, type Fixture, type LoadReport } from './load.ts';
import { difference, histogramQuantile, parseHistogram, type Bucket } from './prometheus.ts';
import { overloadStep } from './overload.ts';
import { runReads, type ReadTargets } from './reads.ts';
import {
  issueTargets,
  renderMarkdown,
  renderSvg,
  type BenchResult,
  type ProjectionDelay,
  type StepResult,
} from './report.ts';

const parts = ['cost', 'sweep', 'hot', 'mixed', 'reads', 'overload', 'orchestration', 'embedded'] as const;
const { values } = parseArgs({
  options: {
    rates: { type: 'string', default: '50,100,200,300,400,500,600,700,800,1000' },
    'hot-rates': { type: 'string', default: '100,200,300,400,500' },
    'orchestration-rates': { type: 'string', default: '100,200,300,400,500' },
    'embedded-rates': { type: 'string', default: '10,25,50,75,100,150' },
    /** The steady rate of the cost step. */
    'cost-rate': { type: 'string', default: '100' },
    /** Orders per second of the mixed scenario (orders and query reads together). */
    'mixed-rate': { type: 'string', default: '200' },
    step: { type: 'string', default: '20' },
    scenario: { type: 'string', default: '30' },
    /** Reads of the query service per second during the mixed scenario. */
    'read-rate': { type: 'string', default: '200' },
    /** The rate the cluster sustains: the overload step offers three times it. */
    'sustainable-rate': { type: 'string', default: '100' },
    /** Reads per second of the read scenario, on the caught-up cluster. */
    'read-scenario-rate': { type: 'string', default: '500' },
    /**
     * Which parts to run, comma-separated: cost, sweep, hot, mixed, reads, orchestration, embedded (all by
     * default).
     */
    only: { type: 'string', default: parts.join(',') },
    out: { type: 'string', default: 'bench/results' },
    'skip-embedded': { type: 'boolean', default: false },
  },
});
const numbers = (list: string) => list.split(',').map(Number);
const only = new Set(values.only.split(','));
for (const part of only)
  if (!(parts as readonly string[]).includes(part))
    throw new Error(`--only: unknown part ${part} (${parts.join(', ')})`);
if (values['skip-embedded']) only.delete('embedded');
const stepSec = Number(values.step);
const scenarioSec = Number(values.scenario);
const readRate = Number(values['read-rate']);
const log = (line: string) => process.stderr.write(`${line}\n`);

/** Unpublished outbox rows and messages waiting in the queues of every service of the run. */
async function backlog(cluster: Cluster): Promise<number> {
  let total = 0;
  for (const name of cluster.services) {
    const db = cluster.dbs[name];
    if (db !== undefined && name !== 'query') {
      const [row] = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM outbox WHERE published_at IS NULL');
      total += row?.n ?? 0;
    }
    total += await cluster.queueDepth(name);
  }
  return total;
}

async function drain(cluster: Cluster, timeoutMs: number): Promise<void> {
  const by = Date.now() + timeoutMs;
  while ((await backlog(cluster)) > 0 && Date.now() < by) await new Promise((r) => setTimeout(r, 250));
}

/**
 * Runs `work` between two readings of the cost meter, sampling it and the backlog each
 * second. The window closes once the step's orders are final and the backlog they left
 * has drained (10 s at most), so their trailing events (stock sold, read models) count.
 */
async function measured<T>(
  cluster: Cluster,
  work: () => Promise<T>,
  completed: (result: T) => number,
): Promise<{ result: T; backlog: number[]; cost: CostModel; resources: StepResult['resources'] }> {
  const meter = await startCostMeter(cluster);
  const backlogs: number[] = [];
  const timer = setInterval(() => {
    void backlog(cluster).then(
      (n) => backlogs.push(n),
      () => undefined,
    );
    void meter.sample().catch(() => undefined);
  }, 1000);
  const result = await work();
  clearInterval(timer);
  await drain(cluster, 10_000);
  const cost = await meter.finish(completed(result));
  const peak = meter.peakRssMb();
  const resources = Object.fromEntries(
    Object.entries(cost.cpuMs).map(([group, ms]) => [
      group,
      { cpuPercent: Math.round(ms / 10 / cost.windowSec), peakRssMb: peak[group] ?? 0 },
    ]),
  );
  return { result, backlog: backlogs, cost, resources };
}

/**
 * Every scheduled order acknowledged at the offered rate, no errors, every order final, the backlog not growing at
 * the end.
 */
function keepsUp(report: LoadReport, backlogs: number[], rate: number): boolean {
  const tail = backlogs.slice(-3);
  const growing = tail.length > 0 && Math.min(...tail) > Math.max(50, rate * 0.5);
  const unfinished = report.finals.PENDING ?? 0;
  return (
    report.acknowledged.length === report.scheduled &&
    report.achievedRate >= rate * 0.97 &&
    !growing &&
    unfinished === 0 &&
    Object.keys(report.errors).length === 0
  );
}

const delayHistogram = 'converge_projection_delay_seconds';

async function scrapeDelays(cluster: Cluster): Promise<Map<string, Bucket[]>> {
  const response = await fetch(`${cluster.urls.query}/metrics`, { headers: await cluster.auth() });
  if (!response.ok) throw new Error(`query /metrics answered ${response.status}`);
  return parseHistogram(await response.text(), delayHistogram, 'model');
}

/** Per read model: events applied between two scrapes and their commit-to-applied quantiles (ms). */
function projectionDelay(after: Map<string, Bucket[]>, before: Map<string, Bucket[]>): ProjectionDelay {
  const ms = (seconds: number) => Math.round(seconds * 10_000) / 10;
  return Object.fromEntries(
    [...difference(after, before)].map(([model, buckets]) => [
      model,
      {
        events: buckets.at(-1)?.count ?? 0,
        p50: ms(histogramQuantile(0.5, buckets)),
        p99: ms(histogramQuantile(0.99, buckets)),
      },
    ]),
  );
}

/**
 * What the read scenario and the reads under load ask for: orders the read models hold, the fixture's products and
 * users.
 */
async function readTargets(cluster: Cluster, fixture: Fixture): Promise<ReadTargets> {
  const db = cluster.dbs.query;
  if (db === undefined) throw new Error('the cluster has no query database');
  const rows = await db.query<{ order_id: string }>(
    'SELECT order_id FROM order_summaries ORDER BY updated_at DESC LIMIT 2000',
  );
  return { orderIds: rows.map((r) => r.order_id), productIds: fixture.products, userIds: fixture.users };
}

/** One step of orders at `rate`; with `reading`, the query service is read at the same time. */
async function step(
  cluster: Cluster,
  fixture: Fixture,
  rate: number,
  seconds: number,
  scenario: string,
  reading = false,
): Promise<StepResult> {
  log(
    `\n${scenario} (${cluster.sagaMode}): ${rate} orders/s for ${seconds} s` +
      (reading ? `, reading the query service at ${readRate}/s` : ''),
  );
  const targets = reading ? await readTargets(cluster, fixture) : undefined;
  const reader = await cluster.auth();
  const before = await scrapeDelays(cluster);
  const {
    result: [result, reads],
    resources,
    backlog: backlogs,
    cost,
  } = await measured(
    cluster,
    () =>
      Promise.all([
        runLoad({
          orderUrl: cluster.urls.order,
          sign: cluster.identities.token,
          fixture,
          rate,
          durationSec: seconds,
          orderDb: cluster.dbs.order,
          settleTimeoutMs: 30_000,
          progress: (l) => process.stderr.write(`\r  ${l}   `),
        }),
        targets === undefined
          ? undefined
          : runReads({
              queryUrl: cluster.urls.query,
              targets,
              rate: readRate,
              durationSec: seconds,
              headers: reader,
            }),
      ]),
    ([load]) => load.finals.COMPLETED ?? 0,
  );
  // Every order of the step is final (or the settle timed out): the events it caused have
  // been applied or are still waiting, and those still waiting are not in this figure.
  const delays = projectionDelay(await scrapeDelays(cluster), before);
  process.stderr.write('\n');
  const { acknowledged, ...rest } = result;
  const up = keepsUp(result, backlogs, rate);
  const ok = up && result.placement.p99 < issueTargets.placementP99Ms;
  const worst = Math.max(0, ...Object.values(delays).map((d) => d.p99));
  const per = perOrder(cost);
  log(
    `  achieved ${result.achievedRate.toFixed(0)}/s placement p99 ${result.placement.p99} ms ` +
      `completion p99 ${result.completion.p99} ms backlog max ${Math.max(0, ...backlogs)} ` +
      `→ ${ok ? 'sustainable' : up ? 'keeps up' : 'falls behind'}`,
  );
  log(
    `  ${reads === undefined ? '' : `reads p50 ${reads.all.p50} ms p99 ${reads.all.p99} ms; `}` +
      `projection delay p99 ${worst} ms (slowest read model)`,
  );
  if (per !== undefined)
    log(
      `  per completed order: machine less generator ${per.machineLessGenerator?.toFixed(2) ?? '–'} ms CPU, ` +
        `${per.totals.statements?.toFixed(1) ?? '–'} statements, ` +
        `${per.totals.transactions?.toFixed(2) ?? '–'} transactions, ` +
        `${per.totals.deliveries?.toFixed(2) ?? '–'} deliveries`,
    );
  return {
    scenario,
    sagaMode: cluster.sagaMode,
    ...rest,
    placed: acknowledged.length,
    keepsUp: up,
    sustainable: ok,
    backlogMax: Math.max(0, ...backlogs),
    backlogEnd: backlogs.at(-1) ?? 0,
    backlogSeries: backlogs,
    resources,
    cost,
    ...(reads === undefined ? {} : { reads }),
    projectionDelay: delays,
  };
}

/** Steps at rising rates until one does not keep up. */
async function sweep(cluster: Cluster, fixture: Fixture, rates: number[], scenario: string): Promise<StepResult[]> {
  const steps: StepResult[] = [];
  for (const rate of rates) {
    const r = await step(cluster, fixture, rate, stepSec, scenario);
    steps.push(r);
    if (!r.keepsUp) break;
    await drain(cluster, 30_000);
  }
  return steps;
}

function versions(): BenchResult['machine'] {
  const run = (cmd: string, args: string[]) => {
    try {
      return (
        execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'ignore'] })
          .toString()
          .trim()
          .split('\n')[0] ?? ''
      );
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

/** A cluster in `mode`, its fixtures created and a warm-up run. */
async function warmCluster(
  mode: 'choreography' | 'orchestration',
  catalogues: ('spread' | 'hot')[],
): Promise<{ cluster: Cluster; fixtures: Partial<Record<'spread' | 'hot', Fixture>> }> {
  const cluster = await startCluster({ env: { SAGA_MODE: mode }, log: (l) => log(l) });
  const fixtures: Partial<Record<'spread' | 'hot', Fixture>> = {};
  try {
    for (const catalogue of catalogues) {
      fixtures[catalogue] = await prepareFixture({
        inventoryUrl: cluster.urls.inventory,
        sign: cluster.identities.token,
        paymentUrl: cluster.urls.payment,
        catalogue,
        waitUntilPriced: pricedIn(cluster.dbs.order),
      });
    }
    log(`warm-up (${mode}): 50 orders/s for 10 s`);
    const spread = fixtures.spread ?? fixtures.hot;
    if (spread !== undefined)
      await runLoad({
        orderUrl: cluster.urls.order,
        sign: cluster.identities.token,
        fixture: spread,
        rate: 50,
        durationSec: 10,
        orderDb: cluster.dbs.order,
      });
    await drain(cluster, 30_000);
    // A running system's tables are analysed by autovacuum within a minute of growing;
    // these were created seconds ago, and a plan made while a table held a handful of
    // rows (a connection keeps its generic plan until the statistics change) scans it
    // whole. Analysing once after the warm-up measures the steady state, not the first minute.
    for (const db of Object.values(cluster.dbs)) await db.exec('ANALYZE');
  } catch (error) {
    await cluster.stop();
    throw error;
  }
  return { cluster, fixtures };
}

async function main(): Promise<void> {
  const startedAt = new Date();
  const result: BenchResult = {
    startedAt: startedAt.toISOString(),
    machine: versions(),
    parts: [...only],
    settings: Object.fromEntries(
      Object.entries(process.env).filter(
        (entry): entry is [string, string] =>
          /^(?:[A-Z]+_)?(?:RELAY_LINGER_MS|CONSUMER_LINGER_MS|PLACEMENT_LINGER_MS|ADMISSION_[A-Z_]+)$/.test(entry[0]) &&
          entry[1] !== undefined,
      ),
    ),
    sweep: [],
    hotSweep: [],
    orchestrationSweep: [],
    scenarios: [],
    reads: undefined,
    embedded: undefined,
    targets: issueTargets,
  };
  if (['cost', 'sweep', 'hot', 'mixed', 'reads', 'overload'].some((p) => only.has(p))) {
    const { cluster, fixtures } = await warmCluster('choreography', only.has('hot') ? ['spread', 'hot'] : ['spread']);
    const spread = fixtures.spread as Fixture;
    try {
      // The headline: a steady rate well inside what the cluster keeps up with, on a
      // quiet cluster, so the figure is the cost of an order and not of a backlog.
      if (only.has('cost'))
        result.scenarios.push(await step(cluster, spread, Number(values['cost-rate']), scenarioSec, 'cost'));
      if (only.has('sweep')) result.sweep = await sweep(cluster, spread, numbers(values.rates), 'sweep');
      if (only.has('hot') && fixtures.hot !== undefined)
        result.hotSweep = await sweep(cluster, fixtures.hot, numbers(values['hot-rates']), 'hot');
      if (only.has('mixed')) {
        await drain(cluster, 60_000);
        result.scenarios.push(await step(cluster, spread, Number(values['mixed-rate']), scenarioSec, 'mixed', true));
      }
      if (only.has('reads')) {
        // Reads are measured on a cluster that has caught up, not one draining a backlog.
        await drain(cluster, 120_000);
        const readScenarioRate = Number(values['read-scenario-rate']);
        log(`\nreads: ${readScenarioRate} requests/s for 20 s of the query service, nothing else running`);
        result.reads = await runReads({
          queryUrl: cluster.urls.query,
          targets: await readTargets(cluster, spread),
          rate: readScenarioRate,
          durationSec: 20,
          headers: await cluster.auth(),
        });
        log(`  p50 ${result.reads.all.p50} ms p99 ${result.reads.all.p99} ms`);
      }
      if (only.has('overload')) {
        await drain(cluster, 120_000);
        result.overload = await overloadStep(cluster, spread, Number(values['sustainable-rate']), scenarioSec, log);
      }
    } finally {
      await cluster.stop();
    }
  }
  if (only.has('orchestration')) {
    const { cluster, fixtures } = await warmCluster('orchestration', ['spread']);
    try {
      result.orchestrationSweep = await sweep(
        cluster,
        fixtures.spread as Fixture,
        numbers(values['orchestration-rates']),
        'orchestration',
      );
    } finally {
      await cluster.stop();
    }
  }
  // The cluster's figures are written whatever becomes of the embedded sweep.
  if (only.has('embedded')) {
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
