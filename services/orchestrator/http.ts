// The orchestrator's API: sagas with their steps and full history, lists by state, and
// the operator's two actions on a parked saga: retry (send the command in flight again,
// with fresh attempts) or resolve (the operator settled it by hand). Both are recorded
// in the saga's log with the operator's note and name (the authenticated caller).
import { OpaqueId, SagaStatus, Timestamp } from '@converge/contracts';
import {
  NotFoundError,
  allow,
  callerOf,
  problems,
  type Db,
  type HttpApp,
  type Saga,
  type SagaDefinition,
  type SagaMode,
} from '@converge/platform';
import Type from 'typebox';
import { advanceSaga, listSagas, sagaCounts, sagaHistory } from './store.ts';

const StepSchema = Type.Object({
  name: Type.String(),
  status: Type.Union([
    Type.Literal('pending'),
    Type.Literal('started'),
    Type.Literal('succeeded'),
    Type.Literal('failed'),
    Type.Literal('timed-out'),
    Type.Literal('compensating'),
    Type.Literal('compensated'),
  ]),
  attempts: Type.Integer({ description: 'Sends of the command of the current phase (forward or compensation).' }),
  startedAt: Type.Optional(Type.String({ format: 'date-time' })),
  endedAt: Type.Optional(Type.String({ format: 'date-time' })),
  compensatedAt: Type.Optional(Type.String({ format: 'date-time' })),
  error: Type.Optional(Type.String()),
});

export const SagaSchema = Type.Object({
  id: Type.String(),
  definition: Type.String(),
  status: SagaStatus,
  data: Type.Unknown(),
  version: Type.Integer(),
  steps: Type.Array(StepSchema),
  deadlineAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  reason: Type.Optional(Type.String()),
  correlationId: Type.Optional(Type.String()),
  parkedFrom: Type.Optional(Type.String()),
  startedAt: Type.String({ format: 'date-time' }),
  updatedAt: Type.String({ format: 'date-time' }),
});

const HistoryEntry = Type.Object(
  { version: Type.Integer(), type: Type.String(), at: Type.String({ format: 'date-time' }) },
  {
    additionalProperties: true,
    description: 'One saga event: a command sent, a reply, a deadline missed, an operator action…',
  },
);

const SagaWithHistory = Type.Intersect([SagaSchema, Type.Object({ history: Type.Array(HistoryEntry) })]);
const SagaId = Type.Object({ id: OpaqueId });
const OperatorNote = Type.Object(
  { note: Type.String({ minLength: 1, maxLength: 1000 }) },
  { additionalProperties: false },
);

export function registerSagaRoutes<Data>(
  app: HttpApp,
  db: Db,
  definition: SagaDefinition<Data>,
  options: { mode: SagaMode; now: () => Date; stuckAfterMs: number },
): void {
  // Log entries name their step by index; the view adds its name for readers.
  const withHistory = async (saga: Saga<Data>) => ({
    ...saga,
    history: (await sagaHistory(db, saga.id)).map((entry) =>
      typeof entry.step === 'number'
        ? { ...entry, stepName: saga.steps[entry.step]?.name ?? String(entry.step) }
        : entry,
    ),
  });

  app.get(
    '/sagas/:id',
    {
      config: { access: allow('operator') },
      schema: {
        tags: ['sagas'],
        summary: 'A saga: its state, every step with times, attempts and errors, and its history',
        params: SagaId,
        response: { 200: SagaWithHistory, ...problems(400, 404) },
      },
    },
    async (request) => {
      const [saga] = await db.query<{ state: Saga<Data> }>('SELECT state FROM sagas WHERE saga_id = $1', [
        request.params.id,
      ]);
      if (saga === undefined) throw new NotFoundError(`no saga ${request.params.id}`);
      return withHistory(saga.state);
    },
  );

  app.get(
    '/sagas',
    {
      config: { access: allow('operator') },
      schema: {
        tags: ['sagas'],
        summary: 'Sagas, most recently changed first, optionally in one state; with counts per state',
        querystring: Type.Object(
          {
            state: Type.Optional(SagaStatus),
            limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500 })),
            before: Type.Optional(
              Type.String({
                ...Timestamp,
                description: 'Page on: the updatedAt of the last saga of the previous page.',
              }),
            ),
          },
          { additionalProperties: false },
        ),
        response: {
          200: Type.Object({
            mode: Type.Union([Type.Literal('choreography'), Type.Literal('orchestration')]),
            counts: Type.Record(Type.String(), Type.Integer()),
            stuck: Type.Integer({
              description: 'Sagas not final whose last change is older than the stuck threshold.',
            }),
            items: Type.Array(SagaSchema),
          }),
          ...problems(400),
        },
      },
    },
    async (request) => {
      const { state, limit = 50, before } = request.query;
      const counts = await sagaCounts(db, new Date(options.now().getTime() - options.stuckAfterMs));
      const items = await listSagas<Data>(db, {
        limit,
        ...(state === undefined ? {} : { status: state }),
        ...(before === undefined ? {} : { before }),
      });
      return { mode: options.mode, counts: counts.byStatus, stuck: counts.stuck, items };
    },
  );

  const act = (kind: 'retry' | 'resolve', summary: string) =>
    app.post(
      `/sagas/:id/${kind}`,
      {
        config: { access: allow('operator') },
        schema: {
          tags: ['sagas'],
          summary,
          params: SagaId,
          body: OperatorNote,
          response: { 200: SagaWithHistory, ...problems(400, 404, 409, 415) },
        },
      },
      async (request) => {
        const sagaId = request.params.id;
        const advanced = await db.transaction((tx) =>
          advanceSaga(
            tx,
            definition,
            sagaId,
            { kind, note: request.body.note, actor: callerOf(request).subject },
            { source: 'orchestrator', now: options.now() },
            true,
          ),
        );
        if (advanced === undefined) throw new NotFoundError(`no saga ${sagaId}`);
        return withHistory(advanced.saga);
      },
    );
  act('retry', 'Retries a saga that NEEDS_ATTENTION: sends the command it was waiting on again, with fresh attempts');
  act('resolve', 'Resolves a saga that NEEDS_ATTENTION by hand: it becomes RESOLVED and does nothing more');
}
