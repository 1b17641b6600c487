// Who is calling, and may they. Every request but health, readiness and the API
// document carries a bearer token: a JWT signed by the deployment's issuer and verified
// here against its key set. The gateway checks it, and so does every service, so a
// caller that bypasses the gateway gets nothing more. Each route says who may call it
// (`config.access`: public, or the roles); a route without a rule cannot be registered,
// so a new route is closed until someone decides. Whether an object belongs to the
// caller is the handler's question (`actsFor`): another user's object answers 404, as
// one that does not exist would, so its existence is not revealed.
import type { FastifyReply, FastifyRequest } from 'fastify';
import { createLocalJWKSet, createRemoteJWKSet, jwtVerify, type JSONWebKeySet, type JWTPayload } from 'jose';
import type { Spec } from './config.ts';
import type { HttpApp } from './http.ts';

export const roles = ['customer', 'merchant', 'operator', 'service'] as const;
export type Role = (typeof roles)[number];

/** The authenticated caller: a user (customer), a merchant, an operator, or another service. */
export type Identity = { readonly subject: string; readonly roles: readonly Role[] };

/** Who may call a route: anyone, or a caller holding one of the roles. */
export type Access = 'public' | { readonly roles: readonly Role[] };

declare module 'fastify' {
  interface FastifyRequest {
    identity: Identity | undefined;
  }
  interface FastifyContextConfig {
    access?: Access;
  }
}

export const anyone: Access = 'public';
export const allow = (...allowed: Role[]): Access => ({ roles: allowed });
/** Any authenticated caller. */
export const signedIn: Access = allow(...roles);

export class UnauthenticatedError extends Error {
  override readonly name = 'UnauthenticatedError';
}

export type Verifier = (token: string) => Promise<Identity>;

export type VerifierOptions = {
  /** The issuer's public keys, or where to fetch them (a JWKS URL, refreshed by jose). */
  keys: JSONWebKeySet | URL;
  issuer: string;
  audience: string;
  /** Verified tokens kept, so that a caller's next request costs a map lookup. */
  cacheSize?: number;
};

const isRole = (value: unknown): value is Role =>
  typeof value === 'string' && (roles as readonly string[]).includes(value);
// eslint-disable-next-line no-control-regex
const controlCharacters = /[\u0000-\u001f\u007f]/;

function identityOf(payload: JWTPayload): Identity {
  const subject = payload.sub;
  if (subject === undefined || subject.length === 0 || subject.length > 200 || controlCharacters.test(subject))
    throw new UnauthenticatedError('the token names no valid subject');
  const claimed = (payload as { roles?: unknown }).roles;
  return { subject, roles: Array.isArray(claimed) ? claimed.filter(isRole) : [] };
}

/** Verifies tokens against the issuer's key set; a token verified once is remembered until it expires. */
export function tokenVerifier({ keys, issuer, audience, cacheSize = 10_000 }: VerifierOptions): Verifier {
  const keySet = keys instanceof URL ? createRemoteJWKSet(keys) : createLocalJWKSet(keys);
  const verified = new Map<string, { identity: Identity; expiresAt: number }>();
  return async (token) => {
    const known = verified.get(token);
    if (known !== undefined && known.expiresAt > Date.now()) return known.identity;
    if (known !== undefined) verified.delete(token);
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, keySet, {
        issuer,
        audience,
        algorithms: ['EdDSA', 'ES256', 'RS256'],
        requiredClaims: ['sub', 'exp'],
      }));
    } catch (error) {
      throw new UnauthenticatedError(`the token is not accepted: ${(error as Error).message}`);
    }
    const identity = identityOf(payload);
    if (verified.size >= cacheSize) verified.delete(verified.keys().next().value as string);
    verified.set(token, { identity, expiresAt: (payload.exp ?? 0) * 1000 });
    return identity;
  };
}

/**
 * The issuer's key set as configured (AUTH_JWKS): the JSON of a JWK set, or the https URL
 * the identity provider serves it at.
 */
export const keySetSetting: Spec<JSONWebKeySet | URL> = {
  parse: (raw, key) => {
    if (raw === undefined || raw.trim() === '')
      throw new Error(`${key} is required: the JSON of the token issuer's key set, or its URL`);
    if (/^https?:\/\//.test(raw)) return new URL(raw);
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw);
    } catch {
      throw new Error(`${key} is neither a URL nor JSON`);
    }
    const keys = (parsed as { keys?: unknown }).keys;
    if (!Array.isArray(keys) || keys.length === 0 || keys.some((k) => typeof k !== 'object' || k === null))
      throw new Error(`${key} must be a JWK set: {"keys": [...]} with at least one key`);
    return parsed as JSONWebKeySet;
  },
};

/** The bearer token of a request, if it has one. */
export function bearerToken(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization;
  if (header === undefined) return undefined;
  const match = /^Bearer +([A-Za-z0-9._~+/-]+=*)$/i.exec(header);
  return match?.[1];
}

/** Operators and other services act for every user. */
export const actsForAll = (identity: Identity): boolean =>
  identity.roles.includes('operator') || identity.roles.includes('service');

/** Whether the caller may see or act on what belongs to `userId`: their own, or anyone's for operators. */
export function actsFor(identity: Identity, userId: string): boolean {
  return actsForAll(identity) || (identity.roles.includes('customer') && identity.subject === userId);
}

/** The caller of a route that requires one (the access hook has verified it). */
export function callerOf(request: FastifyRequest): Identity {
  if (request.identity === undefined) throw new Error(`${request.method} ${request.url} has no verified caller`);
  return request.identity;
}

function refuse(reply: FastifyReply, status: 401 | 403, detail: string, challenge?: string) {
  if (challenge !== undefined) void reply.header('www-authenticate', challenge);
  const title = status === 401 ? 'Unauthenticated' : 'Forbidden';
  return reply
    .code(status)
    .type('application/problem+json')
    .send({ type: `https://converge.dev/problems/${title.toLowerCase()}`, title, status, detail });
}

/** Routes the HTTP edge registers itself, before any rule can be given. */
const builtIn = new Set(['/healthz', '/readyz', '/openapi.json']);

export type RouteRule = { method: string; url: string; access: Access };

/**
 * Installs identities on an app: each route registered from now on must say who may call
 * it, and each request to a closed route must carry a valid token of an allowed role
 * (401 without a valid one, 403 with the wrong role). Returns the rules as registered.
 */
export function requireIdentities(app: HttpApp, verify: Verifier): RouteRule[] {
  const rules: RouteRule[] = [];
  app.decorateRequest('identity', undefined);
  app.addHook('onRoute', (route) => {
    const access = route.config?.access;
    const methods = Array.isArray(route.method) ? route.method : [route.method];
    if (access === undefined) throw new Error(`${methods.join(',')} ${route.url} has no access rule`);
    for (const method of methods) if (method !== 'HEAD') rules.push({ method, url: route.url, access });
  });
  app.addHook('onRequest', async (request, reply) => {
    const access = request.routeOptions.config.access;
    if (access === 'public') return;
    if (access === undefined) {
      // Not found, or one of the edge's own routes: neither needs a caller.
      if (request.is404 || builtIn.has(request.routeOptions.url ?? '')) return;
      return refuse(reply, 403, 'this route has no access rule');
    }
    const token = bearerToken(request);
    if (token === undefined)
      return refuse(reply, 401, 'this needs a bearer token (Authorization: Bearer <jwt>)', 'Bearer realm="converge"');
    try {
      request.identity = await verify(token);
    } catch (error) {
      if (!(error instanceof UnauthenticatedError)) throw error;
      return refuse(reply, 401, error.message, 'Bearer realm="converge", error="invalid_token"');
    }
    if (!access.roles.some((role) => request.identity?.roles.includes(role)))
      return refuse(reply, 403, `this needs the role ${access.roles.join(' or ')}`);
  });
  return rules;
}
