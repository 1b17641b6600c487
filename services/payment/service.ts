// The payment service: payments and refunds through a PaymentProvider (see DESIGN.md).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { migrate, type Db, type SagaMode, type ServiceDefinition } from '@converge/platform';
import { paymentBatchHandler, paymentSources } from './consumers.ts';
import { registerPaymentRoutes } from './http.ts';
import { simulatedProvider, type SimulatedProvider } from './provider.ts';

// What the rest of the system may use of this service; nothing imports its other files.
export { paymentConfig } from './config.ts';
export { paymentSources } from './consumers.ts';
export { paymentIdFor } from './payment.ts';
export type { SimulatedProvider } from './provider.ts';

const here = path.dirname(fileURLToPath(import.meta.url));

/** Opens the simulated provider on its own database. */
export async function openSimulatedProvider(db: Db): Promise<SimulatedProvider> {
  await migrate(db, { provider: path.join(here, 'provider-migrations') });
  return simulatedProvider(db);
}

export function paymentService(
  provider: SimulatedProvider,
  options: { mode: SagaMode; allowFaults?: boolean },
): ServiceDefinition {
  return {
    name: 'payment',
    description: 'Charges and refunds orders through the payment provider.',
    migrations: path.join(here, 'migrations'),
    sources: paymentSources(options.mode),
    handleBatch: paymentBatchHandler(provider, options.mode),
    routes: (app, { db }) => registerPaymentRoutes(app, db, provider, options.allowFaults ?? false),
  };
}
