// The inventory service: products, stock and reservations (see DESIGN.md).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ServiceDefinition } from '@converge/platform';
import { handleInventoryMessage, inventorySources } from './consumers.ts';
import { registerInventoryRoutes } from './http.ts';

export const inventoryService: ServiceDefinition = {
  name: 'inventory',
  description: 'Products, stock and reservations. Reserves every line of an order or none.',
  migrations: path.join(path.dirname(fileURLToPath(import.meta.url)), 'migrations'),
  sources: inventorySources,
  handle: handleInventoryMessage,
  routes: (app, { db, now }) => registerInventoryRoutes(app, db, now),
};
