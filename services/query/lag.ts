// How far behind the read models are. Each time an event is applied, the delay from
// its commit at the source (the envelope's time) to now is recorded for every read
// model it changed: a Prometheus histogram and the last 1,000 delays for quantiles.
// The current lag is the events still waiting for the read side (queue and hold) and,
// while any wait, how long ago the last applied event was committed (before the first
// one since the service started, how long it has been running).
import { readModels, type ReadModelName } from './read-models.ts';

// Fine below the 100 ms target and at most 1.5 to 2.5 times apart up to 5 s, so
// quantiles estimated from the buckets (as Prometheus and the benchmark do) stay close
// to the truth where it matters.
const bucketsSeconds = [
  0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1, 1.5, 2.5,
  5, 10, 30,
];
const window = 1_000;

type Track = { applied: number; buckets: number[]; sum: number; recent: number[]; lastEventTime: number | undefined };

export type LagTracker = {
  /** When the tracker began: the lag's reference until the first event is applied. */
  readonly startedAt: number;
  record(models: readonly ReadModelName[], eventTime: string, appliedAt: Date): void;
  report(model: ReadModelName): {
    applied: number;
    delayMs: { p50: number; p99: number; max: number; samples: number };
    lastEventTime: number | undefined;
  };
  metricLines(): string[];
};

const quantile = (sorted: readonly number[], q: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;

export function createLagTracker(startedAt = Date.now()): LagTracker {
  const tracks = new Map<ReadModelName, Track>(
    readModels.map((m) => [
      m.name,
      { applied: 0, buckets: bucketsSeconds.map(() => 0), sum: 0, recent: [], lastEventTime: undefined },
    ]),
  );
  return {
    startedAt,
    record(models, eventTime, appliedAt) {
      const committed = Date.parse(eventTime);
      const delayMs = Math.max(0, appliedAt.getTime() - committed);
      for (const model of models) {
        const track = tracks.get(model);
        if (track === undefined) continue;
        track.applied += 1;
        track.sum += delayMs / 1000;
        bucketsSeconds.forEach((le, i) => {
          if (delayMs / 1000 <= le) track.buckets[i] = (track.buckets[i] ?? 0) + 1;
        });
        track.recent.push(delayMs);
        if (track.recent.length > window) track.recent.shift();
        track.lastEventTime = Math.max(track.lastEventTime ?? 0, committed);
      }
    },
    report(model) {
      const track = tracks.get(model);
      const sorted = [...(track?.recent ?? [])].sort((a, b) => a - b);
      return {
        applied: track?.applied ?? 0,
        delayMs: {
          p50: quantile(sorted, 0.5),
          p99: quantile(sorted, 0.99),
          max: sorted.at(-1) ?? 0,
          samples: sorted.length,
        },
        lastEventTime: track?.lastEventTime,
      };
    },
    metricLines() {
      const lines = [
        "# HELP converge_projection_delay_seconds Time from an event's " +
          'commit at its source to its effect in a read model.',
        '# TYPE converge_projection_delay_seconds histogram',
      ];
      for (const [model, track] of tracks) {
        bucketsSeconds.forEach((le, i) =>
          lines.push(`converge_projection_delay_seconds_bucket{model="${model}",le="${le}"} ${track.buckets[i] ?? 0}`),
        );
        lines.push(
          `converge_projection_delay_seconds_bucket{model="${model}",le="+Inf"} ${track.applied}`,
          `converge_projection_delay_seconds_sum{model="${model}"} ${track.sum.toFixed(6)}`,
          `converge_projection_delay_seconds_count{model="${model}"} ${track.applied}`,
        );
      }
      return lines;
    },
  };
}
