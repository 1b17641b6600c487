// The order service: orders as event streams (see DESIGN.md).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ServiceDefinition } from '@converge/platform';
import { handleOrderMessage, orderSources } from './consumers.ts';
import { registerOrderRoutes } from './http.ts';

export const orderService: ServiceDefinition = {
  name: 'order',
  description: 'Accepts orders and follows each to COMPLETED, FAILED or CANCELLED.',
  migrations: path.join(path.dirname(fileURLToPath(import.meta.url)), 'migrations'),
  sources: orderSources,
  handle: handleOrderMessage,
  routes: (app, { db, now }) => registerOrderRoutes(app, db, now),
};
