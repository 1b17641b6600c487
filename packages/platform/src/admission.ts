// Admission control: a write that the service cannot carry through soon is refused at
// the door (503 + Retry-After) rather than accepted into a queue that only grows. It
// looks at what the write would join: the outbox backlog (committed events the relay
// has not published yet), the connection pool's queue, and optionally a service's own
// count of work in flight (the order service: orders still PENDING, i.e. how far its
// consumers lag), and the writes already admitted and not yet answered: when more are
// in progress than the service can answer quickly, the machine is saturated and one
// more would only make every one of them slower. Retry-After is the time the backlog
// takes to drain at the rate it has been draining (1 s for the others).
//
// The check is cheap per request: the pool's figures are in memory, and the backlog is
// sampled by one statement at most every `sampleMs`, shared by every request that
// arrives meanwhile. Nothing is sampled while no write arrives.
import type { Db } from './db.ts';
import { UnavailableError } from './errors.ts';
import type { HttpApp } from './http.ts';

export type AdmissionOptions = {
  /** Unpublished outbox rows above which writes are refused. */
  maxBacklog: number;
  /** How long the longest caller may wait for a pooled connection before writes are refused. */
  maxPoolWaitMs: number;
  /**
   * Work in flight in the service's own tables, and its bound: `sql` selects one row
   * `{ n }` and is given the count to stop at as $2 (a count beyond it makes no difference).
   */
  inFlight?: { sql: string; max: number };
  /** Requests admitted and not yet answered above which more are refused (undefined: no bound). */
  maxConcurrent?: number;
  /** How old a sample may be before a request takes a new one. */
  sampleMs?: number;
  /** A clock in milliseconds (tests). */
  clock?: () => number;
};

export type ShedReason = 'backlog' | 'pool' | 'in_flight' | 'concurrency';

export type Admission = {
  /** Resolves to the error to refuse the request with, or undefined to let it in. */
  check(): Promise<UnavailableError | undefined>;
  /** A request admitted by check() has been answered (or failed): it no longer counts as in progress. */
  done(): void;
  /** Requests refused so far, by reason. */
  readonly shed: Readonly<Record<ShedReason, number>>;
  /** Prometheus lines: refusals, and the figures they were decided on. */
  metricLines(label: string): string[];
};

type Sample = { at: number; backlog: number; head: number; inFlight: number };

const rateWindowMs = 5_000;

export const retryAfterBounds = { min: 1, max: 30 } as const;

/** Seconds until `backlog` events are gone at `perSecond`, within the bounds. */
export function drainSeconds(backlog: number, perSecond: number): number {
  if (!(perSecond > 0)) return retryAfterBounds.max;
  return Math.min(retryAfterBounds.max, Math.max(retryAfterBounds.min, Math.ceil(backlog / perSecond)));
}

export function admissionControl(db: Db, options: AdmissionOptions): Admission {
  const clock = options.clock ?? (() => performance.now());
  const sampleMs = options.sampleMs ?? 200;
  const shed: Record<ShedReason, number> = { backlog: 0, pool: 0, in_flight: 0, concurrency: 0 };
  let inProgress = 0;
  // The counts stop a little past their bounds: enough to tell over from under, and
  // the drain time, without counting a runaway backlog row by row every sample.
  const backlogCap = options.maxBacklog * 4 + 1;
  const inFlightCap = (options.inFlight?.max ?? 0) + 1;
  const sql =
    `SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox WHERE published_at IS NULL LIMIT $1) b)::int AS backlog,
            (SELECT coalesce(max(feed_position), 0) FROM outbox)::bigint AS head` +
    (options.inFlight === undefined ? '' : `, (SELECT n FROM (${options.inFlight.sql}) f)::int AS in_flight`);
  const params = options.inFlight === undefined ? [backlogCap] : [backlogCap, inFlightCap];

  let last: Sample | undefined;
  let failedAt = -Infinity;
  let sampling: Promise<Sample | undefined> | undefined;
  /** Events published per second, smoothed over the last samples (the feed head moves once per event). */
  let drainRate = 0;

  const takeSample = async (): Promise<Sample | undefined> => {
    try {
      const [row] = await db.query<{ backlog: number; head: number; in_flight?: number }>(sql, params);
      const sample = { at: clock(), backlog: row?.backlog ?? 0, head: row?.head ?? 0, inFlight: row?.in_flight ?? 0 };
      // Two samples far apart (nothing was written in between) say little about the rate now.
      if (last !== undefined && sample.at > last.at && sample.at - last.at <= rateWindowMs) {
        const rate = (Math.max(0, sample.head - last.head) * 1000) / (sample.at - last.at);
        drainRate = drainRate === 0 ? rate : drainRate * 0.5 + rate * 0.5;
      }
      last = sample;
      return sample;
    } catch {
      // The database cannot say: let the request in, and it meets the database's own
      // answer (503 too when it is out of reach). Asked again after a while only.
      last = undefined;
      failedAt = clock();
      return undefined;
    }
  };

  const current = (): Promise<Sample | undefined> | Sample | undefined => {
    const now = clock();
    if (last !== undefined && now - last.at < sampleMs) return last;
    if (last === undefined && now - failedAt < sampleMs) return undefined;
    sampling ??= takeSample().finally(() => (sampling = undefined));
    return sampling;
  };

  const refuse = (reason: ShedReason, message: string, seconds: number) => {
    shed[reason] += 1;
    return new UnavailableError(message, seconds);
  };

  const admitted = async (): Promise<UnavailableError | undefined> => {
    // The pool first: it is free to read, and a sample would queue behind the others.
    const pool = db.poolStats?.();
    if (pool !== undefined && pool.oldestWaitMs > options.maxPoolWaitMs)
      return refuse(
        'pool',
        `The database is overloaded: requests wait ${Math.round(pool.oldestWaitMs)} ms for a connection. ` +
          'Retry shortly.',
        retryAfterBounds.min,
      );
    const sample = await current();
    if (sample === undefined) return undefined;
    if (sample.backlog > options.maxBacklog)
      return refuse(
        'backlog',
        `Too many events wait to be published (${sample.backlog >= backlogCap ? 'over ' : ''}` +
          `${sample.backlog}); new orders are refused until they drain. Retry later.`,
        drainSeconds(sample.backlog, drainRate),
      );
    if (options.inFlight !== undefined && sample.inFlight > options.inFlight.max)
      return refuse(
        'in_flight',
        `Too much work is still in flight (over ${options.inFlight.max}); retry later.`,
        // Work that completes publishes its outcome: the events' rate bounds the work's.
        drainSeconds(sample.inFlight, drainRate),
      );
    return undefined;
  };

  return {
    shed,
    check: async () => {
      // Counted at once, so that requests arriving together cannot all pass the bound.
      if (options.maxConcurrent !== undefined && inProgress >= options.maxConcurrent)
        return refuse(
          'concurrency',
          `${inProgress} requests like this one are in progress; the service is saturated. Retry shortly.`,
          retryAfterBounds.min,
        );
      inProgress += 1;
      const refused = await admitted().catch((error: unknown) => {
        inProgress -= 1;
        throw error;
      });
      if (refused !== undefined) inProgress -= 1;
      return refused;
    },
    done: () => {
      inProgress = Math.max(0, inProgress - 1);
    },
    metricLines: (label) => {
      const pool = db.poolStats?.();
      return [
        '# HELP converge_admission_shed_total Requests refused at admission (503), by reason.',
        '# TYPE converge_admission_shed_total counter',
        ...Object.entries(shed).map(([reason, n]) => `converge_admission_shed_total{${label},reason="${reason}"} ${n}`),
        '# HELP converge_admission_in_progress Requests admitted and not yet answered.',
        '# TYPE converge_admission_in_progress gauge',
        `converge_admission_in_progress{${label}} ${inProgress}`,
        '# HELP converge_outbox_drain_rate Events published per second, as admission last measured it.',
        '# TYPE converge_outbox_drain_rate gauge',
        `converge_outbox_drain_rate{${label}} ${drainRate.toFixed(1)}`,
        ...(pool === undefined
          ? []
          : [
              '# HELP converge_db_pool_waiting Callers waiting for a database connection.',
              '# TYPE converge_db_pool_waiting gauge',
              `converge_db_pool_waiting{${label}} ${pool.waiting}`,
              '# HELP converge_db_pool_wait_seconds How long the longest waiting caller has waited.',
              '# TYPE converge_db_pool_wait_seconds gauge',
              `converge_db_pool_wait_seconds{${label}} ${(pool.oldestWaitMs / 1000).toFixed(3)}`,
            ]),
      ];
    },
  };
}

/**
 * Puts `admission` in front of one route: a refused request answers 503 + Retry-After
 * before its body is read, so nothing of it is written. Call before the route is added.
 */
export function admitBefore(app: HttpApp, admission: Admission, route: { method: string; url: string }): void {
  const admittedRequests = new WeakSet<object>();
  const guard = async (request: object) => {
    const refused = await admission.check();
    if (refused !== undefined) throw refused;
    admittedRequests.add(request);
  };
  // Answered, failed or abandoned by its client: it no longer counts as in progress.
  const finished = (request: object): Promise<void> => {
    if (admittedRequests.delete(request)) admission.done();
    return Promise.resolve();
  };
  app.addHook('onRoute', (options) => {
    const methods = Array.isArray(options.method) ? options.method : [options.method];
    if (options.url !== route.url || !methods.includes(route.method)) return;
    const existing = options.onRequest === undefined ? [] : [options.onRequest].flat();
    options.onRequest = [guard, ...existing];
    const responded = options.onResponse === undefined ? [] : [options.onResponse].flat();
    options.onResponse = [finished, ...responded];
    const aborted = options.onRequestAbort === undefined ? [] : [options.onRequestAbort].flat();
    options.onRequestAbort = [finished, ...aborted];
  });
}
