// Compiled validators for every catalogued payload, built once.
import { Compile } from 'typebox/compile';
import type { TSchema } from 'typebox';
import { catalogue, eventTypes, isEventType, type DomainEvent } from './events.ts';
import { EnvelopeSchema, type Envelope } from './envelope.ts';

type Validator = ReturnType<typeof Compile<TSchema>>;

const envelopeValidator = Compile(EnvelopeSchema);
const payloadValidators = new Map<string, Validator>(
  eventTypes.map((type) => [type, Compile(catalogue[type].schema as TSchema)]),
);

export type Checked<T> = { ok: true; value: T } | { ok: false; errors: string[] };

export function describeErrors(validator: Validator, value: unknown): string[] {
  return [...validator.Errors(value)]
    .filter((e) => e.keyword !== 'boolean')
    .slice(0, 10)
    .map((e) => `${e.instancePath || '/'} ${e.message}`);
}

/** Validates an incoming message: the envelope, then the payload of a catalogued type. */
export function checkEnvelope(value: unknown): Checked<Envelope & DomainEvent> {
  if (!envelopeValidator.Check(value)) return { ok: false, errors: describeErrors(envelopeValidator, value) };
  const envelope = value as Envelope;
  if (!isEventType(envelope.type)) return { ok: false, errors: [`unknown event type ${envelope.type}`] };
  if (catalogue[envelope.type].source !== envelope.source) {
    return {
      ok: false,
      errors: [`${envelope.type} must come from ${catalogue[envelope.type].source}, not ${envelope.source}`],
    };
  }
  const validator = payloadValidators.get(envelope.type);
  if (validator === undefined) return { ok: false, errors: [`no schema for ${envelope.type}`] };
  if (!validator.Check(envelope.data))
    return { ok: false, errors: describeErrors(validator, envelope.data).map((e) => `data${e}`) };
  return { ok: true, value: envelope as Envelope & DomainEvent };
}
