// Read your writes across services. A write answers with a consistency token naming
// the event it caused: its source, subject and the subject's stream version
// (`order:<id>:2`). A read model that consumes that source has applied the event once
// its consumer position for (source, subject) reaches that version, so a read carrying
// the token waits for exactly that, bounded, and otherwise says how far behind it is
// instead of presenting older data as fresh.
import Type from 'typebox';
import type { Sql } from './db.ts';
import { InvalidError, UnavailableError } from './errors.ts';
import { sleep } from './retry.ts';

export type ConsistencyToken = { source: string; subject: string; sequence: number };

export const consistencyHeader = 'consistency-token';

export const ConsistencyTokenSchema = Type.String({
  maxLength: 300,
  pattern: '^[a-z]+:[A-Za-z0-9._@-]+:[1-9][0-9]{0,9}$',
  description:
    'From a write response: `<source>:<subject>:<version>`. The read waits until the read model has applied it.',
});

export const formatToken = ({ source, subject, sequence }: ConsistencyToken): string =>
  `${source}:${subject}:${sequence}`;

export function parseToken(text: string): ConsistencyToken {
  const match = /^([a-z]+):([A-Za-z0-9._@-]+):([1-9][0-9]{0,9})$/.exec(text);
  if (match?.[1] === undefined || match[2] === undefined || match[3] === undefined) {
    throw new InvalidError('malformed consistency token', [
      `${consistencyHeader}: expected <source>:<subject>:<version>`,
    ]);
  }
  return { source: match[1], subject: match[2], sequence: Number(match[3]) };
}

/** How far the consumer is on the token's stream: the version applied, 0 when none. */
export async function appliedVersion(db: Sql, consumer: string, token: ConsistencyToken): Promise<number> {
  const [row] = await db.query<{ last: number }>(
    'SELECT last_sequence AS last FROM consumer_positions WHERE consumer = $1 AND source = $2 AND subject = $3',
    [consumer, token.source, token.subject],
  );
  return row?.last ?? 0;
}

/**
 * Waits until `consumer` has applied the token's event, polling every `pollMs`, for at
 * most `timeoutMs`; then throws UnavailableError (503) saying how far behind it is.
 */
export async function waitForToken(
  db: Sql,
  consumer: string,
  token: ConsistencyToken,
  options: { timeoutMs: number; pollMs?: number; sources: readonly string[] },
): Promise<{ waitedMs: number }> {
  if (!options.sources.includes(token.source)) {
    throw new InvalidError(`this read model does not follow ${token.source}`, [
      `${consistencyHeader}: source must be one of ${options.sources.join(', ')}`,
    ]);
  }
  const started = Date.now();
  for (;;) {
    const applied = await appliedVersion(db, consumer, token);
    if (applied >= token.sequence) return { waitedMs: Date.now() - started };
    const waited = Date.now() - started;
    if (waited >= options.timeoutMs) {
      throw new UnavailableError(
        `the read model has not applied ${formatToken(token)} yet: ` +
          `it is at version ${applied} of that stream after ${waited} ms; retry shortly`,
      );
    }
    await sleep(Math.min(options.pollMs ?? 10, options.timeoutMs - waited));
  }
}
