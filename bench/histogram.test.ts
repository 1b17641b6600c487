import { describe, expect, it } from 'vitest';
import { Histogram } from './histogram.ts';

describe('histogram', () => {
  it('given uniform values, when asked for percentiles, then each is within 2 % of the exact one', () => {
    const h = new Histogram();
    for (let v = 1; v <= 100_000; v++) h.record(v);
    for (const q of [0.5, 0.9, 0.99, 0.999]) {
      const exact = q * 100_000;
      expect(Math.abs(h.quantile(q) - exact) / exact).toBeLessThan(0.02);
    }
    expect(h.quantile(1)).toBe(100_000);
    expect(h.count).toBe(100_000);
  });

  it('given one stall among fast requests, when summarised, then max and p99.9 show it', () => {
    const h = new Histogram();
    for (let i = 0; i < 999; i++) h.record(1000);
    h.record(2_000_000);
    const s = h.summary();
    expect(s.p50).toBeCloseTo(1, 1);
    expect(s.max).toBe(2000);
    expect(s.p999).toBeGreaterThanOrEqual(1);
  });

  it('given two histograms, when merged, then counts and max combine', () => {
    const a = new Histogram();
    const b = new Histogram();
    a.record(10);
    b.record(5000);
    a.merge(b);
    expect(a.count).toBe(2);
    expect(a.quantile(1)).toBe(5000);
  });
});
