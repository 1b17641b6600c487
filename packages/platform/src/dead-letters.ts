// Dead letters: messages a consumer parked with the reason. An operator lists them and
// replays one, many or all once the cause is fixed; every replay leaves an audit record
// with who asked and what happened. A replay goes through the same inbox and sequence
// checks as a first delivery, so replaying twice cannot apply twice.
import { checkEnvelope } from '@converge/contracts';
import Type, { type Static } from 'typebox';
import type { Consumer } from './consumer.ts';
import type { Db } from './db.ts';
import { NotFoundError } from './errors.ts';
import { problems, type HttpApp } from './http.ts';
import { allow, callerOf } from './identity.ts';

export const DeadLetter = Type.Object({
  id: Type.String({ format: 'uuid' }),
  consumer: Type.String(),
  messageId: Type.Union([Type.String(), Type.Null()]),
  type: Type.Union([Type.String(), Type.Null()]),
  subject: Type.Union([Type.String(), Type.Null()]),
  reason: Type.String(),
  error: Type.String(),
  attempts: Type.Integer(),
  status: Type.Union([Type.Literal('parked'), Type.Literal('replayed')]),
  parkedAt: Type.String({ format: 'date-time' }),
  resolvedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  body: Type.String(),
});
export type DeadLetter = Static<typeof DeadLetter>;

type DeadLetterRow = {
  id: string;
  consumer: string;
  message_id: string | null;
  type: string | null;
  subject: string | null;
  reason: string;
  error: string;
  attempts: number;
  status: 'parked' | 'replayed';
  parked_at: Date;
  resolved_at: Date | null;
  body: string;
};

const toDeadLetter = (r: DeadLetterRow): DeadLetter => ({
  id: r.id,
  consumer: r.consumer,
  messageId: r.message_id,
  type: r.type,
  subject: r.subject,
  reason: r.reason,
  error: r.error,
  attempts: r.attempts,
  status: r.status,
  parkedAt: r.parked_at.toISOString(),
  resolvedAt: r.resolved_at?.toISOString() ?? null,
  body: r.body,
});

export async function listDeadLetters(
  db: Db,
  status: 'parked' | 'replayed' | 'all' = 'parked',
  limit = 100,
): Promise<DeadLetter[]> {
  const rows = await db.query<DeadLetterRow>(
    `SELECT * FROM dead_letters WHERE $1 = 'all' OR status = $1 ORDER BY parked_at, id LIMIT $2`,
    [status, limit],
  );
  return rows.map(toDeadLetter);
}

export async function countDeadLetters(db: Db): Promise<number> {
  const [row] = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM dead_letters WHERE status = 'parked'`);
  return row?.n ?? 0;
}

export type ReplayResult = {
  id: string;
  outcome: 'applied' | 'duplicate' | 'stale' | 'held' | 'skipped' | 'failed';
  detail?: string;
};

/** Replays one parked message through the consumer; records the attempt either way. */
export async function replayDeadLetter(db: Db, consumer: Consumer, id: string, actor: string): Promise<ReplayResult> {
  const [row] = await db.query<DeadLetterRow>('SELECT * FROM dead_letters WHERE id = $1', [id]);
  if (row === undefined) throw new NotFoundError(`no dead letter ${id}`);
  if (row.status !== 'parked') return { id, outcome: 'duplicate', detail: `already ${row.status}` };
  let result: ReplayResult;
  let parsed: unknown;
  try {
    parsed = JSON.parse(row.body);
  } catch {
    parsed = row.body;
  }
  const checked = checkEnvelope(parsed);
  if (!checked.ok) {
    result = { id, outcome: 'failed', detail: `still invalid: ${checked.errors.join('; ')}` };
  } else {
    try {
      const outcome = await consumer.applyOnce(checked.value);
      result = outcome === 'dead-lettered' ? { id, outcome: 'failed' } : { id, outcome };
    } catch (error) {
      result = { id, outcome: 'failed', detail: (error as Error).message };
    }
  }
  await db.transaction(async (tx) => {
    if (result.outcome !== 'failed') {
      await tx.query(`UPDATE dead_letters SET status = 'replayed', resolved_at = now() WHERE id = $1`, [id]);
    }
    await tx.query(
      'INSERT INTO dead_letter_audit (dead_letter_id, action, actor, outcome, detail) VALUES ($1, $2, $3, $4, $5)',
      [id, 'replay', actor, result.outcome, result.detail ?? null],
    );
  });
  return result;
}

const ReplayResultSchema = Type.Object({
  id: Type.String(),
  outcome: Type.Union([
    Type.Literal('applied'),
    Type.Literal('duplicate'),
    Type.Literal('stale'),
    Type.Literal('held'),
    Type.Literal('skipped'),
    Type.Literal('failed'),
  ]),
  detail: Type.Optional(Type.String()),
});

export function registerDeadLetterRoutes(app: HttpApp, db: Db, consumer: Consumer): void {
  app.get(
    '/dead-letters',
    {
      config: { access: allow('operator') },
      schema: {
        tags: ['operations'],
        summary: 'Messages this service parked, with the reason',
        querystring: Type.Object(
          {
            status: Type.Optional(Type.Union([Type.Literal('parked'), Type.Literal('replayed'), Type.Literal('all')])),
            limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
          },
          { additionalProperties: false },
        ),
        response: { 200: Type.Object({ items: Type.Array(DeadLetter), parked: Type.Integer() }), ...problems(400) },
      },
    },
    async (request) => ({
      items: await listDeadLetters(db, request.query.status ?? 'parked', request.query.limit ?? 100),
      parked: await countDeadLetters(db),
    }),
  );
  app.post(
    '/dead-letters/:id/replay',
    {
      config: { access: allow('operator') },
      schema: {
        tags: ['operations'],
        summary: 'Replays one parked message',
        params: Type.Object({ id: Type.String({ format: 'uuid' }) }),
        response: { 200: ReplayResultSchema, ...problems(400, 404) },
      },
    },
    (request) => replayDeadLetter(db, consumer, request.params.id, callerOf(request).subject),
  );
  app.post(
    '/dead-letters/replay',
    {
      config: { access: allow('operator') },
      schema: {
        tags: ['operations'],
        summary: 'Replays many parked messages (the given ids, or all)',
        body: Type.Union([
          Type.Object(
            { ids: Type.Array(Type.String({ format: 'uuid' }), { minItems: 1, maxItems: 1000 }) },
            { additionalProperties: false },
          ),
          Type.Object({ all: Type.Literal(true) }, { additionalProperties: false }),
        ]),
        response: { 200: Type.Object({ results: Type.Array(ReplayResultSchema) }), ...problems(400, 404, 415) },
      },
    },
    async (request) => {
      const ids =
        'ids' in request.body ? request.body.ids : (await listDeadLetters(db, 'parked', 10_000)).map((d) => d.id);
      const results: ReplayResult[] = [];
      for (const id of ids) results.push(await replayDeadLetter(db, consumer, id, callerOf(request).subject));
      return { results };
    },
  );
}
