// The query service (CQRS read side): read models folded from every service's events,
// in a database of its own (see DESIGN.md).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  UnavailableError,
  memoryCache,
  watchForGaps,
  type Bus,
  type CatchUpWatch,
  type Db,
  type FeedSource,
  type ReadCache,
  type ServiceDefinition,
  type WatchTimings,
} from '@converge/platform';
import { projectBatch, queryHandler, querySources } from './consumers.ts';
import { currentLag, registerQueryRoutes, type LagProbe } from './http.ts';
import { createLagTracker } from './lag.ts';
import { readModels } from './read-models.ts';

// What the rest of the system may use of this service; nothing imports its other files.
export { queryConfig } from './config.ts';
export { querySources } from './consumers.ts';
export { httpFeed, type FeedSource, type WatchTimings } from '@converge/platform';
export type { SourceEvent } from './read-model.ts';
export { foldReadModels, readModels } from './read-models.ts';
export type { OrderSummary } from './projections/order-summary.ts';
export { allAvailability, type Availability } from './projections/product-availability.ts';
export { allUserOrders, type UserOrder } from './projections/user-orders.ts';

export type QueryOptions = {
  /** How long a read carrying a consistency token may wait for the write (503 after). */
  waitMs?: number;
  /** The feeds of the sources, for rebuilds and catch-ups (HTTP in a deployment, in-process in embedded mode). */
  feeds?: () => readonly FeedSource[];
  /** When the feeds are read for what the broker lost: a gap held too long, a periodic sweep. */
  watch?: WatchTimings;
  /** The read cache: Redis in a deployment, in-process by default. */
  cache?: ReadCache;
};

export function queryService(options: QueryOptions = {}): ServiceDefinition {
  const lag = createLagTracker();
  const cache = options.cache ?? memoryCache();
  const project = projectBatch(lag, cache);
  // The running instance's gap watch, for the operator's catch-up and the metrics.
  const live: { watch?: CatchUpWatch } = {};
  const feeds =
    options.feeds ??
    (() => {
      throw new UnavailableError('no feed sources configured');
    });
  // What waits for the read side: the queue, and early messages held for a predecessor.
  const probe = (db: Db, bus: Bus): LagProbe => ({
    lag,
    waiting: async () => {
      const [held] = await db.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM held_messages WHERE consumer = 'query'",
      );
      return Math.max(0, await bus.depth('query')) + (held?.n ?? 0);
    },
  });
  return {
    name: 'query',
    description: "Read models of orders, users and products, folded from every service's events.",
    migrations: path.join(path.dirname(fileURLToPath(import.meta.url)), 'migrations'),
    sources: querySources,
    handle: queryHandler(project),
    handleBatch: project,
    routes: (app, { db, bus, now }) =>
      registerQueryRoutes(app, db, {
        consumer: 'query',
        sources: querySources,
        waitMs: options.waitMs ?? 2_000,
        probe: probe(db, bus),
        now,
        feeds,
        cache,
        catchUp: () => {
          if (live.watch === undefined) throw new UnavailableError('the query service is not consuming');
          return live.watch.run('asked by an operator');
        },
      }),
    ...(options.feeds === undefined
      ? {}
      : {
          background: ({ db, log, consumer, now }) =>
            (live.watch = watchForGaps({ db, consumer, feeds, log, now, ...options.watch })),
        }),
    metrics:
      ({ db, bus, now }) =>
      async () => {
        const current = await Promise.all(
          readModels.map(async ({ name: model }) => ({ model, ...(await currentLag(probe(db, bus), model, now())) })),
        );
        return [
          ...lag.metricLines(),
          '# HELP converge_cache_reads_total Reads of cached read models, by outcome (a miss reads the database).',
          '# TYPE converge_cache_reads_total counter',
          `converge_cache_reads_total{cache="${cache.kind}",outcome="hit"} ${cache.stats.hits}`,
          `converge_cache_reads_total{cache="${cache.kind}",outcome="miss"} ${cache.stats.misses}`,
          '# HELP converge_cache_errors_total Cache operations that failed (the database answered instead).',
          '# TYPE converge_cache_errors_total counter',
          `converge_cache_errors_total{cache="${cache.kind}"} ${cache.stats.errors}`,
          '# HELP converge_cache_pending_invalidations Invalidations not ' +
            'yet delivered to the cache; their keys bypass it.',
          '# TYPE converge_cache_pending_invalidations gauge',
          `converge_cache_pending_invalidations{cache="${cache.kind}"} ${cache.stats.pendingInvalidations}`,
          '# HELP converge_projection_catchups_total Catch-ups from the feeds (start-up, a gap noticed, an operator).',
          '# TYPE converge_projection_catchups_total counter',
          `converge_projection_catchups_total ${live.watch?.stats.runs ?? 0}`,
          '# HELP converge_projection_recovered_total Events applied by catch-ups: what the broker had lost.',
          '# TYPE converge_projection_recovered_total counter',
          `converge_projection_recovered_total ${live.watch?.stats.recovered ?? 0}`,
          '# HELP converge_projection_lag_events Events waiting for the read models (queue and hold).',
          '# TYPE converge_projection_lag_events gauge',
          ...current.map((c) => `converge_projection_lag_events{model="${c.model}"} ${c.events}`),
          '# HELP converge_projection_lag_seconds While events wait, how long ago the ' +
            'last applied event was committed (or since the service started).',
          '# TYPE converge_projection_lag_seconds gauge',
          ...current.map((c) => `converge_projection_lag_seconds{model="${c.model}"} ${c.seconds.toFixed(3)}`),
        ];
      },
  };
}
