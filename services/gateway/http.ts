// The gateway: one address for clients and the dashboard, no state of its own.
// `/api/<service>/*` is forwarded as it came (method, path, query, body bytes and the
// headers that carry meaning: content type, Idempotency-Key, If-Match, a write's
// Consistency-Token on a read) and the answer comes back as the service gave it, its
// ETag, Location, Retry-After and Consistency-Token and problem+json included. A service that cannot be
// reached is a 503 problem, one that does not answer in time a 504: never a crash.
// `/api/overview` asks every service for its /status and /readyz at once; a service
// that is down shows as down. `/` is the dashboard, one self-contained page whose
// Content-Security-Policy forbids loading anything from anywhere else.
import crypto from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { FastifyReply } from 'fastify';
import {
  NotFoundError,
  StatusSchema,
  consistencyHeader,
  createHttpApp,
  type HttpApp,
  type Logger,
} from '@converge/platform';
import Type, { type Static } from 'typebox';
import { Compile } from 'typebox/compile';

export const upstreamNames = ['order', 'inventory', 'payment', 'orchestrator', 'query'] as const;
export type UpstreamName = (typeof upstreamNames)[number];
export type Upstreams = Record<UpstreamName, string>;

export type GatewayOptions = {
  log: Logger;
  /** Base URL of each service, e.g. http://127.0.0.1:3001. */
  upstreams: Upstreams;
  /** How long a forwarded request may take, body included. */
  timeoutMs?: number;
  /** How long the overview waits for each service's /status and /readyz. */
  probeTimeoutMs?: number;
};

const requestHeaders = [
  'content-type',
  'accept',
  'idempotency-key',
  'if-match',
  'if-none-match',
  consistencyHeader,
  'x-actor',
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

const ServiceOverview = Type.Object({
  name: Type.String(),
  up: Type.Boolean({ description: 'the service answered' }),
  ready: Type.Boolean({ description: '/readyz said ready' }),
  checks: Type.Record(Type.String(), Type.Boolean()),
  status: Type.Union([StatusSchema, Type.Null()]),
  error: Type.Union([Type.String(), Type.Null()]),
  latencyMs: Type.Number(),
});
export const OverviewSchema = Type.Object({
  at: Type.String({ format: 'date-time' }),
  ready: Type.Boolean({ description: 'every service is ready' }),
  services: Type.Array(ServiceOverview),
});
export type Overview = Static<typeof OverviewSchema>;
type ServiceOverview = Static<typeof ServiceOverview>;

const statusCheck = Compile(StatusSchema);
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

const isTimeout = (error: unknown) =>
  error instanceof Error && (error.name === 'TimeoutError' || error.name === 'AbortError');
/** fetch says "fetch failed"; the reason is in its cause (ECONNREFUSED and the like). */
const describe = (error: unknown, timeoutMs: number) => {
  if (isTimeout(error)) return `no answer within ${timeoutMs} ms`;
  if (!(error instanceof Error)) return String(error);
  const cause = (error as Error & { cause?: unknown }).cause;
  const code = (cause as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? `cannot connect (${code})` : cause instanceof Error ? cause.message : error.message;
};

async function getJson(url: string, timeoutMs: number): Promise<{ status: number; body: unknown }> {
  const response = await fetch(url, {
    headers: { accept: 'application/json' },
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await response.text();
  try {
    return { status: response.status, body: JSON.parse(text) as unknown };
  } catch {
    return { status: response.status, body: null };
  }
}

async function probe(name: UpstreamName, base: string, timeoutMs: number): Promise<ServiceOverview> {
  const started = performance.now();
  const [status, ready] = await Promise.allSettled([
    getJson(`${base}/status`, timeoutMs),
    getJson(`${base}/readyz`, timeoutMs),
  ]);
  const latencyMs = Math.round((performance.now() - started) * 10) / 10;
  const failure = [status, ready].find((r) => r.status === 'rejected');
  if (status.status === 'rejected' && ready.status === 'rejected') {
    return {
      name,
      up: false,
      ready: false,
      checks: {},
      status: null,
      error: describe(failure?.reason, timeoutMs),
      latencyMs,
    };
  }
  const readyBody = ready.status === 'fulfilled' ? ready.value.body : null;
  const checksValue =
    typeof readyBody === 'object' && readyBody !== null ? (readyBody as { checks?: unknown }).checks : undefined;
  const checks =
    typeof checksValue === 'object' && checksValue !== null
      ? Object.fromEntries(Object.entries(checksValue).map(([k, v]) => [k, v === true]))
      : {};
  const statusBody =
    status.status === 'fulfilled' && status.value.status === 200 && statusCheck.Check(status.value.body)
      ? status.value.body
      : null;
  const error =
    failure !== undefined
      ? describe(failure.reason, timeoutMs)
      : statusBody === null
        ? 'unexpected answer from /status'
        : null;
  return {
    name,
    up: true,
    ready: ready.status === 'fulfilled' && ready.value.status === 200,
    checks,
    status: statusBody,
    error,
    latencyMs,
  };
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

export async function createGateway({
  log,
  upstreams,
  timeoutMs = 10_000,
  probeTimeoutMs = 2_000,
}: GatewayOptions): Promise<HttpApp> {
  const bases = Object.fromEntries(
    upstreamNames.map((name) => [name, upstreams[name].replace(/\/+$/, '')]),
  ) as Upstreams;
  const dashboard = await loadDashboard();
  const app = await createHttpApp({
    service: 'gateway',
    log,
    description: 'One address for the order, inventory and payment APIs, and the dashboard.',
  });

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

  app.get(
    '/api/overview',
    {
      schema: {
        tags: ['operations'],
        summary: "Every service's readiness, outbox, consumer and dead-letter figures",
        response: { 200: OverviewSchema },
      },
    },
    async (_request, reply) => {
      const services = await Promise.all(upstreamNames.map((name) => probe(name, bases[name], probeTimeoutMs)));
      return reply
        .header('cache-control', 'no-store')
        .send({ at: new Date().toISOString(), ready: services.every((s) => s.ready), services });
    },
  );

  // The proxy reads bodies as bytes, whatever their type: the service validates them.
  await app.register((scope, _options, done) => {
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, parsed) => parsed(null, body));
    scope.all('/api/:service/*', { schema: { hide: true } }, async (request, reply) => {
      const { service } = request.params as { service: string };
      if (!isUpstream(service))
        throw new NotFoundError(`no service "${service}"; the gateway routes to ${upstreamNames.join(', ')}`);
      const base = bases[service];
      const rest = request.url.slice(request.url.indexOf('/', '/api/'.length));
      const target = new URL(base + rest);
      if (target.origin !== new URL(base).origin) throw new NotFoundError(`no route ${request.method} ${request.url}`);
      const headers = new Headers();
      for (const name of requestHeaders) {
        const value = request.headers[name];
        if (typeof value === 'string') headers.set(name, value);
      }
      const body =
        request.method === 'GET' || request.method === 'HEAD' || !Buffer.isBuffer(request.body)
          ? undefined
          : request.body;
      let response: Response;
      let payload: Buffer;
      try {
        response = await fetch(target, {
          method: request.method,
          headers,
          body,
          redirect: 'manual',
          signal: AbortSignal.timeout(timeoutMs),
        });
        payload = Buffer.from(await response.arrayBuffer());
      } catch (error) {
        log.warn('upstream failed', {
          upstream: service,
          method: request.method,
          url: request.url,
          error: describe(error, timeoutMs),
        });
        return isTimeout(error)
          ? sendProblem(
              reply,
              504,
              'Gateway timeout',
              `the ${service} service did not answer within ${timeoutMs} ms; ` +
                'a write may still have happened, so retry with the same Idempotency-Key',
            )
          : sendProblem(reply, 503, 'Unavailable', `the ${service} service cannot be reached; try again shortly`);
      }
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
  return app;
}
