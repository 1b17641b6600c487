// The order-fulfilment saga, as a table. The order itself is step one, done by the
// event that starts the saga; its undo is FailOrder. Stock is reserved, then payment
// taken; CompleteOrder is the pivot: once the order is COMPLETED there is no going
// back, and the stock it holds becomes sold. A failure before the pivot undoes what was
// done, in reverse: refund, release, fail the order. A user's cancellation (the order
// service's OrderCancelled) undoes the order step from outside, so the saga compensates
// the rest and does not need FailOrder.
import type { DomainEvent, StockLine } from '@converge/contracts';
import type { RetryPolicy, SagaDefinition } from '@converge/platform';

export type Fulfilment = { orderId: string; userId: string; items: StockLine[]; totalAmount: number; currency: string };

export type FulfilmentTimings = {
  /** How long a step's first attempt waits for its reply; later attempts wait longer. */
  deadlineMs: number;
  /** Sends of a forward command before the step counts as failed. */
  attempts: number;
  /** Sends of a compensation before the saga is parked for an operator. */
  compensationAttempts: number;
  maxDeadlineMs: number;
};

export const defaultTimings: FulfilmentTimings = {
  deadlineMs: 10_000,
  attempts: 3,
  compensationAttempts: 5,
  maxDeadlineMs: 120_000,
};

/** Steps after which there is no compensation, though they are not the last. */
export const irreversibleSteps = ['complete'] as const;

const reasonOf = (prefix: string) => (reply: DomainEvent) =>
  'reason' in reply.data && typeof reply.data.reason === 'string'
    ? `${prefix}${reply.data.reason}`
    : `${prefix}${reply.type}`;

export function orderFulfilment(timings: FulfilmentTimings = defaultTimings): SagaDefinition<Fulfilment> {
  const retry: RetryPolicy = {
    attempts: timings.attempts,
    deadlineMs: timings.deadlineMs,
    maxDeadlineMs: timings.maxDeadlineMs,
  };
  const undo: RetryPolicy = {
    attempts: timings.compensationAttempts,
    deadlineMs: timings.deadlineMs,
    maxDeadlineMs: timings.maxDeadlineMs,
  };
  // After the pivot a step can only be retried: it gets the compensations' patience.
  const forwardOnly = undo;
  return {
    name: 'order-fulfilment',
    startedBy: 'OrderCreated',
    start: (event) => {
      if (event.type !== 'OrderCreated')
        throw new Error(`order-fulfilment starts with OrderCreated, not ${event.type}`);
      const { orderId, userId, items, totalAmount, currency } = event.data;
      return {
        id: orderId,
        data: {
          orderId,
          userId,
          items: items.map(({ productId, quantity }) => ({ productId, quantity })),
          totalAmount,
          currency,
        },
      };
    },
    steps: [
      {
        name: 'order',
        success: ['OrderCreated'],
        compensation: {
          command: (d, reason) => ({ type: 'FailOrder', subject: d.orderId, data: { orderId: d.orderId, reason } }),
          replies: ['OrderFailed', 'OrderCancelled'],
          retry: undo,
        },
      },
      {
        name: 'reserve',
        command: (d) => ({ type: 'ReserveInventory', subject: d.orderId, data: { ...d } }),
        success: ['InventoryReserved'],
        failure: ['InventoryRejected'],
        reasonOf: reasonOf(''),
        compensation: {
          command: (d, reason) => ({
            type: 'ReleaseInventory',
            subject: d.orderId,
            data: { orderId: d.orderId, reason },
          }),
          replies: ['InventoryReleased'],
          retry: undo,
        },
        retry,
      },
      {
        name: 'pay',
        command: (d) => ({
          type: 'ProcessPayment',
          subject: d.orderId,
          data: { orderId: d.orderId, userId: d.userId, amount: d.totalAmount, currency: d.currency },
        }),
        success: ['PaymentProcessed'],
        failure: ['PaymentFailed'],
        reasonOf: reasonOf('payment failed: '),
        compensation: {
          command: (d, reason) => ({
            type: 'RefundPayment',
            subject: d.orderId,
            data: { orderId: d.orderId, userId: d.userId, amount: d.totalAmount, currency: d.currency, reason },
          }),
          // A refund, or the payment refused for good when nothing had been charged.
          replies: ['PaymentRefunded', 'PaymentFailed'],
          retry: undo,
        },
        retry,
      },
      {
        name: 'complete',
        command: (d) => ({ type: 'CompleteOrder', subject: d.orderId, data: { orderId: d.orderId } }),
        success: ['OrderCompleted'],
        // The user cancelled while payment was being taken: undo everything.
        failure: ['OrderCancelled'],
        reasonOf: () => 'order cancelled',
        compensation: 'none',
        retry: forwardOnly,
      },
      {
        name: 'commit',
        command: (d) => ({ type: 'CommitInventory', subject: d.orderId, data: { orderId: d.orderId } }),
        success: ['InventoryCommitted'],
        compensation: 'none',
        retry: forwardOnly,
      },
    ],
  };
}
