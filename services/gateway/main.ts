// The gateway process: config → the app over the services' instances → listen. The
// embedded mode (scripts/start.ts) calls startGateway with the ports it opened; run
// alone (`tsx services/gateway/main.ts`) it reads where the services are from the
// environment.
import { pathToFileURL } from 'node:url';
import { createLogger, loadConfig, tokenIssuer, tokenVerifier, type HttpApp } from '@converge/platform';
import { demoApiKeys, demoIdentities, type GatewayAuth } from './auth.ts';
import { gatewayConfig } from './config.ts';
import { createGateway, type GatewayOptions } from './http.ts';

export { gatewayConfig } from './config.ts';
export { demoApiKey, demoApiKeys, demoIdentities, type DemoName, type GatewayAuth } from './auth.ts';
export { createGateway, type GatewayOptions, type Overview, type Upstreams } from './http.ts';

export type RunningGateway = { app: HttpApp; url: string; stop(): Promise<void> };

export async function startGateway({
  port,
  host = '127.0.0.1',
  ...options
}: GatewayOptions & { port: number; host?: string }): Promise<RunningGateway> {
  const app = await createGateway(options);
  const url = await app.listen({ port, host });
  return { app, url, stop: () => app.close() };
}

/** A rate of 0 is no limit. */
const limit = (perSecond: number, burst: number) => (perSecond === 0 ? false : { perSecond, burst });

async function main(): Promise<void> {
  const config = loadConfig(gatewayConfig);
  const log = createLogger('gateway', config.LOG_LEVEL);
  const names = { issuer: config.AUTH_ISSUER, audience: config.AUTH_AUDIENCE };
  const issuer = config.AUTH_SIGNING_KEY === undefined ? undefined : await tokenIssuer(config.AUTH_SIGNING_KEY, names);
  const demo = config.GATEWAY_DEMO_IDENTITIES;
  const auth: GatewayAuth = {
    verify: tokenVerifier({ keys: config.AUTH_JWKS, ...names }),
    ...(issuer === undefined ? {} : { issuer }),
    apiKeys: new Map([...(demo ? demoApiKeys() : []), ...config.GATEWAY_API_KEYS]),
    ...(demo ? { demo: demoIdentities } : {}),
  };
  const serviceToken = config.AUTH_SERVICE_TOKEN;
  const gateway = await startGateway({
    log,
    auth,
    ...(serviceToken === undefined ? {} : { serviceToken: () => Promise.resolve(serviceToken) }),
    host: config.HOST,
    port: config.GATEWAY_PORT,
    upstreams: {
      order: config.ORDER_URL,
      inventory: config.INVENTORY_URL,
      payment: config.PAYMENT_URL,
      orchestrator: config.ORCHESTRATOR_URL,
      query: config.QUERY_URL,
    },
    health: { intervalMs: config.GATEWAY_HEALTH_INTERVAL_MS, timeoutMs: config.GATEWAY_HEALTH_TIMEOUT_MS },
    rateLimits: {
      perAddress: limit(config.GATEWAY_RATE_PER_ADDRESS, config.GATEWAY_BURST_PER_ADDRESS),
      perIdentity: limit(config.GATEWAY_RATE_PER_IDENTITY, config.GATEWAY_BURST_PER_IDENTITY),
      maxKeys: config.GATEWAY_RATE_LIMIT_KEYS,
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
