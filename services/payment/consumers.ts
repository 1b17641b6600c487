// How payment reacts, a batch at a time (the rules are payment.ts). Choreography:
//   InventoryReserved → charge the user through the provider → PaymentProcessed | PaymentFailed
//   OrderCancelled    → refund if charged → PaymentRefunded; before a charge, a tombstone
// Orchestration (the saga's commands, the same rules):
//   ProcessPayment → charge    RefundPayment → refund, or refuse the charge for good
// The shell loads the batch's orders in one statement, decides each message in memory,
// asks the provider once for the batch's refunds and once for its charges, writes back
// in one statement and emits per message. The provider is called inside the consumer's
// transaction with a payment id derived from the order: if we crash (or the batch fails
// and its messages are retried alone) after the provider answered, the retry gets the
// same answer and records it once. A provider outage is a transient error (retry, then
// dead letter); a decline is a business outcome (PaymentFailed).
import type { BatchHandler, Message, SagaMode } from '@converge/platform';
import { commandOf, decide, initialState, type Decision, type Outcome, type PaymentState } from './payment.ts';
import type { ChargeResult, PaymentProvider } from './provider.ts';
import { loadStates, saveStates } from './store.ts';

export const paymentSources = (mode: SagaMode): readonly string[] =>
  mode === 'choreography' ? ['inventory', 'order'] : ['orchestrator'];

type Decided = { message: Message; orderId: string; before: PaymentState; decision: Decision };

export function paymentBatchHandler(provider: PaymentProvider, mode: SagaMode): BatchHandler {
  return async (tx, messages, { now, emit }) => {
    const asked = messages.flatMap((message) => {
      const command = commandOf(message, mode);
      return command === undefined ? [] : [{ message, command }];
    });
    if (asked.length === 0) return;
    const states = await loadStates(
      tx,
      asked.map(({ command }) => command.orderId),
    );
    const decided = asked.map(({ message, command }): Decided => {
      const before = states.get(command.orderId) ?? initialState;
      return { message, orderId: command.orderId, before, decision: decide(before, command) };
    });

    // Refunds first: money given back in this batch can pay for a charge in it.
    const refunds = decided.flatMap(({ decision }) =>
      decision.kind === 'refund' ? [{ paymentId: decision.paymentId }] : [],
    );
    await provider.refundMany(refunds);
    const charges = decided.flatMap(({ decision }) => (decision.kind === 'charge' ? [decision.request] : []));
    const results = await provider.chargeMany(charges);
    const answers = new Map(charges.map((request, k) => [request.paymentId, results[k]]));
    const settle = (decision: Decision): Outcome => {
      switch (decision.kind) {
        case 'done':
          return decision;
        case 'refund':
          return decision.settle();
        case 'charge':
          return decision.settle(answers.get(decision.request.paymentId) ?? unanswered(decision.request.paymentId));
      }
    };

    const outcomes = decided.map((d) => ({ ...d, after: settle(d.decision) }));
    await saveStates(
      tx,
      outcomes.map(({ orderId, before, after }) => ({ orderId, before, after: after.state })),
      now,
    );
    for (const { message, orderId, after } of outcomes)
      emit(
        message,
        after.events.map((event) => ({ ...event, subject: orderId })),
      );
  };
}

function unanswered(paymentId: string): ChargeResult {
  throw new Error(`the provider gave no answer for payment ${paymentId}`);
}
