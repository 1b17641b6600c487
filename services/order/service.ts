// The order service: orders as event streams (see DESIGN.md).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { SagaMode, ServiceDefinition } from '@converge/platform';
import { orderBatchHandler, orderSources } from './consumers.ts';
import { registerOrderRoutes } from './http.ts';

// What the rest of the system may use of this service; nothing imports its other files.
export { orderSources } from './consumers.ts';
export { requestHash } from './place.ts';
export { executeOrderCommand, waitUntilPriced } from './store.ts';

export function orderService(mode: SagaMode): ServiceDefinition {
  return {
    name: 'order',
    description: 'Accepts orders and follows each to COMPLETED, FAILED or CANCELLED.',
    migrations: path.join(path.dirname(fileURLToPath(import.meta.url)), 'migrations'),
    sources: orderSources(mode),
    handleBatch: orderBatchHandler(mode),
    routes: (app, { db, now }) => registerOrderRoutes(app, db, now),
  };
}
