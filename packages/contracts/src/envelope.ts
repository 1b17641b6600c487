// The CloudEvents 1.0 envelope every message travels in (structured mode, JSON).
// `id` is set once by the producer and never changes, so it is the deduplication key;
// `subject` is the entity id and the ordering key; `sequence` is the version of the
// subject's stream at the producer, so a consumer can tell stale from early.
import Type, { type Static } from 'typebox';

export const Uuid = Type.String({ format: 'uuid' });

export const EnvelopeSchema = Type.Object({
  specversion: Type.Literal('1.0'),
  id: Uuid,
  source: Type.String({ minLength: 1, maxLength: 100 }),
  type: Type.String({ minLength: 1, maxLength: 100 }),
  subject: Type.String({ minLength: 1, maxLength: 200 }),
  time: Type.String({ format: 'date-time' }),
  datacontenttype: Type.Literal('application/json'),
  dataversion: Type.Integer({ minimum: 1 }),
  sequence: Type.Integer({ minimum: 1 }),
  correlationid: Type.String({ minLength: 1, maxLength: 200 }),
  causationid: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
  traceparent: Type.Optional(Type.String({ maxLength: 100 })),
  data: Type.Unknown(),
});

export type Envelope<T extends string = string, D = unknown> = Omit<Static<typeof EnvelopeSchema>, 'type' | 'data'> & {
  type: T;
  data: D;
};
