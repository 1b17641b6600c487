// The gateway's settings: where it listens, where the instances of the services it routes
// to are (a comma-separated list of base URLs per service), how often it asks them whether
// they are ready, and its rate limits. It runs alone (main.ts) or inside the embedded
// system, which passes them directly; createGateway falls back on the same defaults.
import {
  defaultIssuer,
  isProduction,
  keySetSetting,
  setting,
  testOnly,
  type SigningKey,
  type Spec,
  parseSigningKey,
} from '@converge/platform';
import { apiKeysSetting } from './auth.ts';
import { parseBases } from './upstreams.ts';

export const gatewayDefaults = {
  // Far above what a dashboard (about ten requests a second) or the tests ask for.
  perAddress: { perSecond: 1_000, burst: 2_000 },
  perIdentity: { perSecond: 200, burst: 400 },
  rateLimitKeys: 100_000,
  healthIntervalMs: 2_000,
  healthTimeoutMs: 1_000,
} as const;

const bases = (fallback: string): Spec<string[]> => ({
  parse: (raw, key) => {
    try {
      return parseBases(raw === undefined || raw === '' ? fallback : raw);
    } catch (error) {
      throw new Error(`${key}: ${(error as Error).message}`, { cause: error });
    }
  },
});

const signingKey: Spec<SigningKey | undefined> = {
  parse: (raw, key) => {
    if (raw === undefined || raw === '') return undefined;
    try {
      return parseSigningKey(raw);
    } catch (error) {
      throw new Error(`${key}: ${(error as Error).message}`, { cause: error });
    }
  },
};

export const gatewayConfig = {
  /** The token issuer's public keys (JWK set JSON, or its URL). */
  AUTH_JWKS: keySetSetting,
  AUTH_ISSUER: setting.string(defaultIssuer.issuer),
  AUTH_AUDIENCE: setting.string(defaultIssuer.audience),
  /** The deployment's private key: to exchange API keys for tokens and for demo sign-in. */
  AUTH_SIGNING_KEY: signingKey,
  /** Without a signing key: the gateway's own token (role service), for the services' /status. */
  AUTH_SERVICE_TOKEN: setting.optional(),
  GATEWAY_API_KEYS: apiKeysSetting,
  /** The demo identities' API keys and POST /auth/demo (the dashboard's sign-in); refused in production. */
  GATEWAY_DEMO_IDENTITIES: testOnly(setting.bool(false), isProduction(), false),
  HOST: setting.string('127.0.0.1'),
  GATEWAY_PORT: setting.int(3000, 0, 65_535),
  ORDER_URL: bases('http://127.0.0.1:3001'),
  INVENTORY_URL: bases('http://127.0.0.1:3002'),
  PAYMENT_URL: bases('http://127.0.0.1:3003'),
  ORCHESTRATOR_URL: bases('http://127.0.0.1:3004'),
  QUERY_URL: bases('http://127.0.0.1:3005'),
  GATEWAY_HEALTH_INTERVAL_MS: setting.int(gatewayDefaults.healthIntervalMs, 100, 600_000),
  GATEWAY_HEALTH_TIMEOUT_MS: setting.int(gatewayDefaults.healthTimeoutMs, 10, 60_000),
  // Requests a second and burst, per client address and per authenticated identity; a rate of 0 is no limit.
  GATEWAY_RATE_PER_ADDRESS: setting.int(gatewayDefaults.perAddress.perSecond, 0),
  GATEWAY_BURST_PER_ADDRESS: setting.int(gatewayDefaults.perAddress.burst, 1),
  GATEWAY_RATE_PER_IDENTITY: setting.int(gatewayDefaults.perIdentity.perSecond, 0),
  GATEWAY_BURST_PER_IDENTITY: setting.int(gatewayDefaults.perIdentity.burst, 1),
  GATEWAY_RATE_LIMIT_KEYS: setting.int(gatewayDefaults.rateLimitKeys, 1),
  LOG_LEVEL: setting.oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], 'info'),
};
