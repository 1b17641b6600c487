// The HTTP edge of every service: a Fastify app whose routes are typed and validated by
// TypeBox schemas (the same schemas generate the OpenAPI document), where every error
// leaves as RFC 9457 problem+json. Only application/json bodies are read; unknown
// fields, wrong types, prototype-pollution keys and oversized bodies are 4xx before any
// handler runs. 5xx details go to the log, never to the client.
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import swagger from '@fastify/swagger';
import { TypeBoxValidatorCompiler, type TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Type from 'typebox';
import { ConflictError, InvalidError, isUnavailable, NotFoundError, UnavailableError } from './errors.ts';
import type { Logger } from './log.ts';

export type HttpApp = FastifyInstance<
  import('node:http').Server,
  import('node:http').IncomingMessage,
  import('node:http').ServerResponse,
  import('fastify').FastifyBaseLogger,
  TypeBoxTypeProvider
>;

export const Problem = Type.Object(
  {
    type: Type.String(),
    title: Type.String(),
    status: Type.Integer(),
    detail: Type.Optional(Type.String()),
    errors: Type.Optional(Type.Array(Type.String())),
  },
  { description: 'RFC 9457 problem details' },
);

export type Readiness = () => Promise<Record<string, boolean>>;

export type HttpOptions = {
  service: string;
  log: Logger;
  description?: string;
  bodyLimit?: number;
  ready?: Readiness;
  /** Longest a client may take to send a whole request (headers and body); 0 for no limit. */
  requestTimeoutMs?: number;
  /** Longest a connection may stay silent (no byte either way) before it is closed. */
  connectionTimeoutMs?: number;
};

function problem(reply: FastifyReply, status: number, title: string, detail?: string, errors?: string[]) {
  return reply
    .code(status)
    .type('application/problem+json')
    .send({
      type: `https://converge.dev/problems/${title.toLowerCase().replace(/[^a-z]+/g, '-')}`,
      title,
      status,
      detail,
      errors,
    });
}

export async function createHttpApp({
  service,
  log,
  description,
  bodyLimit = 64 * 1024,
  ready,
  requestTimeoutMs = 30_000,
  connectionTimeoutMs = 60_000,
}: HttpOptions): Promise<HttpApp> {
  const handleError = (error: FastifyError, request: FastifyRequest, reply: FastifyReply) => {
    if (error.validation !== undefined) {
      const errors = error.validation.map(
        (v) => `${error.validationContext ?? 'body'}${v.instancePath || ''} ${v.message ?? 'is invalid'}`,
      );
      return problem(reply, 400, 'Invalid request', 'The request does not match the schema.', errors);
    }
    if (error instanceof InvalidError)
      return problem(
        reply,
        error.status,
        error.status === 422 ? 'Unprocessable request' : 'Invalid request',
        error.message,
        error.details,
      );
    if (error instanceof NotFoundError) return problem(reply, 404, 'Not found', error.message);
    if (error instanceof ConflictError)
      return problem(reply, error.status, error.status === 412 ? 'Precondition failed' : 'Conflict', error.message);
    if (error instanceof UnavailableError)
      return problem(reply.header('retry-after', String(error.retryAfterSeconds)), 503, 'Unavailable', error.message);
    if (isUnavailable(error)) {
      log.warn('request failed: the database cannot take it now', {
        method: request.method,
        url: request.url,
        code: error.code,
        error: error.message,
      });
      return problem(
        reply.header('retry-after', '1'),
        503,
        'Unavailable',
        'The service cannot use its database right now (out of reach, too slow or overloaded). Retry ' +
          'shortly (with the same Idempotency-Key where the request takes one).',
      );
    }
    const status = typeof error.statusCode === 'number' ? error.statusCode : 500;
    if (status >= 400 && status < 500) {
      const title =
        status === 413
          ? 'Payload too large'
          : status === 414
            ? 'URI too long'
            : status === 415
              ? 'Unsupported media type'
              : 'Invalid request';
      return problem(reply, status, title, error.message);
    }
    log.error('request failed', { method: request.method, url: request.url, error: error.message, stack: error.stack });
    return problem(reply, 500, 'Internal error', 'The request could not be completed; it has been logged.');
  };
  const app = Fastify({
    logger: false,
    bodyLimit,
    return503OnClosing: true,
    forceCloseConnections: true,
    // A client that sends its request slowly, or opens a connection and says nothing,
    // must not hold a socket forever. Node checks the request deadline on an interval
    // (30 s by default): checked more often, the deadline is what it says.
    requestTimeout: requestTimeoutMs,
    connectionTimeout: connectionTimeoutMs,
    ...(requestTimeoutMs > 0
      ? {
          http: {
            headersTimeout: requestTimeoutMs,
            connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(requestTimeoutMs / 4))),
          },
        }
      : {}),
    // The router refuses some URLs (bad percent-encoding, a parameter over 100
    // characters) before any route runs: they too leave as problem+json.
    frameworkErrors: (error, request, reply) => {
      void handleError(error, request, reply);
    },
  })
    .setValidatorCompiler((route) => {
      const validate = TypeBoxValidatorCompiler(route);
      // A POST without a body is read as {}: the schema then says what is missing.
      return route.httpPart === 'body' ? (data: unknown) => validate(data ?? {}) : validate;
    })
    .withTypeProvider<TypeBoxTypeProvider>();

  // Fastify reads text/plain by default; a string body would then be a schema error (400)
  // instead of the unsupported media type it is.
  app.removeContentTypeParser('text/plain');

  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: `Converge ${service} service`, version: '1.0.0', description: description ?? '' },
      // Every documented route needs a caller's token (identity.ts); health and the document itself do not.
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' } } },
      security: [{ bearer: [] }],
    },
  });

  app.setErrorHandler(handleError);

  app.setNotFoundHandler((request, reply) =>
    problem(reply, 404, 'Not found', `no route ${request.method} ${request.url}`),
  );

  app.get('/healthz', { schema: { hide: true } }, () => ({ status: 'ok', service }));
  app.get('/readyz', { schema: { hide: true } }, async (_request, reply) => {
    const checks = ready === undefined ? {} : await ready().catch(() => ({ ready: false }));
    const ok = Object.values(checks).every(Boolean);
    return reply.code(ok ? 200 : 503).send({ status: ok ? 'ready' : 'not ready', service, checks });
  });
  app.get('/openapi.json', { schema: { hide: true } }, () => app.swagger());
  return app;
}

/** Standard error responses for route schemas, so the OpenAPI document lists them. */
export const problems = (...statuses: number[]): Record<number, typeof Problem> =>
  Object.fromEntries(statuses.map((s) => [s, Problem]));
