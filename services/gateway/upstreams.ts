// Each service behind the gateway is a list of instances (base URLs). A request goes to
// the next healthy one in turn (round robin). Health is learnt two ways: in the
// background, every instance's GET /readyz is asked every few seconds (200 in time =
// healthy), and on the way, a connection that cannot be opened marks its instance down
// at once. No instance healthy: the caller answers 503 without trying any.
//
// A failed attempt is repeated on the next healthy instance only when that cannot do a
// write twice: when the connection was never opened (nothing was sent), or when the
// request is idempotent (GET, HEAD, OPTIONS, PUT, DELETE) or carries an Idempotency-Key
// (the service replays the first answer). A POST without a key whose connection broke
// after it was sent may have taken effect, so it is not repeated and the client hears so
// (RFC 9110 §9.2.2). That includes the one case HTTP/1.1 cannot tell apart: a pooled
// connection the instance closed (it stopped) just as the request was written on it.
// A repeatable request whose connection broke gets one more try on the same instance
// first, over a new connection, since that stale connection is the usual cause.
// A broken connection alone does not mark an instance down: an instance that died
// refuses the next connection, and that marks it. A timeout repeats nothing either: the
// request's time is spent, and slow is not down.
import type { Logger } from '@converge/platform';

export type Instance = {
  readonly base: string;
  readonly origin: string;
  healthy: boolean;
};
export type Pool = {
  readonly name: string;
  readonly instances: readonly Instance[];
  /** Where the next round-robin pick starts. */
  next: number;
};

export type Outgoing = {
  readonly method: string;
  /** Path and query, starting with "/". */
  readonly path: string;
  readonly headers: Headers;
  readonly body: Buffer | undefined;
  readonly timeoutMs: number;
};

export type Forwarded =
  | { readonly outcome: 'answered'; readonly response: Response; readonly payload: Buffer }
  /** Every instance is marked down: nothing was tried. */
  | { readonly outcome: 'none-healthy' }
  /** No instance tried could be connected to: nothing was sent. */
  | { readonly outcome: 'unreachable'; readonly error: unknown }
  /** The connection broke after the request was sent: it may have taken effect. */
  | { readonly outcome: 'broken'; readonly error: unknown }
  | { readonly outcome: 'timeout'; readonly error: unknown };

/** "http://a:1, http://b:2/" or a list of them → normalised base URLs; throws on a bad one. */
export function parseBases(value: string | readonly string[]): string[] {
  const bases = (typeof value === 'string' ? value.split(',') : value.flatMap((v) => v.split(',')))
    .map((v) => v.trim().replace(/\/+$/, ''))
    .filter((v) => v !== '');
  if (bases.length === 0) throw new Error('no base URL given');
  for (const base of bases) {
    let url: URL;
    try {
      url = new URL(base);
    } catch {
      throw new Error(`"${base}" is not a URL`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`"${base}" is not an http(s) URL`);
    if (url.search !== '' || url.hash !== '') throw new Error(`"${base}" must not have a query or fragment`);
  }
  return bases;
}

export function createPool(name: string, bases: string | readonly string[]): Pool {
  const instances = parseBases(bases).map((base) => ({ base, origin: new URL(base).origin, healthy: true }));
  return { name, instances, next: 0 };
}

/** The index of the next healthy instance in turn, -1 when none is. */
function nextHealthy(pool: Pool): number {
  const n = pool.instances.length;
  for (let looked = 0; looked < n; looked++) {
    const index = (pool.next + looked) % n;
    if (pool.instances[index]?.healthy === true) {
      pool.next = (index + 1) % n;
      return index;
    }
  }
  return -1;
}

/** The next healthy instance in turn, or undefined when none is. */
export const pick = (pool: Pool): Instance | undefined => pool.instances[nextHealthy(pool)];

const idempotentMethods = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE']);
// Failures to open a connection at all: the request never left.
const notConnected = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'UND_ERR_CONNECT_TIMEOUT',
]);

export const isTimeout = (error: unknown): boolean =>
  error instanceof Error && (error.name === 'TimeoutError' || error.name === 'AbortError');

/** fetch says "fetch failed"; the reason is in its cause (ECONNREFUSED and the like). */
const causeCode = (error: unknown): string | undefined => {
  const code = (error as { cause?: { code?: unknown } } | undefined)?.cause?.code;
  return typeof code === 'string' ? code : undefined;
};

export function describeFailure(error: unknown, timeoutMs: number): string {
  if (isTimeout(error)) return `no answer within ${timeoutMs} ms`;
  if (!(error instanceof Error)) return String(error);
  const code = causeCode(error);
  const cause = (error as Error & { cause?: unknown }).cause;
  return code !== undefined ? `cannot connect (${code})` : cause instanceof Error ? cause.message : error.message;
}

function markDown(pool: Pool, instance: Instance, reason: string, log: Logger): void {
  if (!instance.healthy) return;
  instance.healthy = false;
  log.warn('upstream instance down', { upstream: pool.name, instance: instance.base, reason });
}

/** Sends the request to a healthy instance of `pool`, and on to the next ones while that is safe. */
export async function forward(pool: Pool, outgoing: Outgoing, log: Logger): Promise<Forwarded> {
  const repeatable = idempotentMethods.has(outgoing.method) || outgoing.headers.has('idempotency-key');
  const signal = AbortSignal.timeout(outgoing.timeoutMs); // one budget for every attempt
  const n = pool.instances.length;
  const first = nextHealthy(pool);
  if (first === -1) return { outcome: 'none-healthy' };
  let broken: Forwarded | undefined;
  let unreachable: Forwarded | undefined;
  let spare = true;
  // Each instance at most once, in turn from the first pick.
  for (let looked = 0; looked < n; looked++) {
    const instance = pool.instances[(first + looked) % n];
    if (instance === undefined || !instance.healthy) continue;
    try {
      const response = await fetch(instance.base + outgoing.path, {
        method: outgoing.method,
        headers: outgoing.headers,
        body: outgoing.body,
        redirect: 'manual',
        signal,
      });
      return { outcome: 'answered', response, payload: Buffer.from(await response.arrayBuffer()) };
    } catch (error) {
      if (isTimeout(error)) return { outcome: 'timeout', error };
      const code = causeCode(error);
      if (code !== undefined && notConnected.has(code)) {
        markDown(pool, instance, describeFailure(error, outgoing.timeoutMs), log);
        unreachable = { outcome: 'unreachable', error };
        continue;
      }
      broken = { outcome: 'broken', error };
      if (!repeatable) return broken;
      log.warn('upstream connection broke; trying the next instance', {
        upstream: pool.name,
        instance: instance.base,
        method: outgoing.method,
        error: describeFailure(error, outgoing.timeoutMs),
      });
      if (spare) {
        spare = false;
        looked--; // the same instance again, over a new connection
      }
    }
  }
  // Only a repeatable request gets here after a broken connection; for it, that the
  // service cannot be reached (503, Retry-After) is the more useful thing to say.
  return unreachable ?? broken ?? { outcome: 'none-healthy' };
}

export type HealthWatch = {
  /** One round of probes now (tests; the timer calls it too). */
  check(): Promise<void>;
  stop(): void;
};

/** Probes every instance's /readyz every `intervalMs`, each within `timeoutMs`; one timer for all. */
export function watchHealth(
  pools: readonly Pool[],
  options: { intervalMs: number; timeoutMs: number; log: Logger },
): HealthWatch {
  const { intervalMs, timeoutMs, log } = options;
  const probe = async (pool: Pool, instance: Instance) => {
    let healthy = false;
    let reason: string;
    try {
      const response = await fetch(`${instance.base}/readyz`, { signal: AbortSignal.timeout(timeoutMs) });
      await response.arrayBuffer();
      healthy = response.status === 200;
      reason = `/readyz answered ${response.status}`;
    } catch (error) {
      reason = describeFailure(error, timeoutMs);
    }
    if (!healthy) markDown(pool, instance, reason, log);
    else if (!instance.healthy) {
      instance.healthy = true;
      log.info('upstream instance up', { upstream: pool.name, instance: instance.base });
    }
  };
  let running: Promise<void> | undefined;
  const check = () => {
    // A round still waiting for slow instances is not doubled by the next tick.
    running ??= Promise.all(pools.flatMap((pool) => pool.instances.map((i) => probe(pool, i)))).then(() => {
      running = undefined;
    });
    return running;
  };
  const timer = setInterval(() => void check(), intervalMs);
  timer.unref();
  return { check, stop: () => clearInterval(timer) };
}
