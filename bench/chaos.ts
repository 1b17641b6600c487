// The chaos suite. Each scenario starts a cluster of real service processes on
// PostgreSQL and RabbitMQ, puts it under steady open-loop load, injects its fault while
// the load runs (bench/chaos-scenarios.ts), stops the load, waits (bounded) for the
// system to go quiet, and then checks the invariants over every database and the API's
// own record of acknowledged orders, plus what the scenario promises in particular. A
// run that did too little work to mean anything fails. Results are printed as PASS/FAIL
// with their evidence and written to bench/results/chaos-<time>.json; the exit code
// says whether all passed.
//
//   npm run chaos -- kill-services|broker-outage|db-restart|duplicates-reorder|poison|hot-contention|all|smoke
//     [--rate 50] [--duration <s>] [--quiet-timeout 120] [--keep]   (--keep: a failed scenario's data stays)
//   npm run chaos -- ci-smoke     the smoke under CI=true, a visible notice otherwise (npm test)
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { servers } from '@converge/platform/testing';
import { checkInvariants, formatReport, waitForQuiet, type Report } from '../system/invariants.ts';
import {
  brokerDepth,
  check,
  restoreServers,
  round,
  scenarioNames,
  scenarios,
  type Check,
  type Run,
  type Scenario,
  type ScenarioName,
} from './chaos-scenarios.ts';
import { startCluster, type Cluster } from './cluster.ts';
import { prepareFixture, pricedIn, runLoad, type LoadReport } from './load.ts';

const exec = promisify(execFile);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const minimumOrders = 500;
/** The cluster of the scenario running now, for a clean-up on Ctrl-C. */
let current: Cluster | undefined;

export type Result = {
  scenario: string;
  pass: boolean;
  /** Orders the API acknowledged (the steady load and any burst). */
  orders: number;
  checks: Check[];
  evidence: Record<string, unknown>;
  invariants?: Pick<Report, 'ok' | 'summary'> & { violations: Report['violations'] };
  load?: Omit<LoadReport, 'acknowledged'> & { acknowledged: number };
  durations: Record<string, number>;
};

type Options = {
  rate: number;
  seconds?: number;
  quietTimeoutMs: number;
  short: boolean;
  keep: boolean;
  log: (line: string) => void;
};

async function runScenario(name: ScenarioName, options: Options): Promise<Result> {
  const scenario: Scenario = scenarios[name];
  const began = Date.now();
  const durations: Record<string, number> = {};
  const lap = (key: string, from: number) => (durations[key] = round((Date.now() - from) / 1000));
  const checks: Check[] = [];
  const result: Result = { scenario: name, pass: false, orders: 0, checks, evidence: {}, durations };
  let cluster: Cluster | undefined;
  console.log(`\n=== ${name}: starting the cluster`);
  try {
    const live = await startCluster({
      ...(scenario.env === undefined ? {} : { env: scenario.env }),
      log: (line) => options.log(`${name} ${line}`),
    });
    cluster = live;
    current = live;
    const { dbs } = live;
    const fixture = await prepareFixture({
      inventoryUrl: live.urls.inventory,
      sign: live.identities.token,
      paymentUrl: live.urls.payment,
      catalogue: 'spread',
      waitUntilPriced: pricedIn(dbs.order),
    });
    lap('setupSec', began);
    const seconds = Math.max(
      options.seconds ?? (options.short ? scenario.shortSeconds : scenario.seconds),
      scenario.minSeconds?.(live.services.length) ?? 0,
    );
    const loadStart = Date.now();
    const elapsed = () => (Date.now() - loadStart) / 1000;
    const run: Run = {
      cluster: live,
      fixture,
      seconds,
      short: options.short,
      elapsed,
      note: (line) => console.log(`  [${name} t=${elapsed().toFixed(0)}s] ${line}`),
    };
    run.note(`load: ${options.rate}/s for ${seconds} s`);
    let ticks = 0;
    const loading = runLoad({
      orderUrl: live.urls.order,
      sign: live.identities.token,
      fixture,
      rate: options.rate,
      durationSec: seconds,
      orderDb: dbs.order,
      settleTimeoutMs: options.quietTimeoutMs,
      progress: (line) => ++ticks % 10 === 0 && console.log(`  [${name}] ${line}`),
    });
    const injected = await scenario.inject(run).catch(async (error: unknown) => {
      await loading.catch(() => undefined);
      throw error;
    });
    checks.push(servicesAlive(live));
    const load = await loading;
    lap('loadAndSettleSec', loadStart);
    result.evidence = injected.evidence;
    const acknowledged = [...load.acknowledged, ...(injected.acknowledged ?? [])];
    result.orders = acknowledged.length;
    const { acknowledged: _, ...summary } = load;
    result.load = { ...summary, acknowledged: load.acknowledged.length };

    const quietStart = Date.now();
    const queueDepth = brokerDepth(live);
    const quiet = await waitForQuiet({ dbs, queueDepth }, options.quietTimeoutMs).then(
      () => undefined,
      (error: unknown) => (error as Error).message,
    );
    lap('quietSec', quietStart);
    const report = await checkInvariants({
      dbs,
      acknowledged,
      queueDepth,
      expectedDeadLetters: injected.expectedDeadLetters ?? 0,
      sagaMode: live.sagaMode,
    });
    result.invariants = { ok: report.ok, summary: report.summary, violations: report.violations.slice(0, 50) };
    checks.push(
      check(
        'enough work',
        acknowledged.length >= minimumOrders,
        `${acknowledged.length} acknowledged orders (at least ${minimumOrders} needed; "too little work" otherwise), ` +
          `achieved ${load.achievedRate.toFixed(0)}/s of ${options.rate}/s`,
      ),
      check('went quiet', quiet === undefined, quiet ?? `quiet after ${durations.quietSec ?? 0} s`),
      check('invariants', report.ok, formatReport(report)),
      ...((await injected.verify?.(load)) ?? []),
      { ...servicesAlive(live), name: 'every service still up at the end' },
    );
  } catch (error) {
    checks.push(check('ran to the end', false, (error as Error).stack ?? String(error)));
  } finally {
    await restoreServers();
    const keepData = options.keep && !checks.every((c) => c.pass);
    if (keepData && cluster !== undefined)
      console.log(`  keeping the databases ${cluster.name}_* and queues ${cluster.name}.* for inspection`);
    await cluster?.stop({ keepData }).catch((error: unknown) => checks.push(check('cleaned up', false, String(error))));
    current = undefined;
    lap('totalSec', began);
  }
  result.pass = checks.length > 0 && checks.every((c) => c.pass);
  printResult(result);
  return result;
}

/** A service process that died by itself (not killed by the suite) is a failure: it did not survive the fault. */
function servicesAlive(cluster: Cluster): Check {
  const dead = Object.entries(cluster.pids())
    .filter(([, pid]) => {
      try {
        return pid === undefined || !process.kill(pid, 0);
      } catch {
        return true;
      }
    })
    .map(([service]) => service);
  return check(
    'every service survived the fault',
    dead.length === 0,
    dead.length === 0 ? 'all processes alive' : `exited by themselves: ${dead.join(', ')}`,
  );
}

function printResult(result: Result): void {
  const load = result.load;
  const lines = [
    `--- ${result.scenario}: ${result.pass ? 'PASS' : 'FAIL'} (${result.durations.totalSec ?? '?'} s)`,
    ...(load === undefined
      ? []
      : [
          `  load: ${load.acknowledged} acknowledged of ${load.scheduled} scheduled at ${load.offeredRate}/s ` +
            `(achieved ${load.achievedRate.toFixed(0)}/s), ` +
            `errors ${JSON.stringify(load.errors)}, finals ${JSON.stringify(load.finals)}`,
          `  placement p50/p99 ${load.placement.p50}/${load.placement.p99} ms, ` +
            `completion p50/p99 ${load.completion.p50}/${load.completion.p99} ms`,
        ]),
    `  evidence: ${JSON.stringify(result.evidence, (key, value: unknown) => (key === 'schedule' ? undefined : value))}`,
    ...result.checks.map((c) => `  ${c.pass ? 'ok  ' : 'FAIL'} ${c.name}: ${c.detail.split('\n').join('\n       ')}`),
  ];
  console.log(lines.join('\n'));
}

async function versions(): Promise<Record<string, string>> {
  const run = (file: string, args: string[]) =>
    exec(file, args, { timeout: 30_000 }).then(
      (r) => r.stdout.trim(),
      () => 'unknown',
    );
  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string };
  return {
    converge: pkg.version,
    commit: await run('git', ['-C', root, 'rev-parse', '--short', 'HEAD']),
    node: process.version,
    postgres: await run('psql', [servers.postgres, '-Atc', 'SHOW server_version']),
    rabbitmq: await run('rabbitmqctl', ['version']),
    platform: `${os.platform()} ${os.release()}, ${os.cpus().length} cores`,
  };
}

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      rate: { type: 'string', default: '50' },
      duration: { type: 'string' },
      'quiet-timeout': { type: 'string', default: '120' },
      keep: { type: 'boolean', default: false },
    },
  });
  const target = positionals[0] ?? '';
  if (target === 'ci-smoke' && process.env.CI !== 'true') {
    console.warn(
      '\n*** NOTICE: the chaos smoke is SKIPPED (it runs under CI=true; here: npm run chaos -- smoke) ***\n',
    );
    return 0;
  }
  const smoke = target === 'smoke' || target === 'ci-smoke';
  const chosen: ScenarioName[] = smoke
    ? ['kill-services', 'broker-outage']
    : target === 'all'
      ? scenarioNames
      : scenarioNames.filter((n) => n === target);
  const rate = Number(values.rate);
  const seconds = values.duration === undefined ? undefined : Number(values.duration);
  const quietTimeoutMs = Number(values['quiet-timeout']) * 1000;
  if (chosen.length === 0 || !(rate > 0) || (seconds !== undefined && !(seconds > 0)) || !(quietTimeoutMs > 0)) {
    console.error(
      `usage: npm run chaos -- ${scenarioNames.join('|')}|all|smoke|ci-smoke ` +
        '[--rate 50] [--duration <s>] [--quiet-timeout 120] [--keep]',
    );
    return 2;
  }
  const started = new Date();
  const stamp = started.toISOString().replace(/[:.]/g, '-');
  const logFile = path.join(os.tmpdir(), `converge-chaos-${stamp}.log`);
  const logStream = fs.createWriteStream(logFile);
  console.log(`chaos: ${chosen.join(', ')} at ${rate}/s; the services' stderr goes to ${logFile}`);
  const onSignal = () => {
    console.error(
      '\ninterrupted: starting RabbitMQ and PostgreSQL again if this run stopped them, and removing the cluster',
    );
    const timeout = new Promise((resolve) => setTimeout(resolve, 30_000));
    void restoreServers()
      .then(() => Promise.race([current?.stop().catch(() => undefined), timeout]))
      .finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  // Written after every scenario, so an interrupted run keeps what it found.
  const file = path.join(root, 'bench', 'results', `chaos-${stamp}.json`);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const about = { startedAt: started.toISOString(), target, rate, versions: await versions() };
  const results: Result[] = [];
  for (const name of chosen) {
    results.push(
      await runScenario(name, {
        rate,
        ...(seconds === undefined ? {} : { seconds }),
        quietTimeoutMs,
        short: smoke,
        keep: values.keep,
        log: (line) => logStream.write(`${line}\n`),
      }),
    );
    fs.writeFileSync(file, `${JSON.stringify({ ...about, results }, null, 2)}\n`);
  }
  logStream.end();
  console.log(
    '\n' +
      results
        .map((r) => `${r.pass ? 'PASS' : 'FAIL'} ${r.scenario} (${r.orders} orders, ${r.durations.totalSec ?? '?'} s)`)
        .join('\n'),
  );
  console.log(`results: ${path.relative(root, file)}`);
  return results.every((r) => r.pass) ? 0 : 1;
}

process.exitCode = await main();
// The cluster's connections and timers are closed; anything a failed scenario left open must not keep us here.
setTimeout(() => process.exit(process.exitCode), 2_000).unref();
