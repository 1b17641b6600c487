// The gateway: one address for clients and the dashboard, no state of its own but what
// it knows of its upstreams' health and its rate limits' buckets.
// `/api/<service>/*` is forwarded as it came (method, path, query, body bytes and the
// headers that carry meaning: content type, Idempotency-Key, If-Match, a write's
// Consistency-Token on a read) to one healthy instance of the service (upstreams.ts),
// and the answer comes back as the service gave it, its ETag, Location, Retry-After and
// Consistency-Token and problem+json included. A service none of whose instances can be
// reached is a 503 problem with Retry-After, one that does not answer in time a 504, a
// connection that broke after a write was sent a 502: never a crash.
// Every /api request first passes the rate limits (rate-limit.ts): per client address,
// then, once authenticated (auth.ts: a bearer token verified, or an API key exchanged
// for one), per identity; too many is 429 with Retry-After. /healthz, /readyz and the
// dashboard page are not limited.
// `/api/overview` asks every service for its /status and /readyz at once (overview.ts).
// `/` is the dashboard, one self-contained page whose Content-Security-Policy forbids
// loading anything from anywhere else.
import crypto from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { FastifyReply, FastifyRequest } from 'fastify';
import {
  NotFoundError,
  consistencyHeader,
  createHttpApp,
  serviceIdentity,
  tokenCache,
  type HttpApp,
  type Logger,
} from '@converge/platform';
import Type, { type Static } from 'typebox';
import { authenticator, type Caller, type GatewayAuth } from './auth.ts';
import { gatewayDefaults } from './config.ts';
import { OverviewSchema, probeService } from './overview.ts';
import { createLimiter, type Limit, type Limiter } from './rate-limit.ts';
import { createPool, describeFailure, forward, watchHealth, type Forwarded, type Pool } from './upstreams.ts';

export type { Overview } from './overview.ts';

export const upstreamNames = ['order', 'inventory', 'payment', 'orchestrator', 'query'] as const;
export type UpstreamName = (typeof upstreamNames)[number];
/** Base URL of each service's instances: one, a list, or a comma-separated list. */
export type Upstreams = Record<UpstreamName, string | readonly string[]>;

export type GatewayOptions = {
  log: Logger;
  /** Where each service's instances are, e.g. http://127.0.0.1:3001,http://127.0.0.1:3011. */
  upstreams: Upstreams;
  /** How long a forwarded request may take, body included, over every instance tried. */
  timeoutMs?: number;
  /** How long the overview waits for each service's /status and /readyz. */
  probeTimeoutMs?: number;
  /** How often every instance's /readyz is asked, and how long each may take. */
  health?: { intervalMs?: number; timeoutMs?: number };
  /** Requests a second and burst per client address and per identity; false: no limit. */
  rateLimits?: { perAddress?: Limit | false; perIdentity?: Limit | false; maxKeys?: number };
  /** Who may call, and how callers are known (auth.ts). */
  auth: GatewayAuth;
  /** The gateway's own token, for the services' /status; signed with the deployment's key when it has it. */
  serviceToken?: () => Promise<string>;
  /** The subject the identity limit counts; the authenticated subject unless told. */
  identityOf?: (request: FastifyRequest) => string | undefined;
  /** Milliseconds on a clock that does not step back; the rate limits read it. */
  now?: () => number;
};

const requestHeaders = [
  'content-type',
  'accept',
  'idempotency-key',
  'if-match',
  'if-none-match',
  consistencyHeader,
  'traceparent',
];
const responseHeaders = [
  'content-type',
  'etag',
  'location',
  consistencyHeader,
  'idempotent-replayed',
  'retry-after',
  'cache-control',
  'last-modified',
];

const isUpstream = (name: string): name is UpstreamName => (upstreamNames as readonly string[]).includes(name);

function sendProblem(reply: FastifyReply, status: number, title: string, detail: string) {
  return reply
    .code(status)
    .type('application/problem+json')
    .send({
      type: `https://converge.dev/problems/${title.toLowerCase().replace(/[^a-z]+/g, '-')}`,
      title,
      status,
      detail,
    });
}

/** The dashboard with a policy that allows its own inline script and style and nothing from elsewhere. */
async function loadDashboard(): Promise<{ html: string; policy: string }> {
  const html = await readFile(new URL('./dashboard.html', import.meta.url), 'utf8');
  const hashes = (tag: string) =>
    [...html.matchAll(new RegExp(`<${tag}>([\\s\\S]*?)</${tag}>`, 'g'))]
      .map(
        (m) =>
          `'sha256-${crypto
            .createHash('sha256')
            .update(m[1] ?? '')
            .digest('base64')}'`,
      )
      .join(' ');
  const policy = [
    "default-src 'none'",
    `script-src ${hashes('script')}`,
    `style-src ${hashes('style')}`,
    "connect-src 'self'",
    "img-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');
  return { html, policy };
}

/** An onRequest hook that takes a token from the bucket of `keyOf(request)`, or answers 429. */
function limitBy(
  limiter: Limiter,
  keyOf: (request: FastifyRequest) => string | undefined,
  what: string,
  now: () => number,
) {
  const { perSecond, burst } = limiter.limit;
  return (request: FastifyRequest, reply: FastifyReply, done: () => void) => {
    const key = keyOf(request);
    if (key === undefined) return done();
    const taken = limiter.take(key, now());
    // The headers speak of the tighter of the limits a request passed.
    const shown = reply.getHeader('ratelimit-remaining');
    if (!taken.allowed || shown === undefined || taken.remaining < Number(shown)) {
      void reply
        .header('ratelimit-limit', burst)
        .header('ratelimit-remaining', taken.remaining)
        .header('ratelimit-reset', Math.ceil(taken.resetMs / 1000));
    }
    if (taken.allowed) return done();
    const seconds = Math.max(1, Math.ceil(taken.retryAfterMs / 1000));
    void sendProblem(
      reply.header('retry-after', seconds),
      429,
      'Too many requests',
      `this ${what} may send ${perSecond} requests a second (${burst} at once); retry in ${seconds} s`,
    );
  };
}

const bodyOf = (request: FastifyRequest) =>
  request.method === 'GET' || request.method === 'HEAD' || !Buffer.isBuffer(request.body) ? undefined : request.body;

/** The caller of each /api request, once authenticated. */
const callers = new WeakMap<FastifyRequest, Extract<Caller, { kind: 'authenticated' }>>();

function headersOf(request: FastifyRequest): Headers {
  const headers = new Headers();
  for (const name of requestHeaders) {
    const value = request.headers[name];
    if (typeof value === 'string') headers.set(name, value);
  }
  // The service sees a token, whatever the caller sent (an API key is exchanged for one).
  const caller = callers.get(request);
  if (caller !== undefined) headers.set('authorization', caller.authorization);
  return headers;
}

const DemoSignIn = Type.Object(
  { identity: Type.String({ minLength: 1, maxLength: 50 }) },
  { additionalProperties: false },
);

export async function createGateway({
  log,
  upstreams,
  timeoutMs = 10_000,
  probeTimeoutMs = 2_000,
  health = {},
  rateLimits = {},
  auth,
  serviceToken,
  identityOf = (request) => callers.get(request)?.identity.subject,
  now = () => performance.now(),
}: GatewayOptions): Promise<HttpApp> {
  const authenticate = authenticator(auth);
  const ownToken =
    serviceToken ??
    (auth.issuer === undefined
      ? undefined
      : () => tokenCache(auth.issuer as NonNullable<typeof auth.issuer>)(serviceIdentity('gateway')));
  const pools = Object.fromEntries(
    upstreamNames.map((name) => {
      try {
        return [name, createPool(name, upstreams[name])];
      } catch (error) {
        throw new Error(`upstream ${name}: ${(error as Error).message}`, { cause: error });
      }
    }),
  ) as Record<UpstreamName, Pool>;
  const healthIntervalMs = health.intervalMs ?? gatewayDefaults.healthIntervalMs;
  const retryAfter = Math.max(1, Math.ceil(healthIntervalMs / 1000));
  const { perAddress = gatewayDefaults.perAddress, perIdentity = gatewayDefaults.perIdentity } = rateLimits;
  const maxKeys = rateLimits.maxKeys ?? gatewayDefaults.rateLimitKeys;
  const byAddress = perAddress === false ? undefined : createLimiter(perAddress, maxKeys);
  const byIdentity = perIdentity === false ? undefined : createLimiter(perIdentity, maxKeys);
  const dashboard = await loadDashboard();
  const app = await createHttpApp({
    service: 'gateway',
    log,
    description: 'One address for the order, inventory and payment APIs, and the dashboard.',
  });
  const watch = watchHealth(Object.values(pools), {
    intervalMs: healthIntervalMs,
    timeoutMs: health.timeoutMs ?? gatewayDefaults.healthTimeoutMs,
    log,
  });
  app.addHook('onClose', (_app, done) => {
    watch.stop();
    done();
  });

  const sendFailure = (
    reply: FastifyReply,
    service: UpstreamName,
    failed: Exclude<Forwarded, { outcome: 'answered' }>,
  ) => {
    switch (failed.outcome) {
      case 'none-healthy':
        return sendProblem(
          reply.header('retry-after', retryAfter),
          503,
          'Unavailable',
          `no instance of the ${service} service is ready; try again shortly`,
        );
      case 'unreachable':
        return sendProblem(
          reply.header('retry-after', retryAfter),
          503,
          'Unavailable',
          `the ${service} service cannot be reached; try again shortly`,
        );
      case 'broken':
        return sendProblem(
          reply,
          502,
          'Bad gateway',
          `the connection to the ${service} service broke after the request was sent; ` +
            'a write may have happened, so retry with the same Idempotency-Key',
        );
      case 'timeout':
        return sendProblem(
          reply,
          504,
          'Gateway timeout',
          `the ${service} service did not answer within ${timeoutMs} ms; ` +
            'a write may still have happened, so retry with the same Idempotency-Key',
        );
    }
  };

  app.get('/', { schema: { hide: true } }, (_request, reply) =>
    reply
      .type('text/html; charset=utf-8')
      .header('content-security-policy', dashboard.policy)
      .header('x-content-type-options', 'nosniff')
      .header('referrer-policy', 'no-referrer')
      .header('cache-control', 'no-store')
      .send(dashboard.html),
  );
  app.get('/favicon.ico', { schema: { hide: true } }, (_request, reply) => reply.code(204).send());

  // Everything under /api: limited, then routed.
  await app.register(async (api) => {
    // The address is the TCP peer's (Fastify's trustProxy is off): behind a load balancer
    // every client shares the balancer's address, so turn this limit off there.
    if (byAddress !== undefined)
      api.addHook(
        'onRequest',
        limitBy(byAddress, (request) => request.ip, 'address', now),
      );
    // After the address limit, so a flood of bad credentials is shed before any is
    // verified; before the identity limit, which counts the subjects verified here. A
    // request without credentials goes on as it is: the service answers it or refuses it.
    api.addHook('onRequest', async (request, reply) => {
      const caller = await authenticate(request);
      if (caller.kind === 'authenticated') callers.set(request, caller);
      if (caller.kind !== 'refused') return;
      return sendProblem(
        reply.header('www-authenticate', 'Bearer realm="converge", error="invalid_token"'),
        401,
        'Unauthenticated',
        caller.detail,
      );
    });
    if (byIdentity !== undefined) api.addHook('onRequest', limitBy(byIdentity, identityOf, 'identity', now));

    api.get(
      '/api/overview',
      {
        schema: {
          tags: ['operations'],
          summary: "Every service's readiness, outbox, consumer and dead-letter figures",
          response: { 200: OverviewSchema },
        },
      },
      async (request, reply) => {
        const caller = callers.get(request);
        if (caller === undefined)
          return sendProblem(
            reply.header('www-authenticate', 'Bearer realm="converge"'),
            401,
            'Unauthenticated',
            'the overview needs an operator (Authorization: Bearer <jwt>, or X-API-Key)',
          );
        if (!caller.identity.roles.includes('operator'))
          return sendProblem(reply, 403, 'Forbidden', 'the overview needs the role operator');
        const authorization = ownToken === undefined ? undefined : `Bearer ${await ownToken()}`;
        const services = await Promise.all(
          upstreamNames.map((name) => probeService(name, pools[name], probeTimeoutMs, authorization)),
        );
        return reply
          .header('cache-control', 'no-store')
          .send({ at: new Date().toISOString(), ready: services.every((s) => s.ready), services });
      },
    );

    // Demo sign-in for the dashboard: a token of one of the demo identities. It exists
    // only where demo identities are configured, which production refuses.
    api.post(
      '/auth/demo',
      {
        schema: {
          hide: true,
          body: DemoSignIn,
        },
      },
      async (request, reply) => {
        const { identity: name } = request.body as Static<typeof DemoSignIn>;
        if (auth.demo === undefined || auth.issuer === undefined)
          throw new NotFoundError('demo sign-in is off (GATEWAY_DEMO_IDENTITIES)');
        const identity = Object.hasOwn(auth.demo, name) ? auth.demo[name] : undefined;
        if (identity === undefined)
          throw new NotFoundError(`no demo identity "${name}" (${Object.keys(auth.demo).join(', ')})`);
        const expiresIn = 900;
        return reply
          .header('cache-control', 'no-store')
          .send({ token: await auth.issuer.sign(identity, expiresIn), identity, expiresIn });
      },
    );

    // The proxy reads bodies as bytes, whatever their type: the service validates them.
    await api.register((scope, _options, done) => {
      scope.removeAllContentTypeParsers();
      scope.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, parsed) => parsed(null, body));
      scope.all('/api/:service/*', { schema: { hide: true } }, async (request, reply) => {
        const { service } = request.params as { service: string };
        if (!isUpstream(service))
          throw new NotFoundError(`no service "${service}"; the gateway routes to ${upstreamNames.join(', ')}`);
        const pool = pools[service];
        const path = request.url.slice(request.url.indexOf('/', '/api/'.length));
        const sample = pool.instances[0];
        if (sample === undefined || new URL(sample.base + path).origin !== sample.origin)
          throw new NotFoundError(`no route ${request.method} ${request.url}`);

        const forwarded = await forward(
          pool,
          { method: request.method, path, headers: headersOf(request), body: bodyOf(request), timeoutMs },
          log,
        );
        if (forwarded.outcome !== 'answered') {
          if (forwarded.outcome !== 'none-healthy')
            log.warn('upstream failed', {
              upstream: service,
              method: request.method,
              url: request.url,
              outcome: forwarded.outcome,
              error: describeFailure(forwarded.error, timeoutMs),
            });
          return sendFailure(reply, service, forwarded);
        }
        const { response, payload } = forwarded;
        reply.code(response.status);
        for (const name of responseHeaders) {
          const value = response.headers.get(name);
          if (value === null) continue;
          reply.header(name, name === 'location' && value.startsWith('/') ? `/api/${service}${value}` : value);
        }
        return reply.send(
          payload.length === 0 && (response.status === 204 || response.status === 304) ? undefined : payload,
        );
      });
      done();
    });
  });
  return app;
}
