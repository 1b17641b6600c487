// The order service: orders as event streams (see DESIGN.md).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { SagaMode, ServiceDefinition } from '@converge/platform';
import { orderBatchHandler, orderSources } from './consumers.ts';
import { registerOrderRoutes } from './http.ts';

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
