// `npm run bench:summary -- bench/results/A.json bench/results/B.json …`: the medians of
// several benchmark runs, as the Markdown table the README quotes. One run is an
// anecdote; the median of three or more on a quiet machine is a figure.
import fs from 'node:fs';
import type { ReadReport } from './reads.ts';
import { highest, slowestProjection, type BenchResult, type StepResult } from './report.ts';

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
const readsOf = (reads: ReadReport | undefined): ReadReport | undefined => (reads !== undefined && 'all' in reads ? reads : undefined);
const scenario = (r: BenchResult, name: string): StepResult | undefined => r.scenarios.find((s) => s.scenario === name);
const sweepAt = (r: BenchResult, rate: number) => r.sweep.find((s) => s.offeredRate === rate);
const m = (pick: (r: BenchResult) => number | undefined) => {
  const values = runs.map(pick).filter((v): v is number => v !== undefined);
  return `${Number(median(values).toFixed(1))} (${values.map((v) => Number(v.toFixed(1))).join(', ')})`;
};

const rates = [...new Set(runs.flatMap((r) => r.sweep.map((s) => s.offeredRate)))].sort((a, b) => a - b);
const lines = [
  `Medians of ${runs.length} runs (each run's value in brackets): ${runs.map((r) => r.startedAt).join(', ')}`,
  `Machine: ${runs[0]?.machine.cpus ?? '?'}, ${runs[0]?.machine.memoryGb ?? '?'} GB; Node ${runs[0]?.machine.node ?? '?'}; PostgreSQL ${runs[0]?.machine.postgres ?? '?'}; RabbitMQ ${runs[0]?.machine.rabbitmq ?? '?'}.`,
  '',
  '| measure | median (runs) |',
  '|---|---|',
  `| highest sustainable rate (placement p99 < 50 ms), orders/s | ${m((r) => highest(r.sweep, 'sustainable'))} |`,
  `| highest rate kept up with, orders/s | ${m((r) => highest(r.sweep, 'keepsUp'))} |`,
  `| spread scenario: placement p99, ms | ${m((r) => scenario(r, 'spread')?.placement.p99)} |`,
  `| spread scenario: completion p99, ms | ${m((r) => scenario(r, 'spread')?.completion.p99)} |`,
  `| hot scenario: achieved orders/s | ${m((r) => scenario(r, 'hot')?.achievedRate)} |`,
  `| hot scenario: completion p99, ms | ${m((r) => scenario(r, 'hot')?.completion.p99)} |`,
  `| spread scenario: query read p50, ms (under load) | ${m((r) => readsOf(scenario(r, 'spread')?.reads)?.all.p50)} |`,
  `| spread scenario: query read p99, ms (under load) | ${m((r) => readsOf(scenario(r, 'spread')?.reads)?.all.p99)} |`,
  `| spread scenario: commit-to-read-model p50, ms (slowest model) | ${m((r) => slowestProjection(scenario(r, 'spread'), 'p50'))} |`,
  `| spread scenario: commit-to-read-model p99, ms (slowest model) | ${m((r) => slowestProjection(scenario(r, 'spread'), 'p99'))} |`,
  `| read scenario: query read p50, ms (nothing else running) | ${m((r) => readsOf(r.reads)?.all.p50)} |`,
  `| read scenario: query read p99, ms (nothing else running) | ${m((r) => readsOf(r.reads)?.all.p99)} |`,
  `| spread scenario: machine CPU busy, % | ${m((r) => scenario(r, 'spread')?.machineBusyPercent)} |`,
  `| embedded mode: highest rate kept up with, orders/s | ${m((r) => (r.embedded === undefined ? undefined : highest(r.embedded, 'keepsUp')))} |`,
  '',
  '| offered orders/s | runs | achieved/s | placement p50 ms | placement p99 ms | completion p50 ms | completion p99 ms | read p99 ms | projection p99 ms | kept up |',
  '|---|---|---|---|---|---|---|---|---|---|',
  ...rates.map((rate) => {
    const steps = runs.map((r) => sweepAt(r, rate)).filter((s): s is StepResult => s !== undefined);
    const med = (pick: (s: StepResult) => number) => Number(median(steps.map(pick)).toFixed(1));
    const optional = (pick: (s: StepResult) => number | undefined) => {
      const value = median(steps.map(pick).filter((v): v is number => v !== undefined));
      return Number.isNaN(value) ? '–' : Number(value.toFixed(1));
    };
    return `| ${rate} | ${steps.length} | ${med((s) => s.achievedRate)} | ${med((s) => s.placement.p50)} | ${med((s) => s.placement.p99)} | ${med((s) => s.completion.p50)} | ${med((s) => s.completion.p99)} | ${optional((s) => readsOf(s.reads)?.all.p99)} | ${optional((s) => slowestProjection(s, 'p99'))} | ${steps.filter((s) => s.keepsUp).length} of ${steps.length} |`;
  }),
];
console.log(lines.join('\n'));
