// Who is calling, at the public entry point. A request carries a bearer token (verified
// here against the deployment's key set and forwarded as it came: every service
// verifies it again) or an API key (`X-API-Key`), which the gateway exchanges for a
// short-lived token of the identity the key stands for, signed with the deployment's
// key; the services behind only ever see tokens, never keys. Keys are configured as
// SHA-256 hashes, so the gateway's settings do not hold them. A request with neither goes
// on without credentials and the service answers it (its public routes) or refuses it
// (401). Demo sign-in (`POST /auth/demo`) hands the dashboard a token of one of the demo
// identities; it exists only where demo identities are configured, never in production.
import type { FastifyRequest } from 'fastify';
import {
  UnauthenticatedError,
  bearerToken,
  hashApiKey,
  roles,
  tokenCache,
  userIdentity,
  type Identity,
  type Role,
  type Spec,
  type TokenIssuer,
  type Verifier,
} from '@converge/platform';

export type GatewayAuth = {
  verify: Verifier;
  /** The deployment's signing key: needed to exchange API keys and for demo sign-in. */
  issuer?: TokenIssuer;
  /** SHA-256 (hex) of each API key → the identity it stands for. */
  apiKeys?: ReadonlyMap<string, Identity>;
  /** Identities the dashboard may sign in as (demo only). */
  demo?: Readonly<Record<string, Identity>>;
};

/** Demo identities: four customers, a merchant and an operator. Their API keys are `demo-<name>`. */
export const demoIdentities = {
  alice: userIdentity('alice'),
  bob: userIdentity('bob'),
  carol: userIdentity('carol'),
  dave: userIdentity('dave'),
  merchant: { subject: 'merchant', roles: ['merchant'] },
  operator: { subject: 'operator', roles: ['operator'] },
} as const satisfies Record<string, Identity>;

export type DemoName = keyof typeof demoIdentities;
export const demoApiKey = (name: DemoName): string => `demo-${name}`;

/** The demo API keys, as the gateway keeps keys: by their hash. */
export const demoApiKeys = (): ReadonlyMap<string, Identity> =>
  new Map(
    (Object.keys(demoIdentities) as DemoName[]).map((name) => [hashApiKey(demoApiKey(name)), demoIdentities[name]]),
  );

export type Caller =
  | { kind: 'anonymous' }
  | { kind: 'authenticated'; identity: Identity; authorization: string }
  | { kind: 'refused'; detail: string };

/** A request's caller: who it is and the Authorization header to forward, or why it is refused. */
export function authenticator(auth: GatewayAuth): (request: FastifyRequest) => Promise<Caller> {
  const exchange = auth.issuer === undefined ? undefined : tokenCache(auth.issuer, 300);
  return async (request) => {
    const key = request.headers['x-api-key'];
    if (typeof key === 'string') {
      const identity = auth.apiKeys?.get(hashApiKey(key));
      if (identity === undefined || exchange === undefined) return { kind: 'refused', detail: 'unknown API key' };
      return { kind: 'authenticated', identity, authorization: `Bearer ${await exchange(identity)}` };
    }
    if (request.headers.authorization === undefined) return { kind: 'anonymous' };
    const token = bearerToken(request);
    if (token === undefined) return { kind: 'refused', detail: 'Authorization must be "Bearer <jwt>"' };
    try {
      return { kind: 'authenticated', identity: await auth.verify(token), authorization: `Bearer ${token}` };
    } catch (error) {
      if (error instanceof UnauthenticatedError) return { kind: 'refused', detail: error.message };
      throw error;
    }
  };
}

const isRole = (value: unknown): value is Role =>
  typeof value === 'string' && (roles as readonly string[]).includes(value);

/**
 * GATEWAY_API_KEYS: a JSON array of `{"sha256": "<hex of the key>", "subject": "...", "roles": [...]}`.
 * Every entry is checked; a bad one fails start-up with its index.
 */
export const apiKeysSetting: Spec<ReadonlyMap<string, Identity>> = {
  parse: (raw, key) => {
    const keys = new Map<string, Identity>();
    if (raw === undefined || raw.trim() === '') return keys;
    let entries: unknown;
    try {
      entries = JSON.parse(raw);
    } catch {
      throw new Error(`${key} is not JSON`);
    }
    if (!Array.isArray(entries)) throw new Error(`${key} must be a JSON array`);
    entries.forEach((entry: unknown, index) => {
      const { sha256, subject, roles: claimed } = (entry ?? {}) as Record<string, unknown>;
      if (typeof sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(sha256))
        throw new Error(`${key}[${index}].sha256 must be 64 lowercase hex digits`);
      if (typeof subject !== 'string' || subject === '' || subject.length > 200)
        throw new Error(`${key}[${index}].subject must be a non-empty string`);
      if (!Array.isArray(claimed) || claimed.length === 0 || !claimed.every(isRole))
        throw new Error(`${key}[${index}].roles must list roles among ${roles.join(', ')}`);
      keys.set(sha256, { subject, roles: claimed });
    });
    return keys;
  },
};
