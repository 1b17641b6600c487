// How the order service reacts (choreography):
//   InventoryRejected → FAILED      PaymentFailed → FAILED      PaymentProcessed → COMPLETED
//   ProductAdded      → its price enters the local catalogue used to price new orders
// A reply about an order that is no longer PENDING (cancelled meanwhile) decides
// nothing: payment refunds on its own when it sees the cancellation.
import { NotFoundError, PermanentError, type Handler } from '@converge/platform';
import type { OrderCommand } from './order.ts';
import { executeOrderCommand, upsertCatalogue } from './store.ts';

export const orderSources = ['inventory', 'payment'] as const;

export const handleOrderMessage: Handler = async (tx, message, { now }) => {
  let command: OrderCommand;
  let orderId: string;
  switch (message.type) {
    case 'ProductAdded':
      await upsertCatalogue(tx, message.data);
      return;
    case 'InventoryRejected':
      orderId = message.data.orderId;
      command = { type: 'FailOrder', reason: message.data.reason };
      break;
    case 'PaymentFailed':
      orderId = message.data.orderId;
      command = { type: 'FailOrder', reason: `payment failed: ${message.data.reason}` };
      break;
    case 'PaymentProcessed':
      orderId = message.data.orderId;
      command = { type: 'CompleteOrder' };
      break;
    default:
      return;
  }
  try {
    await executeOrderCommand(tx, orderId, command, {
      source: 'order', now, correlationId: message.correlationid, causationId: message.id,
      ...(message.traceparent === undefined ? {} : { traceparent: message.traceparent }),
    });
  } catch (error) {
    if (error instanceof NotFoundError) throw new PermanentError(`${message.type} for unknown order ${orderId}`, 'unknown order');
    throw error;
  }
};
