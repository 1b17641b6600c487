// How payment reacts. Choreography (events):
//   InventoryReserved → charge the user through the provider → PaymentProcessed | PaymentFailed
//   OrderCancelled    → refund if charged → PaymentRefunded; before a charge, a tombstone
// Orchestration (the saga's commands, the same rules):
//   ProcessPayment → charge    RefundPayment → refund, or refuse the charge for good
// A RefundPayment before any charge records the payment as FAILED and says so
// (PaymentFailed): the saga waits for an answer, and a charge retried later finds it.
// The provider is called inside the consumer's transaction with a payment id derived
// from the order: if we crash after the provider answered, the retry gets the same
// answer from it and records it once. A provider outage is a transient error (retry,
// then dead letter); a decline is a business outcome (PaymentFailed).
import type { HandlerContext, SagaMode, Sql } from '@converge/platform';
import type { Handler } from '@converge/platform';
import { decideCancel, decideCharge, paymentIdFor } from './payment.ts';
import type { PaymentProvider } from './provider.ts';
import { insertPayment, isCancelled, lockPayment, markRefunded, recordCancellation } from './store.ts';

export const paymentSources = (mode: SagaMode): readonly string[] => (mode === 'choreography' ? ['inventory', 'order'] : ['orchestrator']);

type ChargeRequest = { orderId: string; userId: string; amount: number; currency: string };

async function charge(tx: Sql, provider: PaymentProvider, request: ChargeRequest, { now, emit }: HandlerContext): Promise<void> {
  const { orderId, userId, amount, currency } = request;
  const paymentId = paymentIdFor(orderId);
  const decision = decideCharge(await lockPayment(tx, orderId), await isCancelled(tx, orderId));
  if (decision.kind === 'nothing') return;
  const result = decision.kind === 'refuse'
    ? { status: 'declined' as const, reason: decision.reason }
    : await provider.charge({ paymentId, userId, amount, currency });
  if (result.status === 'approved') {
    await insertPayment(tx, { status: 'PROCESSED', paymentId, orderId, userId, amount, currency }, now);
    await emit([{ type: 'PaymentProcessed', subject: orderId, data: { orderId, paymentId, userId, amount, currency } }]);
  } else {
    await insertPayment(tx, { status: 'FAILED', paymentId, orderId, userId, amount, currency, reason: result.reason }, now);
    await emit([{ type: 'PaymentFailed', subject: orderId, data: { orderId, paymentId, userId, amount, reason: result.reason } }]);
  }
}

/** `before`: what to record when nothing was charged yet (orchestration), or undefined for a tombstone only. */
async function refund(
  tx: Sql, provider: PaymentProvider, orderId: string, before: { userId: string; amount: number; currency: string; reason: string } | undefined, { now, emit }: HandlerContext,
): Promise<void> {
  await recordCancellation(tx, orderId, now);
  const payment = await lockPayment(tx, orderId);
  if (payment === undefined) {
    if (before === undefined) return;
    const { userId, amount, currency, reason } = before;
    const paymentId = paymentIdFor(orderId);
    await insertPayment(tx, { status: 'FAILED', paymentId, orderId, userId, amount, currency, reason }, now);
    await emit([{ type: 'PaymentFailed', subject: orderId, data: { orderId, paymentId, userId, amount, reason } }]);
    return;
  }
  if (decideCancel(payment).kind !== 'refund') return;
  await provider.refund({ paymentId: payment.paymentId });
  await markRefunded(tx, orderId, now);
  await emit([{
    type: 'PaymentRefunded', subject: orderId,
    data: { orderId, paymentId: payment.paymentId, userId: payment.userId, amount: payment.amount, currency: payment.currency },
  }]);
}

export function paymentHandler(provider: PaymentProvider, mode: SagaMode): Handler {
  const choreography = mode === 'choreography';
  return async (tx, message, context) => {
    switch (message.type) {
      case 'InventoryReserved': {
        if (!choreography) return;
        const { orderId, userId, totalAmount: amount, currency } = message.data;
        return charge(tx, provider, { orderId, userId, amount, currency }, context);
      }
      case 'OrderCancelled':
        return choreography ? refund(tx, provider, message.data.orderId, undefined, context) : undefined;
      case 'ProcessPayment':
        return charge(tx, provider, message.data, context);
      case 'RefundPayment': {
        const { orderId, reason, ...payer } = message.data;
        return refund(tx, provider, orderId, { ...payer, reason: `cancelled before payment: ${reason}` }, context);
      }
      default:
        return undefined;
    }
  };
}
