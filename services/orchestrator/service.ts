// The orchestrator (SAGA_MODE=orchestration): drives each order through the
// order-fulfilment saga by command, with persisted sagas, deadlines and compensations
// (see DESIGN.md). In choreography mode it runs idle: it consumes nothing and its API
// lists no sagas, so a deployment can switch modes without changing its topology.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { validateSaga, type SagaMode, type ServiceDefinition } from '@converge/platform';
import { orchestratorSources, sagaBatchHandler, sagaHandler } from './consumers.ts';
import { startDeadlineTimer } from './deadlines.ts';
import { defaultTimings, irreversibleSteps, orderFulfilment, type FulfilmentTimings } from './fulfilment.ts';
import { registerSagaRoutes } from './http.ts';
import { sagaMetrics } from './metrics.ts';

// What the rest of the system may use of this service; nothing imports its other files.
export { orchestratorConfig } from './config.ts';
export { orchestratorSources } from './consumers.ts';
export { defaultTimings } from './fulfilment.ts';

export type OrchestratorOptions = {
  mode: SagaMode;
  timings?: FulfilmentTimings;
  /** A saga not final and unchanged for this long counts as stuck (metric, alert). */
  stuckAfterMs?: number;
  /** How often the deadline timer looks for sagas whose step timed out. */
  tickMs?: number;
};

export function orchestratorService(options: OrchestratorOptions): ServiceDefinition {
  const definition = orderFulfilment(options.timings ?? defaultTimings);
  validateSaga(definition, irreversibleSteps);
  const stuckAfterMs = options.stuckAfterMs ?? 60_000;
  const active = options.mode === 'orchestration';
  return {
    name: 'orchestrator',
    description: 'Drives orders through the order-fulfilment saga by command (SAGA_MODE=orchestration).',
    migrations: path.join(path.dirname(fileURLToPath(import.meta.url)), 'migrations'),
    sources: active ? orchestratorSources : [],
    handle: sagaHandler(definition),
    handleBatch: sagaBatchHandler(definition),
    routes: (app, { db, now }) => registerSagaRoutes(app, db, definition, { mode: options.mode, now, stuckAfterMs }),
    ...(active
      ? {
          background: ({ db, log, now }) =>
            startDeadlineTimer({
              db,
              definition,
              log,
              now,
              ...(options.tickMs === undefined ? {} : { intervalMs: options.tickMs }),
            }),
        }
      : {}),
    metrics: ({ db, now }) => sagaMetrics(db, () => new Date(now().getTime() - stuckAfterMs)),
  };
}
