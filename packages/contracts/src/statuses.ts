// The statuses of the entities the services keep, each written once, here: the TS type
// is derived from the schema, the APIs' documents are generated from it, and each
// service's tests check that the CHECK constraint of its table allows exactly these.
import Type, { type Static, type TLiteral, type TUnion } from 'typebox';

export const OrderStatus = Type.Union([
  Type.Literal('PENDING'),
  Type.Literal('COMPLETED'),
  Type.Literal('FAILED'),
  Type.Literal('CANCELLED'),
]);
export type OrderStatus = Static<typeof OrderStatus>;

export const ReservationStatus = Type.Union([
  Type.Literal('RESERVED'),
  Type.Literal('REJECTED'),
  Type.Literal('RELEASED'),
  Type.Literal('COMMITTED'),
]);
export type ReservationStatus = Static<typeof ReservationStatus>;

export const PaymentStatus = Type.Union([Type.Literal('PROCESSED'), Type.Literal('FAILED'), Type.Literal('REFUNDED')]);
export type PaymentStatus = Static<typeof PaymentStatus>;

export const SagaStatus = Type.Union([
  Type.Literal('RUNNING'),
  Type.Literal('COMPENSATING'),
  Type.Literal('COMPLETED'),
  Type.Literal('COMPENSATED'),
  Type.Literal('NEEDS_ATTENTION'),
  Type.Literal('RESOLVED'),
]);
export type SagaStatus = Static<typeof SagaStatus>;

/** The values a union of literals allows, in the schema's order. */
export function literalsOf<S extends TUnion<TLiteral<string>[]>>(schema: S): Static<S>[] {
  return schema.anyOf.map((literal) => literal.const as Static<S>);
}
