// The few kinds of failure every service speaks of. The HTTP layer maps each to one
// status (problem+json); consumers treat PermanentError as "dead-letter at once" and
// anything else as transient (retry with backoff).

/** The input is malformed or breaks a rule that no retry can fix (400/413/415/422). */
export class InvalidError extends Error {
  override readonly name = 'InvalidError';
  readonly details: string[];
  readonly status: 400 | 413 | 415 | 422;
  constructor(message: string, details: string[] = [], status: 400 | 413 | 415 | 422 = 422) {
    super(message);
    this.details = details;
    this.status = status;
  }
}

export class NotFoundError extends Error {
  override readonly name = 'NotFoundError';
}

/** The request conflicts with the current state (409), or a precondition failed (412). */
export class ConflictError extends Error {
  override readonly name = 'ConflictError';
  readonly status: 409 | 412;
  constructor(message: string, status: 409 | 412 = 409) {
    super(message);
    this.status = status;
  }
}

/** A dependency is down or overloaded; try again later (503, Retry-After in seconds). */
export class UnavailableError extends Error {
  override readonly name = 'UnavailableError';
  readonly retryAfterSeconds: number;
  constructor(message: string, retryAfterSeconds = 1) {
    super(message);
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

/**
 * The broker routed these types (routing keys) to no queue: nothing is bound to them,
 * so nobody would ever receive them (a publish with the mandatory flag came back). The
 * other types of the same publish were taken. Not the broker being down: publishing it
 * again helps only once some queue binds the type.
 */
export class UnroutableError extends Error {
  override readonly name = 'UnroutableError';
  readonly types: readonly string[];
  constructor(types: readonly string[]) {
    super(`no queue is bound to ${types.join(', ')}`);
    this.types = [...types];
  }
}

// Errors that mean "the database (or another dependency) is out of reach right now":
// connection refused or lost, the server shutting down or starting up. Not the
// request's fault, so the caller hears 503 and may retry.
const unreachableCodes = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH']);

/** Messages of driver errors that mean the server could not be reached, whatever their code. */
const unreachableMessage = new RegExp(
  [
    'Connection terminated',
    'connection timeout',
    'timeout exceeded when trying to connect',
    'timeout expired',
    'Query read timeout',
    'Client has encountered a connection error',
  ].join('|'),
  'i',
);

const codeOf = (error: Error): string | undefined => {
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' ? code : undefined;
};

/** The server or the way to it is gone, hung or refusing connections (SQLSTATE 08, 57P0x, socket errors). */
export function isUnreachable(error: unknown): boolean {
  if (error instanceof UnavailableError) return true;
  if (!(error instanceof Error)) return false;
  const code = codeOf(error);
  if (code !== undefined && (unreachableCodes.has(code) || code.startsWith('08') || /^57P0\d$/.test(code))) return true;
  return unreachableMessage.test(error.message);
}

// SQLSTATEs of a server that is there but cannot take the statement now: out of
// resources (53: disk full, out of memory, too many connections), a statement or lock
// timeout, an idle transaction ended by the server, a transaction that lost a race
// (serialization failure, deadlock). The same statement later may well succeed.
const busyCodes = new Set(['57014', '55P03', '25P03', '40001', '40P01', '58000', '58030']);

/** Anything that makes a request fail for now, not for good: unreachable, overloaded, timed out, lost a race. */
export function isUnavailable(error: unknown): boolean {
  if (isUnreachable(error)) return true;
  if (!(error instanceof Error)) return false;
  const code = codeOf(error);
  return code !== undefined && (busyCodes.has(code) || code.startsWith('53'));
}

/** A message that can never take effect, however often it is retried. */
export class PermanentError extends Error {
  override readonly name = 'PermanentError';
  readonly reason: string;
  constructor(message: string, reason = 'permanent') {
    super(message);
    this.reason = reason;
  }
}
