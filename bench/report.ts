// The benchmark's result: its JSON shape, the Markdown summary and the latency plot.
// Every target of issue 11 stands next to its measured figure with pass or fail, judged
// on the unrounded value; a figure shown rounded is rounded against itself (latency and
// cost up, rates down), so a pass is never a rounding.
import { counterNames, perOrder, type CostModel, type CostPerOrder, type Counter } from './cost.ts';
import type { Summary } from './histogram.ts';
import type { LoadReport } from './load.ts';
import type { OverloadResult } from './overload.ts';
import type { ReadReport } from './reads.ts';

/** Per read model: events applied during a step and their delay from commit at the source to applied (ms). */
export type ProjectionDelay = Record<string, { events: number; p50: number; p99: number }>;

export type StepResult = Omit<LoadReport, 'acknowledged'> & {
  scenario: string;
  sagaMode?: 'choreography' | 'orchestration';
  placed: number;
  /**
   * Every scheduled order acknowledged at the offered rate, every order final, the backlog did not grow: any
   * latency.
   */
  keepsUp: boolean;
  /** Keeps up, and placement p99 stayed under the target. */
  sustainable: boolean;
  backlogMax: number;
  backlogEnd: number;
  /** Unpublished outbox rows plus messages waiting in queues, sampled each second. */
  backlogSeries: number[];
  resources: Record<string, { cpuPercent: number; peakRssMb: number }>;
  /** How busy the machine's cores were (results before the cost model). */
  machineBusyPercent?: number;
  /** What the step cost: CPU by process and machine, database and broker counters (absent in older results). */
  cost?: CostModel;
  /** The query service read during the step (absent in results of older versions). */
  reads?: ReadReport;
  projectionDelay?: ProjectionDelay;
};

export type EmbeddedStep = {
  rate: number;
  achievedRate: number;
  placement: Summary;
  backlogEnd: number;
  keepsUp: boolean;
  sustainable: boolean;
};

/** Issue 11's targets. */
export const issueTargets = {
  costRate: 100,
  machineCpuMsPerOrder: 4,
  choreographyRate: 500,
  orchestrationRate: 300,
  hotRate: 300,
  mixedRate: 200,
  mixedReadRate: 200,
  placementP99Ms: 50,
  completionP99Ms: 500,
  readP99Ms: 20,
  projectionP99Ms: 200,
  embeddedRate: 100,
};

export type BenchResult = {
  startedAt: string;
  finishedAt?: string;
  machine: { cpus: string; memoryGb: number; os: string; node: string; postgres: string; rabbitmq: string };
  /** Targets of the version that wrote the result (older results hold older targets). */
  targets: Partial<typeof issueTargets> & Record<string, number | undefined>;
  /** Which parts ran (absent: all of an older version's). */
  parts?: string[];
  /** The services' settings this run gave them through the environment (batching and admission), as set. */
  settings?: Record<string, string>;
  /** Choreography, spread catalogue. */
  sweep: StepResult[];
  hotSweep?: StepResult[];
  orchestrationSweep?: StepResult[];
  /** The cost step and the mixed scenario (older results: spread and hot at the best rate). */
  scenarios: StepResult[];
  reads: ReadReport | undefined;
  embedded: EmbeddedStep[] | undefined;
  /** Three times the sustainable rate: what is accepted, what is shed, what is lost, how soon it recovers. */
  overload?: OverloadResult;
};

type Judged = { rate?: number; offeredRate?: number; sustainable: boolean; keepsUp: boolean };
export const highest = (steps: Judged[], rule: 'sustainable' | 'keepsUp' = 'sustainable') =>
  Math.max(0, ...steps.filter((s) => s[rule]).map((s) => s.offeredRate ?? s.rate ?? 0));

/** The slowest read model's delay quantile in a step: the read side is as fresh as its slowest model. */
export const slowestProjection = (s: StepResult | undefined, q: 'p50' | 'p99'): number | undefined =>
  s?.projectionDelay === undefined ? undefined : Math.max(0, ...Object.values(s.projectionDelay).map((d) => d[q]));

export const costOf = (s: StepResult | undefined): CostPerOrder | undefined =>
  s?.cost === undefined ? undefined : perOrder(s.cost);

/** Rounded against the figure: a cost or latency up, a rate down. */
export const ceil = (value: number | undefined, digits = 2) =>
  value === undefined || !Number.isFinite(value)
    ? '–'
    : (Math.ceil(value * 10 ** digits) / 10 ** digits).toFixed(digits);
export const floor = (value: number | undefined, digits = 0) =>
  value === undefined || !Number.isFinite(value)
    ? '–'
    : (Math.floor(value * 10 ** digits) / 10 ** digits).toFixed(digits);
const verdict = (ok: boolean | undefined) => (ok === undefined ? '–' : ok ? '**pass**' : '**FAIL**');

const errorsOf = (reads: ReadReport | undefined) => Object.values(reads?.errors ?? {}).reduce((a, b) => a + b, 0);

export const counterLabels: Record<Counter, string> = {
  transactions: 'PostgreSQL transactions',
  statements: 'PostgreSQL statements',
  publishes: 'broker publishes',
  publishedEvents: 'published events',
  publishedBytes: 'published bytes',
  deliveries: 'broker deliveries',
  deliveredEvents: 'delivered events',
  deliveredBytes: 'delivered bytes',
};

/** The cost model of one step as Markdown: CPU per completed order by process, then the counters by service. */
export function renderCost(s: StepResult): string[] {
  const c = costOf(s);
  if (s.cost === undefined || c === undefined)
    return [`No cost model for ${s.scenario} ${s.offeredRate}/s (no order completed, or an older result).`];
  const services = Object.keys(c.counters);
  const groups = Object.keys(c.cpu);
  const others =
    Object.entries(s.finals)
      .filter(([k]) => k !== 'COMPLETED')
      .map(([k, n]) => `${n} ${k}`)
      .join(', ') || 'no other';
  const behind = s.keepsUp ? '' : '; **the step did not keep up**, so the figures are those of a backlog';
  return [
    `${s.scenario} (${s.sagaMode ?? 'choreography'}) at ${s.offeredRate}/s: ` +
      `${c.completed} orders completed of ${s.placed} placed (${others}), ` +
      `window ${s.cost.windowSec.toFixed(1)} s${behind}.`,
    '',
    '| CPU per completed order | ms |',
    '|---|---|',
    ...groups.map((g) => `| ${g} | ${ceil(c.cpu[g])} |`),
    `| all of the above | ${ceil(c.attributed)} |`,
    `| whole machine (/proc/stat, non-idle) | ${ceil(c.machine)} |`,
    `| load generator (this process; reported apart) | ${ceil(c.generator)} |`,
    `| **whole machine less load generator** | **${ceil(c.machineLessGenerator)}** |`,
    `| of which none of the processes above | ${ceil(c.other)} |`,
    `| of the machine, steal (hypervisor) | ${ceil(c.steal)} |`,
    '',
    `Context switches of the whole machine per completed order: ${ceil(c.contextSwitches)} ` +
      '(each message from one process to another wakes its reader).',
    '',
    `| per completed order | ${services.join(' | ')} | total |`,
    `|---|${services.map(() => '---|').join('')}---|`,
    ...(Object.keys(counterNames) as Counter[]).map((k) => {
      const perService = services.map((sv) => ceil(c.counters[sv]?.[k])).join(' | ');
      return `| ${counterLabels[k]} | ${perService} | ${ceil(c.totals[k])} |`;
    }),
  ];
}

/** The overload step: accepted placements fast, the excess refused with Retry-After, nothing lost, recovery. */
function renderOverload(o: OverloadResult | undefined): string[] {
  if (o === undefined) return [];
  const refused = o.shed.unavailable + o.shed.limited;
  return [
    '## Overload',
    '',
    `${o.offeredRate} orders/s (3 × ${o.sustainableRate}) for ${o.durationSec} s at the order service, refusals ` +
      'not retried; then the sustainable rate for 10 s.',
    '',
    '| | required | measured | met |',
    '|---|---|---|---|',
    `| accepted placements p99 | < ${overloadTargets.acceptedP99Ms} ms | ${o.acceptedP99Ms} ms ` +
      `(${o.accepted} of ${o.scheduled} accepted) | ${verdict(o.acceptedP99Ms < overloadTargets.acceptedP99Ms)} |`,
    `| the excess refused with 503/429 and Retry-After | every refusal | ${refused} refused ` +
      `(${o.shed.unavailable} × 503, ${o.shed.limited} × 429), ${o.shed.withRetryAfter} with Retry-After; ` +
      `other errors ${JSON.stringify(o.otherErrors)} | ` +
      `${verdict(refused > 0 && o.shed.withRetryAfter === refused && Object.keys(o.otherErrors).length === 0)} |`,
    `| acknowledged orders lost | 0 | ${o.lost} (invariant violations: ${o.invariantViolations.length}) | ` +
      `${verdict(o.lost === 0 && o.invariantViolations.length === 0)} |`,
    `| normal service after | within ${overloadTargets.recoverMs / 1000} s | ` +
      `${o.recoveredAfterMs === undefined ? 'still refusing after 10 s' : `${o.recoveredAfterMs} ms`}; ` +
      `${o.after.accepted} of ${o.after.scheduled} accepted, p99 ${o.after.placementP99Ms} ms | ` +
      `${verdict(o.recoveredAfterMs !== undefined && o.recoveredAfterMs <= overloadTargets.recoverMs)} |`,
    ...(o.invariantViolations.length === 0 ? [] : ['', ...o.invariantViolations.map((v) => `- ${v}`)]),
    '',
  ];
}

export const overloadTargets = { acceptedP99Ms: 200, recoverMs: 10_000 };

export function renderMarkdown(r: BenchResult, svg: string): string {
  const t = { ...issueTargets, ...r.targets };
  const allSteps = [...r.sweep, ...(r.hotSweep ?? []), ...(r.orchestrationSweep ?? []), ...r.scenarios];
  const row = (s: StepResult) => {
    const c = costOf(s);
    return (
      `| ${s.scenario} | ${s.offeredRate} | ${floor(s.achievedRate)} ` +
      `| ${s.placement.p50} | ${s.placement.p99} | ${s.placement.max} ` +
      `| ${s.completion.p50} | ${s.completion.p99} ` +
      `| ${s.reads?.all.p50 ?? '–'} | ${s.reads?.all.p99 ?? '–'} ` +
      `| ${slowestProjection(s, 'p50') ?? '–'} | ${slowestProjection(s, 'p99') ?? '–'} ` +
      `| ${s.backlogMax} | ${ceil(c?.machineLessGenerator)} ` +
      `| ${ceil(c?.totals.statements, 1)} | ${ceil(c?.totals.deliveries)} ` +
      `| ${s.keepsUp ? 'yes' : 'no'} | ${s.sustainable ? 'yes' : 'no'} |`
    );
  };
  const delays = (s: StepResult) =>
    Object.entries(s.projectionDelay ?? {}).map(
      ([model, d]) => `| ${s.scenario} ${s.offeredRate}/s | ${model} | ${d.events} | ${d.p50} | ${d.p99} |`,
    );
  const ran = (part: string) => r.parts === undefined || r.parts.includes(part);
  const cost = r.scenarios.find((s) => s.scenario === 'cost');
  const mixed = r.scenarios.find((s) => s.scenario === 'mixed');
  const costPer = costOf(cost);
  const rateTarget = (label: string, part: string, steps: StepResult[] | undefined, target: number) => {
    if (!ran(part) || steps === undefined || steps.length === 0) return `| ${label} | ≥ ${target}/s | not run | – |`;
    const best = highest(steps, 'keepsUp');
    const top = Math.max(...steps.map((s) => s.offeredRate));
    const stopped =
      steps.at(-1)?.keepsUp === false
        ? `; fell behind at ${steps.at(-1)?.offeredRate}/s`
        : `; highest step run ${top}/s`;
    return `| ${label} | ≥ ${target}/s | ${best}/s${stopped} | ${verdict(best >= target)} |`;
  };
  const mixedTarget = (label: string, target: number, value: number | undefined, clean = true) => {
    const measured = mixed === undefined ? 'not run' : `${ceil(value)} ms`;
    const pass = mixed === undefined || value === undefined ? undefined : value < target && clean;
    return `| ${label} | < ${target} ms | ${measured} | ${verdict(pass)} |`;
  };
  const machine = r.machine;
  const settings = Object.entries(r.settings ?? {}).map(([k, v]) => `${k}=${v}`);
  const partsRun =
    (r.parts === undefined ? '' : ` Parts run: ${r.parts.join(', ')}.`) +
    (r.settings === undefined ? '' : ` Settings from the environment: ${settings.join(', ') || 'none (defaults)'}.`);
  const costMeasured =
    cost === undefined
      ? 'not run'
      : `${ceil(costPer?.machineLessGenerator)} ms at ${cost.offeredRate}/s${cost.keepsUp ? '' : ', not kept up'}`;
  const costPass =
    cost === undefined || costPer?.machineLessGenerator === undefined || cost.offeredRate !== t.costRate
      ? undefined
      : cost.keepsUp && costPer.machineLessGenerator <= t.machineCpuMsPerOrder;
  const embeddedBest = r.embedded === undefined ? undefined : highest(r.embedded, 'keepsUp');
  const embeddedMeasured = embeddedBest === undefined ? 'not run' : `${embeddedBest}/s`;
  const embeddedPass = embeddedBest === undefined ? undefined : embeddedBest >= t.embeddedRate;
  const readsMeasured =
    r.reads === undefined
      ? 'not run'
      : `${r.reads.all.p99} ms (p50 ${r.reads.all.p50} ms) at ${r.reads.rate}/s, ${errorsOf(r.reads)} errors`;
  const lines = [
    `# Benchmark ${r.startedAt}`,
    '',
    `Machine: ${machine.cpus}, ${machine.memoryGb} GB, ${machine.os}; Node ${machine.node}; ` +
      `PostgreSQL ${machine.postgres}; RabbitMQ ${machine.rabbitmq}. ` +
      `Cluster mode: one process per service, PostgreSQL, RabbitMQ and Redis on the same machine.${partsRun}`,
    '',
    '| target (issue 11) | target | measured | |',
    '|---|---|---|---|',
    `| machine CPU per completed order at a steady ${t.costRate}/s, all processes but the load generator ` +
      `| ≤ ${t.machineCpuMsPerOrder} ms | ${costMeasured} | ${verdict(costPass)} |`,
    rateTarget(
      'keeps up, choreography (achieved = offered, every order final, backlog bounded)',
      'sweep',
      r.sweep,
      t.choreographyRate,
    ),
    rateTarget('keeps up, orchestration', 'orchestration', r.orchestrationSweep, t.orchestrationRate),
    rateTarget('keeps up, hot product (5 products)', 'hot', r.hotSweep, t.hotRate),
    mixedTarget(
      `placement p99 at ${mixed?.offeredRate ?? t.mixedRate} orders/s ` +
        `with ${mixed?.reads?.rate ?? t.mixedReadRate} query reads/s` +
        (mixed !== undefined && !mixed.keepsUp ? ' (not kept up)' : ''),
      t.placementP99Ms,
      mixed?.placement.p99,
    ),
    mixedTarget('completion p99, same step', t.completionP99Ms, mixed?.completion.p99),
    mixedTarget(
      `query read p99, same step (${errorsOf(mixed?.reads)} errors; any fails it)`,
      t.readP99Ms,
      mixed?.reads?.all.p99,
      errorsOf(mixed?.reads) === 0,
    ),
    mixedTarget(
      'commit-to-read-model p99, slowest read model, same step',
      t.projectionP99Ms,
      slowestProjection(mixed, 'p99'),
    ),
    `| embedded mode keeps up | ≥ ${t.embeddedRate}/s | ${embeddedMeasured} | ${verdict(embeddedPass)} |`,
    `| query read p99, read scenario (nothing else running) | – | ${readsMeasured} | |`,
    '',
    '## Cost model',
    '',
    'Per completed order (orders of the step that reached COMPLETED; the 10 % declined or out of stock ' +
      'cost too and are not in the denominator). CPU from /proc over the step, from its first order ' +
      'until its backlog drained; PostgreSQL is the postmaster, its background processes and the ' +
      "backends of this run's databases (the load generator's own polling included), RabbitMQ is " +
      "beam.smp and its children. Counters are the services' own (converge_db_*, converge_bus_* on " +
      '/metrics). A bus counter that reads 0 is one the bus does not count yet.',
    '',
    ...(cost === undefined ? ['The cost step was not run.'] : renderCost(cost)),
    '',
    ...renderOverload(r.overload),
    '## Steps',
    '',
    'Reads are of the query service during the step; projection delay is from commit at the source to ' +
      "applied in the slowest read model, estimated from the query service's histogram (interpolated in its " +
      'buckets). CPU ms is the whole machine less the load generator per completed order.',
    '',
    '| scenario | offered/s | achieved/s | placement p50 ms | p99 | max | completion p50 ms | p99 ' +
      '| read p50 ms | read p99 ms | projection p50 ms | projection p99 ms | backlog max | CPU ' +
      'ms/order | statements/order | deliveries/order | keeps up | sustainable |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
    ...allSteps.map(row),
    '',
    'Commit-to-read-model delay per read model:',
    '',
    '| step | read model | events | p50 ms | p99 ms |',
    '|---|---|---|---|---|',
    ...allSteps.flatMap(delays),
    '',
    `![latency against offered rate](${svg})`,
    '',
    'Peak memory per process group (PostgreSQL summed over its ' +
      'processes, so its shared buffers count once per process):',
    '',
    ...allSteps.map(
      (s) =>
        `- ${s.scenario} ${s.offeredRate}/s: ${Object.entries(s.resources)
          .map(([k, v]) => `${k} ${v.peakRssMb} MB`)
          .join(', ')}`,
    ),
    '',
    ...(r.embedded === undefined
      ? []
      : [
          'Embedded mode (one process, PGlite, local bus), placement latency:',
          '',
          '| offered/s | achieved/s | p50 ms | p99 ms | backlog at end | keeps up | sustainable |',
          '|---|---|---|---|---|---|---|',
          ...r.embedded.map(
            (e) =>
              `| ${e.rate} | ${floor(e.achievedRate)} | ${e.placement.p50} | ${e.placement.p99} | ${e.backlogEnd} ` +
              `| ${e.keepsUp ? 'yes' : 'no'} | ${e.sustainable ? 'yes' : 'no'} |`,
          ),
        ]),
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
  const y = (ms: number) =>
    height -
    pad -
    ((Math.log10(Math.max(ms, lo)) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * (height - 2 * pad);
  const line = (pick: (p: StepResult) => number, color: string) => {
    const coords = points.map((p) => `${x(p.offeredRate).toFixed(1)},${y(pick(p)).toFixed(1)}`).join(' ');
    return (
      `<polyline fill="none" stroke="${color}" stroke-width="2" points="${coords}"/>` +
      points
        .map((p) => `<circle cx="${x(p.offeredRate).toFixed(1)}" cy="${y(pick(p)).toFixed(1)}" r="3" fill="${color}"/>`)
        .join('')
    );
  };
  const ticks = [1, 10, 100, 1000, 10000].filter((t) => t >= lo && t <= hi);
  const tick = (t: number) =>
    `<text x="${pad - 6}" y="${y(t) + 4}" text-anchor="end">${t} ms</text>` +
    `<line x1="${pad}" y1="${y(t)}" x2="${width - pad}" y2="${y(t)}" stroke="#eee"/>`;
  const rateLabel = (p: StepResult) =>
    `<text x="${x(p.offeredRate)}" y="${height - pad + 16}" text-anchor="middle">${p.offeredRate}</text>`;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
      'font-family="sans-serif" font-size="12">',
    '<rect width="100%" height="100%" fill="white"/>',
    `<text x="${width / 2}" y="20" text-anchor="middle" font-size="14">` +
      'p99 latency against offered order rate (cluster)</text>',
    `<line x1="${pad}" y1="${height - pad}" x2="${width - pad}" y2="${height - pad}" stroke="#999"/>`,
    `<line x1="${pad}" y1="${pad}" x2="${pad}" y2="${height - pad}" stroke="#999"/>`,
    ticks.map(tick).join('\n'),
    points.map(rateLabel).join('\n'),
    `<text x="${width / 2}" y="${height - 10}" text-anchor="middle">offered orders/s</text>`,
    line((p) => p.placement.p99, '#4f46e5'),
    line((p) => p.completion.p99, '#dc2626'),
    `<text x="${width - pad}" y="${pad - 16}" text-anchor="end" fill="#4f46e5">placement p99</text>`,
    `<text x="${width - pad}" y="${pad - 2}" text-anchor="end" fill="#dc2626">completion p99</text>`,
    '</svg>',
    '',
  ].join('\n');
}
