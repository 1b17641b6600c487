// Payment rules, pure. What payment knows of an order is its payment, if any, and
// whether a cancellation was seen; `decide` turns a message and that state into the new
// state and the events to tell. Charging and refunding need the provider's answer, so
// for those `decide` returns the call to make and a `settle` that finishes the decision
// once the answer is in: the shell makes every call of a batch at once.
//
// Refund before charge: a cancellation seen first leaves a tombstone, and a later charge
// is refused without asking the provider. The saga's RefundPayment waits for an answer,
// so before any charge it records the payment as FAILED and says so (PaymentFailed).
//
// A payment's id is derived from its order's id, so however often a charge is asked
// for, the provider sees one payment id and charges at most once.
import crypto from 'node:crypto';
import type { DomainEvent } from '@converge/contracts';
import type { SagaMode } from '@converge/platform';
import type { ChargeRequest, ChargeResult } from './provider.ts';

export type Payment =
  | { status: 'PROCESSED'; paymentId: string; orderId: string; userId: string; amount: number; currency: string }
  | {
      status: 'FAILED';
      paymentId: string;
      orderId: string;
      userId: string;
      amount: number;
      currency: string;
      reason: string;
    }
  | { status: 'REFUNDED'; paymentId: string; orderId: string; userId: string; amount: number; currency: string };

export type PaymentState = { payment: Payment | undefined; cancelled: boolean };

export const initialState: PaymentState = { payment: undefined, cancelled: false };

type Payer = { userId: string; amount: number; currency: string };

/** What a message asks of payment, in either saga mode. */
export type PaymentCommand =
  | ({ type: 'Charge'; orderId: string } & Payer)
  /** `unpaid`: what to record and answer when nothing was charged yet; without it, a tombstone only. */
  | { type: 'Cancel'; orderId: string; unpaid?: Payer & { reason: string } };

export type PaymentEvent = Extract<DomainEvent, { type: 'PaymentProcessed' | 'PaymentFailed' | 'PaymentRefunded' }>;

export type Outcome = { kind: 'done'; state: PaymentState; events: PaymentEvent[] };

export type Decision =
  | Outcome
  | { kind: 'charge'; request: ChargeRequest; settle: (result: ChargeResult) => Outcome }
  | { kind: 'refund'; paymentId: string; settle: () => Outcome };

const namespace = Buffer.from('6f1c7a52a4f34c0c9d3e0b6a5e8f2d41', 'hex');

/** A name-based (version 5) UUID for the order's payment. */
export function paymentIdFor(orderId: string): string {
  const hash = crypto.createHash('sha1').update(namespace).update(`payment:${orderId}`).digest();
  hash[6] = ((hash[6] ?? 0) & 0x0f) | 0x50;
  hash[8] = ((hash[8] ?? 0) & 0x3f) | 0x80;
  const hex = hash.subarray(0, 16).toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * Choreography charges on InventoryReserved and refunds on OrderCancelled; orchestration does what the saga's commands
 * say.
 */
export function commandOf(message: DomainEvent, mode: SagaMode): PaymentCommand | undefined {
  const choreography = mode === 'choreography';
  switch (message.type) {
    case 'InventoryReserved': {
      const { orderId, userId, totalAmount: amount, currency } = message.data;
      return choreography ? { type: 'Charge', orderId, userId, amount, currency } : undefined;
    }
    case 'OrderCancelled':
      return choreography ? { type: 'Cancel', orderId: message.data.orderId } : undefined;
    case 'ProcessPayment':
      return { type: 'Charge', ...message.data };
    case 'RefundPayment': {
      const { orderId, reason, ...payer } = message.data;
      return { type: 'Cancel', orderId, unpaid: { ...payer, reason: `cancelled before payment: ${reason}` } };
    }
    default:
      return undefined;
  }
}

const done = (state: PaymentState, events: PaymentEvent[] = []): Outcome => ({ kind: 'done', state, events });

function failed(state: PaymentState, orderId: string, payer: Payer, reason: string): Outcome {
  const { userId, amount, currency } = payer;
  const paymentId = paymentIdFor(orderId);
  return done({ ...state, payment: { status: 'FAILED', paymentId, orderId, userId, amount, currency, reason } }, [
    { type: 'PaymentFailed', data: { orderId, paymentId, userId, amount, reason } },
  ]);
}

function charge(state: PaymentState, command: Extract<PaymentCommand, { type: 'Charge' }>): Decision {
  const { orderId, userId, amount, currency } = command;
  if (state.payment !== undefined) return done(state);
  if (state.cancelled) return failed(state, orderId, command, 'order cancelled before payment');
  const paymentId = paymentIdFor(orderId);
  return {
    kind: 'charge',
    request: { paymentId, userId, amount, currency },
    settle: (result) =>
      result.status === 'declined'
        ? failed(state, orderId, command, result.reason)
        : done({ ...state, payment: { status: 'PROCESSED', paymentId, orderId, userId, amount, currency } }, [
            { type: 'PaymentProcessed', data: { orderId, paymentId, userId, amount, currency } },
          ]),
  };
}

function cancel(state: PaymentState, command: Extract<PaymentCommand, { type: 'Cancel' }>): Decision {
  const cancelled = { ...state, cancelled: true };
  const { payment } = state;
  if (payment === undefined)
    return command.unpaid === undefined
      ? done(cancelled)
      : failed(cancelled, command.orderId, command.unpaid, command.unpaid.reason);
  if (payment.status !== 'PROCESSED') return done(cancelled);
  const { paymentId, orderId, userId, amount, currency } = payment;
  return {
    kind: 'refund',
    paymentId,
    settle: () =>
      done({ ...cancelled, payment: { ...payment, status: 'REFUNDED' } }, [
        { type: 'PaymentRefunded', data: { orderId, paymentId, userId, amount, currency } },
      ]),
  };
}

export function decide(state: PaymentState, command: PaymentCommand): Decision {
  switch (command.type) {
    case 'Charge':
      return charge(state, command);
    case 'Cancel':
      return cancel(state, command);
    default:
      return assertNever(command);
  }
}

function assertNever(value: never): never {
  throw new Error(`unexpected command ${JSON.stringify(value)}`);
}
