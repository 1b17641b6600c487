// The query service (CQRS read side): read models folded from every service's events,
// in a database of its own (see DESIGN.md).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { UnavailableError, type Bus, type Db, type ServiceDefinition } from '@converge/platform';
import { queryHandler, querySources } from './consumers.ts';
import { currentLag, registerQueryRoutes, type LagProbe } from './http.ts';
import type { FeedSource } from './feeds.ts';
import { createLagTracker, readModels } from './lag.ts';

export type QueryOptions = {
  /** How long a read carrying a consistency token may wait for the write (503 after). */
  waitMs?: number;
  /** The feeds of the sources, for rebuilds (HTTP in a deployment, in-process in embedded mode). */
  feeds?: () => readonly FeedSource[];
};

export function queryService(options: QueryOptions = {}): ServiceDefinition {
  const lag = createLagTracker();
  // What waits for the read side: the queue, and early messages held for a predecessor.
  const probe = (db: Db, bus: Bus): LagProbe => ({
    lag,
    waiting: async () => {
      const [held] = await db.query<{ n: number }>("SELECT count(*)::int AS n FROM held_messages WHERE consumer = 'query'");
      return Math.max(0, await bus.depth('query')) + (held?.n ?? 0);
    },
  });
  return {
    name: 'query',
    description: 'Read models of orders, users and products, folded from every service\'s events.',
    migrations: path.join(path.dirname(fileURLToPath(import.meta.url)), 'migrations'),
    sources: querySources,
    handle: queryHandler(lag),
    routes: (app, { db, bus, now }) =>
      registerQueryRoutes(app, db, {
        consumer: 'query', sources: querySources, waitMs: options.waitMs ?? 2_000, probe: probe(db, bus), now,
        feeds: options.feeds ?? (() => { throw new UnavailableError('no feed sources configured for rebuilds'); }),
      }),
    metrics: ({ db, bus, now }) => async () => {
      const current = await Promise.all(readModels.map(async (model) => ({ model, ...(await currentLag(probe(db, bus), model, now())) })));
      return [
        ...lag.metricLines(),
        '# HELP converge_projection_lag_events Events waiting for the read models (queue and hold).',
        '# TYPE converge_projection_lag_events gauge',
        ...current.map((c) => `converge_projection_lag_events{model="${c.model}"} ${c.events}`),
        '# HELP converge_projection_lag_seconds How long ago the last applied event was committed, while events wait.',
        '# TYPE converge_projection_lag_seconds gauge',
        ...current.map((c) => `converge_projection_lag_seconds{model="${c.model}"} ${c.seconds.toFixed(3)}`),
      ];
    },
  };
}
