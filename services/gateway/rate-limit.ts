// Rate limits as token buckets, in memory. A bucket holds up to `burst` tokens and gains
// `perSecond` of them a second; a request takes one, or is refused with the time until
// the next token is there (the client's Retry-After). A bucket is refilled when its key is
// next seen, so there is no timer per key.
//
// Memory is bounded by keeping buckets in two generations, the current one and the one
// before; a key seen again moves to the current one. A new generation starts when the
// current one has held a full bucket's worth of time (`burst / perSecond`) or half the
// key cap, and the generation before is dropped whole. Dropped for time, its buckets had
// not been touched for that long, so they were full again: the same as no bucket. Dropped
// for the cap (a flood of distinct addresses), the map stays at most `maxKeys`, and what
// that gives away is that a key unseen for a generation starts again with a full bucket.
// No step walks the map, so a take costs the same with one key or a hundred thousand.

export type Limit = { readonly perSecond: number; readonly burst: number };
export type Bucket = { readonly tokens: number; readonly at: number };
export type Taken = {
  readonly allowed: boolean;
  /** 0 when allowed; otherwise how long until the bucket has a token. */
  readonly retryAfterMs: number;
  /** Whole tokens left after this request. */
  readonly remaining: number;
  /** How long until the bucket is full again. */
  readonly resetMs: number;
  readonly bucket: Bucket;
};

// A request made exactly when Retry-After said must not be refused for a rounding error.
const epsilon = 1e-9;

export const fullBucket = (limit: Limit, now: number): Bucket => ({ tokens: limit.burst, at: now });

/** Refills `bucket` up to `now` (milliseconds on any clock) and takes a token if there is one. */
export function take(bucket: Bucket, now: number, limit: Limit): Taken {
  const at = Math.max(now, bucket.at); // a clock that steps back refills nothing
  const tokens = Math.min(limit.burst, bucket.tokens + ((at - bucket.at) * limit.perSecond) / 1000);
  const allowed = tokens + epsilon >= 1;
  const left = allowed ? Math.max(0, tokens - 1) : tokens;
  return {
    allowed,
    retryAfterMs: allowed ? 0 : Math.ceil(((1 - left) * 1000) / limit.perSecond),
    remaining: Math.floor(left + epsilon),
    resetMs: Math.ceil(((limit.burst - left) * 1000) / limit.perSecond),
    bucket: { tokens: left, at },
  };
}

export type Limiter = {
  readonly limit: Limit;
  take(key: string, now: number): Taken;
  /** Keys held now. */
  size(): number;
};

export function createLimiter(limit: Limit, maxKeys = 100_000): Limiter {
  if (!(limit.perSecond > 0) || !(limit.burst >= 1)) throw new Error('a rate limit needs perSecond > 0 and burst >= 1');
  const fullAfterMs = (limit.burst * 1000) / limit.perSecond;
  const generationKeys = Math.max(1, Math.floor(maxKeys / 2));
  let current = new Map<string, Bucket>();
  let previous = new Map<string, Bucket>();
  let startedAt: number | undefined;
  return {
    limit,
    take(key, now) {
      startedAt ??= now;
      if (now - startedAt >= fullAfterMs || current.size >= generationKeys) {
        previous = current;
        current = new Map();
        startedAt = now;
      }
      let bucket = current.get(key);
      if (bucket === undefined) {
        bucket = previous.get(key);
        if (bucket !== undefined) previous.delete(key);
      }
      const taken = take(bucket ?? fullBucket(limit, now), now, limit);
      current.set(key, taken.bucket);
      return taken;
    },
    size: () => current.size + previous.size,
  };
}
