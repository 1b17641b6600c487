// The benchmark's result: its JSON shape, the Markdown summary and the latency plot.
import type { Summary } from './histogram.ts';
import type { LoadReport } from './load.ts';
import type { ReadReport } from './reads.ts';

/** Per read model: events applied during a step and their delay from commit at the source to applied (ms). */
export type ProjectionDelay = Record<string, { events: number; p50: number; p99: number }>;

export type StepResult = Omit<LoadReport, 'acknowledged'> & {
  scenario: string;
  placed: number;
  /** Achieved = offered, every order reached its final state, the backlog did not grow: any latency. */
  keepsUp: boolean;
  /** Keeps up, and placement p99 stayed under the target: the issue's definition. */
  sustainable: boolean;
  backlogMax: number;
  backlogEnd: number;
  /** Unpublished outbox rows plus messages waiting in queues, sampled each second. */
  backlogSeries: number[];
  resources: Record<string, { cpuPercent: number; peakRssMb: number }>;
  /** How busy the machine's cores were, all processes together (absent in older results). */
  machineBusyPercent?: number;
  /** The query service read during the step (absent in results of older versions). */
  reads?: ReadReport;
  projectionDelay?: ProjectionDelay;
};

export type EmbeddedStep = { rate: number; achievedRate: number; placement: Summary; backlogEnd: number; keepsUp: boolean; sustainable: boolean };

export type BenchResult = {
  startedAt: string;
  finishedAt?: string;
  machine: { cpus: string; memoryGb: number; os: string; node: string; postgres: string; rabbitmq: string };
  targets: { sustainedRate: number; placementP99Ms: number; completionP99Ms: number; hotRate: number; readP99Ms: number; projectionP99Ms?: number };
  sweep: StepResult[];
  scenarios: StepResult[];
  reads: ReadReport | undefined;
  embedded: EmbeddedStep[] | undefined;
};

type Judged = { rate?: number; offeredRate?: number; sustainable: boolean; keepsUp: boolean };
export const highest = (steps: Judged[], rule: 'sustainable' | 'keepsUp' = 'sustainable') =>
  Math.max(0, ...steps.filter((s) => s[rule]).map((s) => s.offeredRate ?? s.rate ?? 0));

/** The slowest read model's delay quantile in a step: the read side is as fresh as its slowest model. */
export const slowestProjection = (s: StepResult | undefined, q: 'p50' | 'p99'): number | undefined =>
  s?.projectionDelay === undefined ? undefined : Math.max(0, ...Object.values(s.projectionDelay).map((d) => d[q]));

const errorsOf = (reads: ReadReport | undefined) => Object.values(reads?.errors ?? {}).reduce((a, b) => a + b, 0);

export function renderMarkdown(r: BenchResult, svg: string): string {
  const row = (s: StepResult) =>
    `| ${s.scenario} | ${s.offeredRate} | ${s.achievedRate.toFixed(0)} | ${s.placement.p50} | ${s.placement.p99} | ${s.placement.max} | ${s.completion.p50} | ${s.completion.p99} | ${s.reads?.all.p50 ?? '–'} | ${s.reads?.all.p99 ?? '–'} | ${slowestProjection(s, 'p50') ?? '–'} | ${slowestProjection(s, 'p99') ?? '–'} | ${s.backlogMax} | ${s.keepsUp ? 'yes' : 'no'} | ${s.sustainable ? 'yes' : 'no'} |`;
  const delays = (s: StepResult) => Object.entries(s.projectionDelay ?? {}).map(([model, d]) => `| ${s.scenario} ${s.offeredRate}/s | ${model} | ${d.events} | ${d.p50} | ${d.p99} |`);
  const cpu = (s: StepResult) => Object.entries(s.resources).map(([k, v]) => `${k} ${v.cpuPercent}% / ${v.peakRssMb} MB`).join(', ');
  const spread = r.scenarios.find((s) => s.scenario === 'spread');
  const hot = r.scenarios.find((s) => s.scenario === 'hot');
  const lines = [
    `# Benchmark ${r.startedAt}`,
    '',
    `Machine: ${r.machine.cpus}, ${r.machine.memoryGb} GB, ${r.machine.os}; Node ${r.machine.node}; PostgreSQL ${r.machine.postgres}; RabbitMQ ${r.machine.rabbitmq}. Cluster mode: one process per service, PostgreSQL and RabbitMQ on the same machine.`,
    '',
    '| measure | target | measured |',
    '|---|---|---|',
    `| highest sustainable order rate (cluster; placement p99 < ${r.targets.placementP99Ms} ms) | ≥ ${r.targets.sustainedRate}/s | ${highest(r.sweep)}/s |`,
    `| highest rate the cluster keeps up with (achieved = offered, all final, backlog bounded) | – | ${highest(r.sweep, 'keepsUp')}/s |`,
    `| placement p99, spread scenario at ${spread?.offeredRate ?? '–'}/s | < ${r.targets.placementP99Ms} ms | ${spread?.placement.p99 ?? '–'} ms |`,
    `| completion p99, spread scenario at ${spread?.offeredRate ?? '–'}/s | < ${r.targets.completionP99Ms} ms | ${spread?.completion.p99 ?? '–'} ms |`,
    `| hot-product scenario | ≥ ${r.targets.hotRate}/s | ${hot === undefined ? '–' : `${hot.achievedRate.toFixed(0)}/s offered ${hot.offeredRate}/s, ${hot.sustainable ? 'sustained' : 'not sustained'}`} |`,
    `| query read p99 under load (spread scenario; query service, no gateway) | < ${r.targets.readP99Ms} ms | ${spread?.reads === undefined ? '–' : `${spread.reads.all.p99} ms (p50 ${spread.reads.all.p50} ms) at ${spread.reads.rate} reads/s beside ${spread.offeredRate} orders/s, ${errorsOf(spread.reads)} errors`} |`,
    `| commit-to-read-model delay p99, slowest read model (spread scenario) | < ${r.targets.projectionP99Ms ?? 100} ms | ${slowestProjection(spread, 'p99') ?? '–'} ms (p50 ${slowestProjection(spread, 'p50') ?? '–'} ms) |`,
    `| query read p99, read scenario (nothing else running) | < ${r.targets.readP99Ms} ms | ${r.reads === undefined ? '–' : `${r.reads.all.p99} ms (p50 ${r.reads.all.p50} ms; order summary ${r.reads.orderSummary.p99}, product ${r.reads.product.p99}, user's orders ${r.reads.userOrders.p99}) at ${r.reads.rate}/s, ${errorsOf(r.reads)} errors`} |`,
    `| embedded mode: sustainable / keeps up | – | ${r.embedded === undefined ? 'not run' : `${highest(r.embedded)}/s / ${highest(r.embedded, 'keepsUp')}/s`} |`,
    '',
    'Reads are of the query service during each step; projection delay is from commit at the source to applied in the slowest read model, estimated from the query service\'s histogram (interpolated in its buckets).',
    '',
    '| scenario | offered/s | achieved/s | placement p50 ms | p99 | max | completion p50 ms | p99 | read p50 ms | read p99 ms | projection p50 ms | projection p99 ms | backlog max | keeps up | sustainable |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
    ...r.sweep.map(row),
    ...r.scenarios.map(row),
    '',
    'Commit-to-read-model delay per read model:',
    '',
    '| step | read model | events | p50 ms | p99 ms |',
    '|---|---|---|---|---|',
    ...[...r.sweep, ...r.scenarios].flatMap(delays),
    '',
    `![latency against offered rate](${svg})`,
    '',
    'CPU (share of one core) and peak memory per process (PostgreSQL: all its processes, memory summed, so its shared buffers count once per process), and how busy the whole machine was:',
    '',
    ...[...r.sweep, ...r.scenarios].map((s) => `- ${s.scenario} ${s.offeredRate}/s: machine ${s.machineBusyPercent ?? '–'}% busy; ${cpu(s)}`),
    '',
    ...(r.embedded === undefined ? [] : ['Embedded mode (one process, PGlite, local bus), placement latency:', '', '| offered/s | achieved/s | p50 ms | p99 ms | backlog at end | keeps up | sustainable |', '|---|---|---|---|---|---|---|', ...r.embedded.map((e) => `| ${e.rate} | ${e.achievedRate.toFixed(0)} | ${e.placement.p50} | ${e.placement.p99} | ${e.backlogEnd} | ${e.keepsUp ? 'yes' : 'no'} | ${e.sustainable ? 'yes' : 'no'} |`)]),
    '',
  ];
  return lines.join('\n');
}

/** Placement and completion p99 (log scale) against offered rate, as a plain SVG. */
export function renderSvg(r: BenchResult): string {
  const width = 640;
  const height = 360;
  const pad = 50;
  const points = r.sweep;
  const maxRate = Math.max(100, ...points.map((p) => p.offeredRate));
  const values = points.flatMap((p) => [p.placement.p99, p.completion.p99]).filter((v) => v > 0);
  const lo = Math.max(0.1, Math.min(1, ...values));
  const hi = Math.max(1000, ...values);
  const x = (rate: number) => pad + (rate / maxRate) * (width - 2 * pad);
  const y = (ms: number) => height - pad - ((Math.log10(Math.max(ms, lo)) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * (height - 2 * pad);
  const line = (pick: (p: StepResult) => number, color: string) =>
    `<polyline fill="none" stroke="${color}" stroke-width="2" points="${points.map((p) => `${x(p.offeredRate).toFixed(1)},${y(pick(p)).toFixed(1)}`).join(' ')}"/>` +
    points.map((p) => `<circle cx="${x(p.offeredRate).toFixed(1)}" cy="${y(pick(p)).toFixed(1)}" r="3" fill="${color}"/>`).join('');
  const ticks = [1, 10, 100, 1000, 10000].filter((t) => t >= lo && t <= hi);
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="${width / 2}" y="20" text-anchor="middle" font-size="14">p99 latency against offered order rate (cluster)</text>
<line x1="${pad}" y1="${height - pad}" x2="${width - pad}" y2="${height - pad}" stroke="#999"/>
<line x1="${pad}" y1="${pad}" x2="${pad}" y2="${height - pad}" stroke="#999"/>
${ticks.map((t) => `<text x="${pad - 6}" y="${y(t) + 4}" text-anchor="end">${t} ms</text><line x1="${pad}" y1="${y(t)}" x2="${width - pad}" y2="${y(t)}" stroke="#eee"/>`).join('\n')}
${points.map((p) => `<text x="${x(p.offeredRate)}" y="${height - pad + 16}" text-anchor="middle">${p.offeredRate}</text>`).join('\n')}
<text x="${width / 2}" y="${height - 10}" text-anchor="middle">offered orders/s</text>
${line((p) => p.placement.p99, '#4f46e5')}
${line((p) => p.completion.p99, '#dc2626')}
<text x="${width - pad}" y="${pad - 16}" text-anchor="end" fill="#4f46e5">placement p99</text>
<text x="${width - pad}" y="${pad - 2}" text-anchor="end" fill="#dc2626">completion p99</text>
</svg>
`;
}
