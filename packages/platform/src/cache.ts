// Read caches that are never older than the newest event applied. Every cached row
// carries the version of the row it was read from. A write invalidates its key *at the
// new version*, inside its transaction: the entry becomes a marker "version n exists, the
// value is not here", so a reader that fetched the row before the write (an older
// version) cannot put its stale copy back; the next read goes to the database, gets
// version n and fills the entry. Redis in a deployment (shared by every instance), an
// in-process LRU in embedded mode. Redis out of reach: reads go to the database; an
// invalidation that could not reach Redis is kept and retried, and its key bypasses
// the cache until it got through.
import { Redis } from 'ioredis';

export type CacheStats = { hits: number; misses: number; errors: number; pendingInvalidations: number };

export interface ReadCache {
  readonly kind: 'memory' | 'redis';
  readonly stats: CacheStats;
  /** The cached value, if there is a current one. */
  get<T>(key: string): Promise<T | undefined>;
  /** Offers a value read from the database at `version`; refused when the cache knows a newer one. */
  offer(key: string, version: number, value: unknown): Promise<void>;
  /** Writes at these versions are committing: no older value may be served for their keys (one round trip). */
  invalidate(entries: readonly Invalidation[]): Promise<void>;
  close(): Promise<void>;
}

export type Invalidation = { key: string; version: number };

type Entry = { v: number; value: unknown };

/** Reads through a cache: the cached value, or the database's (offered to the cache). */
export async function cached<T>(
  cache: ReadCache,
  key: string,
  load: () => Promise<{ version: number; value: T } | undefined>,
): Promise<T | undefined> {
  const hit = await cache.get<T>(key);
  if (hit !== undefined) return hit;
  const row = await load();
  if (row !== undefined) await cache.offer(key, row.version, row.value);
  return row?.value;
}

export function memoryCache(options: { maxEntries?: number } = {}): ReadCache {
  const maxEntries = options.maxEntries ?? 10_000;
  const entries = new Map<string, Entry>();
  const stats: CacheStats = { hits: 0, misses: 0, errors: 0, pendingInvalidations: 0 };
  const put = (key: string, entry: Entry) => {
    const current = entries.get(key);
    if (current !== undefined && current.v > entry.v) return;
    entries.delete(key);
    entries.set(key, entry);
    // Least recently used first: the Map keeps insertion order, a hit re-inserts.
    if (entries.size > maxEntries)
      for (const oldest of entries.keys()) {
        entries.delete(oldest);
        break;
      }
  };
  return {
    kind: 'memory',
    stats,
    get: <T>(key: string) => {
      const entry = entries.get(key);
      if (entry === undefined || entry.value === null) {
        stats.misses += 1;
        return Promise.resolve(undefined);
      }
      stats.hits += 1;
      entries.delete(key);
      entries.set(key, entry);
      return Promise.resolve(entry.value as T);
    },
    offer: (key, version, value) => Promise.resolve(put(key, { v: version, value })),
    invalidate: (invalidations) => {
      for (const { key, version } of invalidations) put(key, { v: version, value: null });
      return Promise.resolve();
    },
    close: () => Promise.resolve(),
  };
}

// Set unless the entry holds a newer version: one step at the server, so two writers
// (an invalidation and a stale reader) cannot interleave.
const setIfNotNewer = `
local current = redis.call('GET', KEYS[1])
if current then
  local v = tonumber(string.match(current, '^{"v":(%d+)'))
  if v and v > tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1`;

const asError = (error: unknown) => (error instanceof Error ? error : new Error(String(error)));

export function redisCache(options: {
  url: string;
  prefix?: string;
  ttlMs?: number;
  timeoutMs?: number;
  log?: (message: string, fields: Record<string, unknown>) => void;
}): ReadCache {
  const prefix = options.prefix ?? 'converge:cache:';
  const ttl = String(options.ttlMs ?? 300_000);
  const client = new Redis(options.url, {
    // Out of reach is answered within the command timeout (reads go to the database):
    // a command waits for a connection being made, never for a retry.
    enableOfflineQueue: true,
    maxRetriesPerRequest: 0,
    commandTimeout: options.timeoutMs ?? 200,
    lazyConnect: false,
    retryStrategy: (times) => Math.min(times * 200, 2_000),
  });
  client.on('error', () => undefined); // reported per command below, not per reconnect attempt
  const stats: CacheStats = { hits: 0, misses: 0, errors: 0, pendingInvalidations: 0 };
  const pending = new Map<string, number>();
  const store = (key: string, version: number, value: unknown) =>
    client.eval(setIfNotNewer, 1, prefix + key, String(version), JSON.stringify({ v: version, value }), ttl);
  const failed = (what: string, error: unknown) => {
    stats.errors += 1;
    if (stats.errors === 1 || stats.errors % 100 === 0)
      options.log?.(`redis cache: ${what} failed`, { error: (error as Error).message, errors: stats.errors });
  };
  const retry = setInterval(() => {
    for (const [key, version] of pending) {
      void store(key, version, null).then(
        () => {
          if (pending.get(key) === version) pending.delete(key);
          stats.pendingInvalidations = pending.size;
        },
        () => undefined,
      );
    }
  }, 500);
  retry.unref();
  return {
    kind: 'redis',
    stats,
    get: async <T>(key: string) => {
      if (pending.has(key)) {
        stats.misses += 1;
        return undefined;
      }
      try {
        const text = await client.get(prefix + key);
        const entry = text === null ? undefined : (JSON.parse(text) as Entry);
        if (entry === undefined || entry.value === null) {
          stats.misses += 1;
          return undefined;
        }
        stats.hits += 1;
        return entry.value as T;
      } catch (error) {
        failed('get', error);
        stats.misses += 1;
        return undefined;
      }
    },
    offer: async (key, version, value) => {
      if (pending.has(key)) return;
      await store(key, version, value).catch((error: unknown) => failed('offer', error));
    },
    invalidate: async (invalidations) => {
      if (invalidations.length === 0) return;
      // One pipeline: each entry succeeds or fails on its own; a failed one is kept and
      // retried, and its key bypasses the cache meanwhile.
      const pipeline = client.pipeline();
      for (const { key, version } of invalidations)
        pipeline.eval(
          setIfNotNewer,
          1,
          prefix + key,
          String(version),
          JSON.stringify({ v: version, value: null }),
          ttl,
        );
      const replies = await pipeline
        .exec()
        .catch((error: unknown) => invalidations.map(() => [asError(error), null] as const));
      invalidations.forEach(({ key, version }, i) => {
        const error = replies?.[i]?.[0] ?? (replies === null ? new Error('pipeline discarded') : null);
        if (error === null) return;
        failed('invalidate', error);
        pending.set(key, Math.max(pending.get(key) ?? 0, version));
      });
      stats.pendingInvalidations = pending.size;
    },
    close: async () => {
      clearInterval(retry);
      client.disconnect();
      await Promise.resolve();
    },
  };
}
