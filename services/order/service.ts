// The order service: orders as event streams (see DESIGN.md). Placement is where load
// enters the system, so it is where load is shed: POST /orders is refused with 503 +
// Retry-After, before anything is written, while the outbox, the database pool or the
// orders in flight are past their bounds (admission.ts).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  admissionControl,
  admitBefore,
  setting,
  type Admission,
  type SagaMode,
  type ServiceDefinition,
} from '@converge/platform';
import { orderBatchHandler, orderSources } from './consumers.ts';
import { registerOrderRoutes } from './http.ts';
import type { PlacementOptions } from './place.ts';

// What the rest of the system may use of this service; nothing imports its other files.
export { orderSources } from './consumers.ts';
export { requestHash } from './place.ts';
export { executeOrderCommand, waitUntilPriced } from './store.ts';

export type OrderAdmission = { maxBacklog: number; maxPoolWaitMs: number; maxPending: number; maxConcurrent: number };

/**
 * Far above what normal load and the test suites hold. PENDING orders are the work the
 * saga still has to do: 2,000 is about 10 s of it at what this 2-core machine sustains,
 * so an accepted order completes within seconds even under overload; a larger
 * deployment raises ADMISSION_MAX_PENDING with its capacity.
 */
export const orderAdmissionDefaults: OrderAdmission = {
  maxBacklog: 5000,
  maxPoolWaitMs: 1000,
  maxPending: 2_000,
  maxConcurrent: 512,
};

/** The order service's own settings. Read with the settings every service shares. */
export const orderConfig = {
  /** Events waiting in the outbox above which new orders are refused. */
  ADMISSION_MAX_BACKLOG: setting.int(orderAdmissionDefaults.maxBacklog, 1),
  /** How long a request may wait for a database connection before new orders are refused. */
  ADMISSION_MAX_POOL_WAIT_MS: setting.int(orderAdmissionDefaults.maxPoolWaitMs, 1),
  /** Orders still PENDING (the saga's consumers behind) above which new orders are refused. */
  ADMISSION_MAX_PENDING: setting.int(orderAdmissionDefaults.maxPending, 1),
  /** Placements in progress (admitted, not yet answered) above which more are refused at once. */
  ADMISSION_MAX_CONCURRENT: setting.int(orderAdmissionDefaults.maxConcurrent, 1),
  /**
   * How long a placement may wait for others to share its transaction (place.ts); those
   * that arrive while the placing transactions are busy share the next one anyway.
   */
  PLACEMENT_LINGER_MS: setting.int(0, 0, 1_000),
};

// Counted up to the bound only ($2): the partial index orders_pending holds exactly these.
const pendingOrders = "SELECT count(*) AS n FROM (SELECT 1 FROM orders WHERE status = 'PENDING' LIMIT $2) p";

export function orderService(
  mode: SagaMode,
  options: { admission?: Partial<OrderAdmission>; placement?: PlacementOptions } = {},
): ServiceDefinition {
  const bounds = { ...orderAdmissionDefaults, ...options.admission };
  // One per start of the service: the routes make it, the metrics read it.
  let admission: Admission | undefined;
  return {
    name: 'order',
    description: 'Accepts orders and follows each to COMPLETED, FAILED or CANCELLED.',
    migrations: path.join(path.dirname(fileURLToPath(import.meta.url)), 'migrations'),
    sources: orderSources(mode),
    handleBatch: orderBatchHandler(mode),
    routes: (app, { db, now }) => {
      admission = admissionControl(db, {
        maxBacklog: bounds.maxBacklog,
        maxPoolWaitMs: bounds.maxPoolWaitMs,
        inFlight: { sql: pendingOrders, max: bounds.maxPending },
        maxConcurrent: bounds.maxConcurrent,
      });
      admitBefore(app, admission, { method: 'POST', url: '/orders' });
      registerOrderRoutes(app, db, now, options.placement);
    },
    metrics: () => () => Promise.resolve(admission?.metricLines('service="order"') ?? []),
  };
}
