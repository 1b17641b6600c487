// How payment reacts (choreography):
//   InventoryReserved → charge the user through the provider → PaymentProcessed | PaymentFailed
//   OrderCancelled    → refund if charged → PaymentRefunded; before a charge, a tombstone
// The provider is called inside the consumer's transaction with a payment id derived
// from the order: if we crash after the provider answered, the retry gets the same
// answer from it and records it once. A provider outage is a transient error (retry,
// then dead letter); a decline is a business outcome (PaymentFailed).
import type { Handler } from '@converge/platform';
import { decideCancel, decideCharge, paymentIdFor } from './payment.ts';
import type { PaymentProvider } from './provider.ts';
import { insertPayment, isCancelled, lockPayment, markRefunded, recordCancellation } from './store.ts';

export const paymentSources = ['inventory', 'order'] as const;

export function paymentHandler(provider: PaymentProvider): Handler {
  return async (tx, message, { now, emit }) => {
    switch (message.type) {
      case 'InventoryReserved': {
        const { orderId, userId, totalAmount: amount, currency } = message.data;
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
        return;
      }
      case 'OrderCancelled': {
        const { orderId } = message.data;
        await recordCancellation(tx, orderId, now);
        const payment = await lockPayment(tx, orderId);
        if (payment === undefined || decideCancel(payment).kind !== 'refund') return;
        await provider.refund({ paymentId: payment.paymentId });
        await markRefunded(tx, orderId, now);
        await emit([{
          type: 'PaymentRefunded', subject: orderId,
          data: { orderId, paymentId: payment.paymentId, userId: payment.userId, amount: payment.amount, currency: payment.currency },
        }]);
        return;
      }
      default:
        return;
    }
  };
}
