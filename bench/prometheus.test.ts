import { describe, expect, it } from 'vitest';
import { difference, histogramQuantile, parseHistogram, parseSamples } from './prometheus.ts';

const scrape = (counts: Record<string, [number, number, number, number]>) =>
  [
    '# HELP converge_projection_delay_seconds Time from commit to applied.',
    '# TYPE converge_projection_delay_seconds histogram',
    ...Object.entries(counts).flatMap(([model, [a, b, c, inf]]) => [
      `converge_projection_delay_seconds_bucket{model="${model}",le="0.01"} ${a}`,
      `converge_projection_delay_seconds_bucket{model="${model}",le="0.1"} ${b}`,
      `converge_projection_delay_seconds_bucket{model="${model}",le="1"} ${c}`,
      `converge_projection_delay_seconds_bucket{model="${model}",le="+Inf"} ${inf}`,
      `converge_projection_delay_seconds_count{model="${model}"} ${inf}`,
    ]),
    'converge_other_bucket{model="x",le="1"} 99',
  ].join('\n');

describe('reading a Prometheus histogram', () => {
  it('parses cumulative buckets per label value, ignoring other series', () => {
    const parsed = parseHistogram(
      scrape({ a: [1, 2, 3, 4], b: [0, 0, 5, 5] }),
      'converge_projection_delay_seconds',
      'model',
    );
    expect([...parsed.keys()]).toEqual(['a', 'b']);
    expect(parsed.get('a')).toEqual([
      { le: 0.01, count: 1 },
      { le: 0.1, count: 2 },
      { le: 1, count: 3 },
      { le: Number.POSITIVE_INFINITY, count: 4 },
    ]);
  });

  it('given two scrapes, counts only what happened between them', () => {
    const before = parseHistogram(scrape({ a: [10, 10, 10, 10] }), 'converge_projection_delay_seconds', 'model');
    const after = parseHistogram(scrape({ a: [10, 100, 110, 110] }), 'converge_projection_delay_seconds', 'model');
    expect(
      difference(after, before)
        .get('a')
        ?.map((b) => b.count),
    ).toEqual([0, 90, 100, 100]);
  });

  it('interpolates a quantile inside its bucket', () => {
    const buckets = [
      { le: 0.01, count: 0 },
      { le: 0.1, count: 100 },
      { le: Number.POSITIVE_INFINITY, count: 100 },
    ];
    expect(histogramQuantile(0.5, buckets)).toBeCloseTo(0.055, 6);
    expect(histogramQuantile(0.99, buckets)).toBeCloseTo(0.0991, 6);
  });

  it('starts the first bucket at zero and answers the highest bound for ranks in +Inf', () => {
    expect(
      histogramQuantile(0.5, [
        { le: 0.01, count: 10 },
        { le: Number.POSITIVE_INFINITY, count: 10 },
      ]),
    ).toBeCloseTo(0.005, 6);
    expect(
      histogramQuantile(0.99, [
        { le: 0.01, count: 1 },
        { le: 1, count: 2 },
        { le: Number.POSITIVE_INFINITY, count: 100 },
      ]),
    ).toBe(1);
  });

  it('answers 0 for an empty histogram', () => {
    expect(
      histogramQuantile(0.99, [
        { le: 1, count: 0 },
        { le: Number.POSITIVE_INFINITY, count: 0 },
      ]),
    ).toBe(0);
  });
});

describe('reading counters', () => {
  it('sums each metric over its label sets and skips comments', () => {
    const samples = parseSamples(
      [
        '# HELP converge_db_statements_total Statements.',
        '# TYPE converge_db_statements_total counter',
        'converge_db_statements_total{service="order"} 12',
        'converge_db_statements_total{service="order",pool="b"} 3',
        'converge_bus_publishes_total 4',
      ].join('\n'),
    );
    expect(samples.get('converge_db_statements_total')).toBe(15);
    expect(samples.get('converge_bus_publishes_total')).toBe(4);
    expect(samples.has('converge_db_transactions_total')).toBe(false);
  });
});
