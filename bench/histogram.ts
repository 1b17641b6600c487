// A log-linear latency histogram in the manner of HdrHistogram: values (microseconds)
// land in 2^k ranges split into 64 equal sub-buckets, so any percentile is exact to
// within about 1.6 % whatever the range, and recording costs one array increment.
const subBuckets = 64;

export type Summary = { count: number; p50: number; p90: number; p99: number; p999: number; max: number; mean: number };

export class Histogram {
  private readonly counts = new Map<number, number>();
  private total = 0;
  private sum = 0;
  private maxValue = 0;

  record(micros: number): void {
    const value = Math.max(0, Math.round(micros));
    const index = Histogram.indexOf(value);
    this.counts.set(index, (this.counts.get(index) ?? 0) + 1);
    this.total += 1;
    this.sum += value;
    if (value > this.maxValue) this.maxValue = value;
  }

  merge(other: Histogram): void {
    for (const [index, n] of other.counts) this.counts.set(index, (this.counts.get(index) ?? 0) + n);
    this.total += other.total;
    this.sum += other.sum;
    this.maxValue = Math.max(this.maxValue, other.maxValue);
  }

  get count(): number {
    return this.total;
  }

  /** The value at quantile q (0..1), in microseconds: the upper edge of its bucket. */
  quantile(q: number): number {
    if (this.total === 0) return 0;
    const rank = Math.max(1, Math.ceil(q * this.total));
    let seen = 0;
    for (const index of [...this.counts.keys()].sort((a, b) => a - b)) {
      seen += this.counts.get(index) ?? 0;
      if (seen >= rank) return Math.min(Histogram.upperEdge(index), this.maxValue);
    }
    return this.maxValue;
  }

  /** Percentiles in milliseconds. */
  summary(): Summary {
    const ms = (micros: number) => Math.round(micros / 10) / 100;
    return {
      count: this.total,
      p50: ms(this.quantile(0.5)),
      p90: ms(this.quantile(0.9)),
      p99: ms(this.quantile(0.99)),
      p999: ms(this.quantile(0.999)),
      max: ms(this.maxValue),
      mean: this.total === 0 ? 0 : ms(this.sum / this.total),
    };
  }

  private static indexOf(value: number): number {
    if (value < subBuckets) return value;
    const exponent = Math.floor(Math.log2(value / subBuckets));
    const base = subBuckets * 2 ** exponent;
    return (exponent + 1) * subBuckets + Math.floor((value - base) / 2 ** exponent);
  }

  private static upperEdge(index: number): number {
    if (index < subBuckets) return index;
    const exponent = Math.floor(index / subBuckets) - 1;
    const offset = index % subBuckets;
    return subBuckets * 2 ** exponent + (offset + 1) * 2 ** exponent - 1;
  }
}
