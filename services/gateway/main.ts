// The gateway process: config → the app over the services' base URLs → listen. The
// embedded mode (scripts/start.ts) calls startGateway with the ports it opened; run
// alone (`tsx services/gateway/main.ts`) it reads where the services are from the
// environment.
import { pathToFileURL } from 'node:url';
import { createLogger, loadConfig, type HttpApp, type Logger } from '@converge/platform';
import { gatewayConfig } from './config.ts';
import { createGateway, type Upstreams } from './http.ts';

export { gatewayConfig } from './config.ts';
export { createGateway, type Overview, type Upstreams } from './http.ts';

export type RunningGateway = { app: HttpApp; url: string; stop(): Promise<void> };

export async function startGateway(options: {
  log: Logger;
  upstreams: Upstreams;
  port: number;
  host?: string;
}): Promise<RunningGateway> {
  const app = await createGateway({ log: options.log, upstreams: options.upstreams });
  const url = await app.listen({ port: options.port, host: options.host ?? '127.0.0.1' });
  return { app, url, stop: () => app.close() };
}

async function main(): Promise<void> {
  const config = loadConfig(gatewayConfig);
  const log = createLogger('gateway', config.LOG_LEVEL);
  const gateway = await startGateway({
    log,
    host: config.HOST,
    port: config.GATEWAY_PORT,
    upstreams: {
      order: config.ORDER_URL,
      inventory: config.INVENTORY_URL,
      payment: config.PAYMENT_URL,
      orchestrator: config.ORCHESTRATOR_URL,
      query: config.QUERY_URL,
    },
  });
  log.info('gateway listening', { url: gateway.url });
  const stop = () => {
    gateway.stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((error: unknown) => {
    console.error(error instanceof Error ? error.message : error);
    process.exit(1);
  });
}
