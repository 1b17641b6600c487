// A histogram as a service exposes it on /metrics, read the way Prometheus reads it:
// cumulative bucket counts per label value, the difference of two scrapes for what
// happened between them, and quantiles by linear interpolation inside the bucket the
// rank falls in (as histogram_quantile does). The benchmark measures the read models'
// commit-to-applied delay per step this way, from the query service's own histogram.
// Counters are read the same way: their sum over label sets, before and after a step.
export type Bucket = { le: number; count: number };

/** Buckets of histogram `name`, keyed by the value of `label`, sorted by upper bound. */
export function parseHistogram(text: string, name: string, label: string): Map<string, Bucket[]> {
  const pattern = new RegExp(`^${name}_bucket\\{(.*)\\}\\s+(\\S+)$`);
  const byLabel = new Map<string, Bucket[]>();
  for (const line of text.split('\n')) {
    const match = pattern.exec(line.trim());
    if (match === null) continue;
    const labels = new Map([...(match[1] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1] ?? '', m[2] ?? '']));
    const key = labels.get(label);
    const le = labels.get('le');
    if (key === undefined || le === undefined) continue;
    const buckets = byLabel.get(key) ?? [];
    buckets.push({ le: le === '+Inf' ? Number.POSITIVE_INFINITY : Number(le), count: Number(match[2]) });
    byLabel.set(key, buckets);
  }
  for (const buckets of byLabel.values()) buckets.sort((a, b) => a.le - b.le);
  return byLabel;
}

/** What was counted between two scrapes of the same histogram. */
export function difference(after: Map<string, Bucket[]>, before: Map<string, Bucket[]>): Map<string, Bucket[]> {
  const result = new Map<string, Bucket[]>();
  for (const [key, buckets] of after) {
    const earlier = new Map((before.get(key) ?? []).map((b) => [b.le, b.count]));
    result.set(
      key,
      buckets.map((b) => ({ le: b.le, count: Math.max(0, b.count - (earlier.get(b.le) ?? 0)) })),
    );
  }
  return result;
}

/**
 * The q-quantile of cumulative buckets, interpolated linearly inside its bucket (the
 * first bucket from 0). A rank in the +Inf bucket answers the highest finite bound:
 * the estimate says "at least", never more than the buckets know.
 */
export function histogramQuantile(q: number, buckets: readonly Bucket[]): number {
  const total = buckets.at(-1)?.count ?? 0;
  if (total === 0) return 0;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const bucket of buckets) {
    if (bucket.count >= rank) {
      if (!Number.isFinite(bucket.le)) return lower;
      const inBucket = bucket.count - below;
      return inBucket === 0 ? bucket.le : lower + ((bucket.le - lower) * (rank - below)) / inBucket;
    }
    lower = bucket.le;
    below = bucket.count;
  }
  return lower;
}

/** Every sample of a scrape summed by metric name, over all its label sets (counters and gauges alike). */
export function parseSamples(text: string): Map<string, number> {
  const sums = new Map<string, number>();
  for (const line of text.split('\n')) {
    const match = /^([A-Za-z_:][\w:]*)(?:\{[^}]*\})?\s+(\S+)/.exec(line.trim());
    if (match === null) continue;
    const value = Number(match[2]);
    if (Number.isFinite(value)) sums.set(match[1] ?? '', (sums.get(match[1] ?? '') ?? 0) + value);
  }
  return sums;
}
