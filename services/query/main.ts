// The query service (CQRS read side): read models folded from every service's events,
// in a database of its own (see DESIGN.md).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ServiceDefinition } from '@converge/platform';
import { handleQueryMessage, querySources } from './consumers.ts';
import { registerQueryRoutes } from './http.ts';

export type QueryOptions = {
  /** How long a read carrying a consistency token may wait for the write (503 after). */
  waitMs?: number;
};

export function queryService(options: QueryOptions = {}): ServiceDefinition {
  return {
    name: 'query',
    description: 'Read models of orders, users and products, folded from every service\'s events.',
    migrations: path.join(path.dirname(fileURLToPath(import.meta.url)), 'migrations'),
    sources: querySources,
    handle: handleQueryMessage,
    routes: (app, { db }) => registerQueryRoutes(app, db, { consumer: 'query', sources: querySources, waitMs: options.waitMs ?? 2_000 }),
  };
}
