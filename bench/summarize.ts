// `npm run bench:summary -- bench/results/A.json bench/results/B.json …`: the medians of
// several benchmark runs, as the Markdown table the README quotes. One run is an
// anecdote; the median of three or more on a quiet machine is a figure.
import fs from 'node:fs';
import type { ReadReport } from './reads.ts';
import { counterNames, type Counter } from './cost.ts';
import {
  ceil,
  costOf,
  counterLabels,
  floor,
  highest,
  issueTargets,
  slowestProjection,
  type BenchResult,
  type StepResult,
} from './report.ts';

const files = process.argv.slice(2).filter((f) => f.endsWith('.json'));
if (files.length === 0) {
  console.error('usage: npm run bench:summary -- <result.json> [<result.json> …]');
  process.exit(2);
}
const runs = files.map((f) => JSON.parse(fs.readFileSync(f, 'utf8')) as BenchResult);

function median(values: number[]): number {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return Number.NaN;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[mid] ?? Number.NaN) : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}

// Results written before the query service was read have another shape of reads: left out.
const readsOf = (reads: ReadReport | undefined): ReadReport | undefined =>
  reads !== undefined && 'all' in reads ? reads : undefined;
const scenario = (r: BenchResult, name: string): StepResult | undefined => r.scenarios.find((s) => s.scenario === name);
const sweepAt = (r: BenchResult, rate: number) => r.sweep.find((s) => s.offeredRate === rate);
const values = (pick: (r: BenchResult) => number | undefined) =>
  runs.map(pick).filter((v): v is number => v !== undefined && Number.isFinite(v));
/** The median, rounded against itself (lower is better: up; higher is better: down), and each run's value. */
const m = (pick: (r: BenchResult) => number | undefined, better: 'lower' | 'higher' = 'lower', digits = 1) => {
  const vs = values(pick);
  if (vs.length === 0) return '–';
  const show = (v: number) => (better === 'lower' ? ceil(v, digits) : floor(v, digits));
  return `${show(median(vs))} (${vs.map(show).join(', ')})`;
};
/** Pass or fail of the median against a target. */
const judge = (pick: (r: BenchResult) => number | undefined, pass: (median: number) => boolean) => {
  const vs = values(pick);
  return vs.length === 0 ? '–' : pass(median(vs)) ? '**pass**' : '**FAIL**';
};
const t = issueTargets;
const cost = (r: BenchResult) => costOf(scenario(r, 'cost'));
const mixed = (r: BenchResult) => scenario(r, 'mixed');
const kept = (steps: StepResult[] | undefined) =>
  steps === undefined || steps.length === 0 ? undefined : highest(steps, 'keepsUp');
const groups = [...new Set(runs.flatMap((r) => Object.keys(cost(r)?.cpu ?? {})))];

const embeddedKept = (r: BenchResult) => (r.embedded === undefined ? undefined : highest(r.embedded, 'keepsUp'));
/** A row of the targets table: the measure, its target, the median with each run's value, pass or fail. */
const targetRow = (measure: string, target: string, medianOfRuns: string, verdict: string) =>
  `| ${measure} | ${target} | ${medianOfRuns} | ${verdict} |`;

const rates = [...new Set(runs.flatMap((r) => r.sweep.map((s) => s.offeredRate)))].sort((a, b) => a - b);
const machine = runs[0]?.machine;
const lines = [
  `Medians of ${runs.length} runs (each run's value in brackets): ${runs.map((r) => r.startedAt).join(', ')}`,
  `Machine: ${machine?.cpus ?? '?'}, ${machine?.memoryGb ?? '?'} GB; Node ${machine?.node ?? '?'}; ` +
    `PostgreSQL ${machine?.postgres ?? '?'}; RabbitMQ ${machine?.rabbitmq ?? '?'}.`,
  '',
  '| measure | target | median (runs) | median |',
  '|---|---|---|---|',
  targetRow(
    `machine CPU per completed order at ${t.costRate}/s, less the load generator, ms`,
    `≤ ${t.machineCpuMsPerOrder}`,
    m((r) => cost(r)?.machineLessGenerator, 'lower', 2),
    judge(
      (r) => cost(r)?.machineLessGenerator,
      (v) => v <= t.machineCpuMsPerOrder,
    ),
  ),
  targetRow(
    'highest rate kept up with, choreography, orders/s',
    `≥ ${t.choreographyRate}`,
    m((r) => kept(r.sweep), 'higher'),
    judge(
      (r) => kept(r.sweep),
      (v) => v >= t.choreographyRate,
    ),
  ),
  targetRow(
    'highest rate kept up with, orchestration, orders/s',
    `≥ ${t.orchestrationRate}`,
    m((r) => kept(r.orchestrationSweep), 'higher'),
    judge(
      (r) => kept(r.orchestrationSweep),
      (v) => v >= t.orchestrationRate,
    ),
  ),
  targetRow(
    'highest rate kept up with, hot product, orders/s',
    `≥ ${t.hotRate}`,
    m((r) => kept(r.hotSweep), 'higher'),
    judge(
      (r) => kept(r.hotSweep),
      (v) => v >= t.hotRate,
    ),
  ),
  targetRow(
    `mixed (${t.mixedRate} orders/s + ${t.mixedReadRate} reads/s): placement p99, ms`,
    `< ${t.placementP99Ms}`,
    m((r) => mixed(r)?.placement.p99),
    judge(
      (r) => mixed(r)?.placement.p99,
      (v) => v < t.placementP99Ms,
    ),
  ),
  targetRow(
    'mixed: completion p99, ms',
    `< ${t.completionP99Ms}`,
    m((r) => mixed(r)?.completion.p99),
    judge(
      (r) => mixed(r)?.completion.p99,
      (v) => v < t.completionP99Ms,
    ),
  ),
  targetRow(
    'mixed: query read p99, ms',
    `< ${t.readP99Ms}`,
    m((r) => readsOf(mixed(r)?.reads)?.all.p99),
    // A run whose reads saw any error does not meet the target, however fast they were.
    judge(
      (r) => {
        const reads = readsOf(mixed(r)?.reads);
        return reads === undefined || Object.keys(reads.errors).length === 0 ? reads?.all.p99 : Infinity;
      },
      (v) => v < t.readP99Ms,
    ),
  ),
  targetRow(
    'mixed: commit-to-read-model p99, ms (slowest model)',
    `< ${t.projectionP99Ms}`,
    m((r) => slowestProjection(mixed(r), 'p99')),
    judge(
      (r) => slowestProjection(mixed(r), 'p99'),
      (v) => v < t.projectionP99Ms,
    ),
  ),
  targetRow(
    'embedded mode: highest rate kept up with, orders/s',
    `≥ ${t.embeddedRate}`,
    m(embeddedKept, 'higher'),
    judge(embeddedKept, (v) => v >= t.embeddedRate),
  ),
  `| read scenario: query read p99, ms (nothing else running) | – | ${m((r) => readsOf(r.reads)?.all.p99)} | |`,
  '',
  `Cost model at ${t.costRate}/s, per completed order:`,
  '',
  '| per completed order | median (runs) |',
  '|---|---|',
  ...groups.map((g) => `| CPU ms, ${g} | ${m((r) => cost(r)?.cpu[g], 'lower', 2)} |`),
  `| CPU ms, all of the above | ${m((r) => cost(r)?.attributed, 'lower', 2)} |`,
  `| CPU ms, whole machine | ${m((r) => cost(r)?.machine, 'lower', 2)} |`,
  `| CPU ms, load generator (apart) | ${m((r) => cost(r)?.generator, 'lower', 2)} |`,
  `| CPU ms, whole machine less load generator | ${m((r) => cost(r)?.machineLessGenerator, 'lower', 2)} |`,
  `| context switches, whole machine | ${m((r) => cost(r)?.contextSwitches, 'lower', 0)} |`,
  ...(Object.keys(counterNames) as Counter[]).map(
    (k) => `| ${counterLabels[k]} | ${m((r) => cost(r)?.totals[k], 'lower', 2)} |`,
  ),
  '',
  '| offered orders/s | runs | achieved/s | placement p50 ms | placement p99 ms | completion ' +
    'p50 ms | completion p99 ms | CPU ms/order | projection p99 ms | kept up |',
  '|---|---|---|---|---|---|---|---|---|---|',
  ...rates.map((rate) => {
    const steps = runs.map((r) => sweepAt(r, rate)).filter((s): s is StepResult => s !== undefined);
    const med = (pick: (s: StepResult) => number | undefined, better: 'lower' | 'higher' = 'lower') => {
      const value = median(steps.map(pick).filter((v): v is number => v !== undefined));
      return better === 'lower' ? ceil(value, 1) : floor(value, 1);
    };
    return (
      `| ${rate} | ${steps.length} | ${med((s) => s.achievedRate, 'higher')} ` +
      `| ${med((s) => s.placement.p50)} | ${med((s) => s.placement.p99)} ` +
      `| ${med((s) => s.completion.p50)} | ${med((s) => s.completion.p99)} ` +
      `| ${med((s) => costOf(s)?.machineLessGenerator)} | ${med((s) => slowestProjection(s, 'p99'))} ` +
      `| ${steps.filter((s) => s.keepsUp).length} of ${steps.length} |`
    );
  }),
];
console.log(lines.join('\n'));
