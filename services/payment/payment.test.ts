// Payment's rules, pure: given what payment knows of an order, when a message asks
// something of it (and the provider answers), then this state and these events.
import type { DomainEvent } from '@converge/contracts';
import { describe, expect, it } from 'vitest';
import {
  commandOf,
  decide,
  initialState,
  paymentIdFor,
  type Decision,
  type Outcome,
  type Payment,
  type PaymentCommand,
  type PaymentState,
} from './payment.ts';
import type { ChargeResult } from './provider.ts';

const orderId = '00000000-0000-4000-8000-000000000001';
const paymentId = paymentIdFor(orderId);
const payer = { userId: 'ada', amount: 700, currency: 'EUR' };

const charge: PaymentCommand = { type: 'Charge', orderId, ...payer };
const cancel: PaymentCommand = { type: 'Cancel', orderId };
const refundCommand: PaymentCommand = {
  type: 'Cancel',
  orderId,
  unpaid: { ...payer, reason: 'cancelled before payment: no stock' },
};

const processed: Payment = { status: 'PROCESSED', paymentId, orderId, ...payer };
const given = (state: Partial<PaymentState>): PaymentState => ({ ...initialState, ...state });

/** Decides, answering the provider's call (if any) with `answer`. */
function settled(decision: Decision, answer?: ChargeResult): Outcome {
  if (decision.kind === 'done') return decision;
  if (decision.kind === 'refund') return decision.settle();
  if (answer === undefined) throw new Error('the charge needs an answer');
  return decision.settle(answer);
}

describe('a charge (InventoryReserved, ProcessPayment)', () => {
  it(
    'given nothing yet, when asked to charge, then the provider is ' +
      'asked with the payment id derived from the order',
    () => {
      const decision = decide(initialState, charge);
      expect(decision).toMatchObject({ kind: 'charge', request: { paymentId, ...payer } });
    },
  );

  it('given nothing yet, when the provider approves, then the payment is PROCESSED and PaymentProcessed told', () => {
    expect(settled(decide(initialState, charge), { status: 'approved' })).toEqual({
      kind: 'done',
      state: { payment: processed, cancelled: false },
      events: [{ type: 'PaymentProcessed', data: { orderId, paymentId, ...payer } }],
    });
  });

  it(
    'given nothing yet, when the provider declines, then the payment ' +
      'is FAILED with its reason and PaymentFailed told',
    () => {
      const { userId, amount } = payer;
      expect(settled(decide(initialState, charge), { status: 'declined', reason: 'insufficient credit' })).toEqual({
        kind: 'done',
        state: {
          payment: { status: 'FAILED', paymentId, orderId, ...payer, reason: 'insufficient credit' },
          cancelled: false,
        },
        events: [
          { type: 'PaymentFailed', data: { orderId, paymentId, userId, amount, reason: 'insufficient credit' } },
        ],
      });
    },
  );

  it('given a cancellation seen first, when asked to charge, then it is refused without asking the provider', () => {
    const decision = decide(given({ cancelled: true }), charge);
    expect(decision.kind).toBe('done');
    expect(settled(decision)).toMatchObject({
      state: { payment: { status: 'FAILED', reason: 'order cancelled before payment' }, cancelled: true },
      events: [{ type: 'PaymentFailed', data: { orderId, paymentId, reason: 'order cancelled before payment' } }],
    });
  });

  it.each([
    ['PROCESSED', processed],
    ['FAILED', { ...processed, status: 'FAILED', reason: 'insufficient credit' } as const],
    ['REFUNDED', { ...processed, status: 'REFUNDED' } as const],
  ])('given a payment %s, when asked to charge again, then nothing happens', (_, payment) => {
    const state = given({ payment });
    expect(decide(state, charge)).toEqual({ kind: 'done', state, events: [] });
  });
});

describe('a cancellation (OrderCancelled)', () => {
  it(
    'given a payment PROCESSED, when the order is cancelled, then the ' +
      'provider refunds it, it is REFUNDED and PaymentRefunded told',
    () => {
      const decision = decide(given({ payment: processed }), cancel);
      expect(decision).toMatchObject({ kind: 'refund', paymentId });
      expect(settled(decision)).toEqual({
        kind: 'done',
        state: { payment: { ...processed, status: 'REFUNDED' }, cancelled: true },
        events: [{ type: 'PaymentRefunded', data: { orderId, paymentId, ...payer } }],
      });
    },
  );

  it('given nothing yet, when the order is cancelled, then a tombstone only, and a later charge is refused', () => {
    const outcome = settled(decide(initialState, cancel));
    expect(outcome).toEqual({ kind: 'done', state: { payment: undefined, cancelled: true }, events: [] });
    expect(decide(outcome.state, charge)).toMatchObject({ kind: 'done', state: { payment: { status: 'FAILED' } } });
  });

  it.each([
    ['FAILED', { ...processed, status: 'FAILED', reason: 'insufficient credit' } as const],
    ['REFUNDED', { ...processed, status: 'REFUNDED' } as const],
  ])('given a payment %s, when the order is cancelled, then nothing is refunded', (_, payment) => {
    expect(decide(given({ payment }), cancel)).toEqual({
      kind: 'done',
      state: { payment, cancelled: true },
      events: [],
    });
  });
});

describe("the saga's refund (RefundPayment)", () => {
  it(
    'given nothing yet, when asked to refund, then the payment is FAILED ' +
      'and PaymentFailed told, since the saga waits for an answer',
    () => {
      const { userId, amount } = payer;
      const reason = 'cancelled before payment: no stock';
      const outcome = settled(decide(initialState, refundCommand));
      expect(outcome).toEqual({
        kind: 'done',
        state: { payment: { status: 'FAILED', paymentId, orderId, ...payer, reason }, cancelled: true },
        events: [{ type: 'PaymentFailed', data: { orderId, paymentId, userId, amount, reason } }],
      });
      expect(decide(outcome.state, charge)).toEqual({ kind: 'done', state: outcome.state, events: [] });
    },
  );

  it('given a payment PROCESSED, when asked to refund, then the provider refunds it', () => {
    const decision = decide(given({ payment: processed }), refundCommand);
    expect(decision).toMatchObject({ kind: 'refund', paymentId });
    expect(settled(decision).events).toMatchObject([{ type: 'PaymentRefunded' }]);
  });

  it('given it was refunded already, when asked again, then nothing more', () => {
    const state = given({ payment: { ...processed, status: 'REFUNDED' }, cancelled: true });
    expect(decide(state, refundCommand)).toEqual({ kind: 'done', state, events: [] });
  });
});

describe('what a message asks of payment, by saga mode', () => {
  const userId = payer.userId;
  const reserved: DomainEvent = {
    type: 'InventoryReserved',
    data: { orderId, userId, items: [{ productId: orderId, quantity: 1 }], totalAmount: 700, currency: 'EUR' },
  };
  const cancelled: DomainEvent = { type: 'OrderCancelled', data: { orderId, userId, reason: 'changed my mind' } };
  const process: DomainEvent = { type: 'ProcessPayment', data: { orderId, ...payer } };
  const refund: DomainEvent = { type: 'RefundPayment', data: { orderId, ...payer, reason: 'no stock' } };

  it('in choreography, InventoryReserved charges and OrderCancelled cancels', () => {
    expect(commandOf(reserved, 'choreography')).toEqual(charge);
    expect(commandOf(cancelled, 'choreography')).toEqual(cancel);
  });

  it("in orchestration, only the saga's commands count", () => {
    expect(commandOf(reserved, 'orchestration')).toBeUndefined();
    expect(commandOf(cancelled, 'orchestration')).toBeUndefined();
    expect(commandOf(process, 'orchestration')).toEqual(charge);
    expect(commandOf(refund, 'orchestration')).toEqual(refundCommand);
  });
});
