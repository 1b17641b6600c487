// Token buckets, pure: given a bucket and a clock reading, when a request takes a token,
// then it is allowed or told when the next token is there; and the keyed limiter keeps
// its memory bounded by dropping idle buckets and capping the number of keys.
import { describe, expect, it } from 'vitest';
import { createLimiter, fullBucket, take, type Bucket, type Limit } from './rate-limit.ts';

const tenPerSecond: Limit = { perSecond: 10, burst: 3 };

/** Takes `n` tokens at the same instant; the last answer. */
function drain(bucket: Bucket, now: number, n: number, limit = tenPerSecond) {
  let taken = take(bucket, now, limit);
  for (let i = 1; i < n; i++) taken = take(taken.bucket, now, limit);
  return taken;
}

describe('take', () => {
  it('given a full bucket, when a burst of requests comes at once, then exactly `burst` are allowed', () => {
    const start = fullBucket(tenPerSecond, 0);
    const third = drain(start, 0, 3);
    expect(third).toMatchObject({ allowed: true, remaining: 0, retryAfterMs: 0 });
    const fourth = take(third.bucket, 0, tenPerSecond);
    expect(fourth.allowed).toBe(false);
    expect(fourth.remaining).toBe(0);
    // One token every 100 ms at 10 a second.
    expect(fourth.retryAfterMs).toBe(100);
    expect(fourth.resetMs).toBe(300);
  });

  it('given an empty bucket, when requests come just before and at Retry-After, then only the second is served', () => {
    const empty = drain(fullBucket(tenPerSecond, 1_000), 1_000, 4);
    expect(empty).toMatchObject({ allowed: false, retryAfterMs: 100 });
    expect(take(empty.bucket, 1_099, tenPerSecond).allowed).toBe(false);
    expect(take(empty.bucket, 1_000 + empty.retryAfterMs, tenPerSecond)).toMatchObject({ allowed: true, remaining: 0 });
  });

  it('given a part-filled bucket, when it is refused, then Retry-After counts only the missing part of a token', () => {
    const empty = drain(fullBucket(tenPerSecond, 0), 0, 3);
    const refused = take(empty.bucket, 30, tenPerSecond);
    expect(refused.allowed).toBe(false);
    expect(refused.retryAfterMs).toBe(70);
  });

  it('given a long idle time, when the bucket refills, then it holds no more than `burst`', () => {
    const empty = drain(fullBucket(tenPerSecond, 0), 0, 3);
    const later = take(empty.bucket, 3_600_000, tenPerSecond);
    expect(later).toMatchObject({ allowed: true, remaining: 2 });
  });

  it('given a clock that steps back, when a request comes, then nothing refills and the bucket keeps its time', () => {
    const empty = drain(fullBucket(tenPerSecond, 5_000), 5_000, 3);
    const stepped = take(empty.bucket, 1_000, tenPerSecond);
    expect(stepped.allowed).toBe(false);
    expect(stepped.bucket.at).toBe(5_000);
  });

  it('given a token taken part way to the next, when the client comes back at Retry-After, then it is served', () => {
    const slow: Limit = { perSecond: 1, burst: 2 };
    const empty = drain(fullBucket(slow, 0), 0, 2).bucket;
    for (let first = 1_000; first < 1_995; first++) {
      const served = take(empty, first, slow); // leaves a fraction of a token, with its rounding
      for (let then = first; then < first + 5; then++) {
        const refused = take(served.bucket, then, slow);
        expect(refused.allowed).toBe(false);
        const back = take(refused.bucket, then + refused.retryAfterMs, slow);
        expect(back.allowed, `served at ${first} ms, refused at ${then} ms`).toBe(true);
      }
    }
  });
});

describe('createLimiter', () => {
  it('given two keys, when one is exhausted, then the other is still served', () => {
    const limiter = createLimiter(tenPerSecond);
    for (let i = 0; i < 3; i++) expect(limiter.take('a', 0).allowed).toBe(true);
    expect(limiter.take('a', 0).allowed).toBe(false);
    expect(limiter.take('b', 0).allowed).toBe(true);
  });

  it('given buckets left idle until full, when other keys are seen later, then the idle ones are dropped', () => {
    const limiter = createLimiter(tenPerSecond); // full again 300 ms after the last take
    limiter.take('a', 0);
    limiter.take('b', 100);
    limiter.take('b', 350); // b is kept by use
    expect(limiter.size()).toBe(2);
    limiter.take('c', 700);
    expect(limiter.size()).toBe(2); // a, untouched for 700 ms, is gone
    limiter.take('c', 2_000);
    expect(limiter.size()).toBe(1);
  });

  it('given a key dropped while idle, when it comes back, then its bucket is full as if it had been kept', () => {
    const limiter = createLimiter(tenPerSecond);
    for (let i = 0; i < 3; i++) limiter.take('a', 0);
    expect(limiter.take('a', 0).allowed).toBe(false);
    limiter.take('other', 400);
    limiter.take('other', 800);
    expect(limiter.size()).toBe(1);
    expect(limiter.take('a', 800)).toMatchObject({ allowed: true, remaining: 2 });
  });

  it('given a flood of distinct keys, when it passes the cap, then the map stays under it and used keys stay', () => {
    const limiter = createLimiter({ perSecond: 1, burst: 1 }, 100);
    limiter.take('kept', 0);
    for (let i = 0; i < 10_000; i++) {
      limiter.take(`10.0.${i >> 8}.${i & 255}`, 1);
      if (i % 20 === 0) limiter.take('kept', 1); // seen in every generation
      expect(limiter.size()).toBeLessThanOrEqual(100);
    }
    expect(limiter.take('kept', 1).allowed).toBe(false); // its empty bucket survived the flood
    expect(limiter.take('10.0.0.0', 1).allowed).toBe(true); // long dropped: a fresh bucket
  });

  it('given a limit without a rate, when a limiter is made, then it is refused', () => {
    expect(() => createLimiter({ perSecond: 0, burst: 1 })).toThrow(/perSecond/);
    expect(() => createLimiter({ perSecond: 1, burst: 0 })).toThrow(/burst/);
  });
});
