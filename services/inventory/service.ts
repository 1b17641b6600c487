// The inventory service: products, stock and reservations (see DESIGN.md).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { SagaMode, ServiceDefinition } from '@converge/platform';
import { inventoryBatchHandler, inventorySources } from './consumers.ts';
import { registerInventoryRoutes } from './http.ts';

// What the rest of the system may use of this service; nothing imports its other files.
export { inventorySources } from './consumers.ts';

export function inventoryService(mode: SagaMode): ServiceDefinition {
  return {
    name: 'inventory',
    description: 'Products, stock and reservations. Reserves every line of an order or none.',
    migrations: path.join(path.dirname(fileURLToPath(import.meta.url)), 'migrations'),
    sources: inventorySources(mode),
    handleBatch: inventoryBatchHandler(mode),
    routes: (app, { db, now }) => registerInventoryRoutes(app, db, now),
  };
}
