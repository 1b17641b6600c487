// How the order service reacts. Choreography (events):
//   InventoryRejected → FAILED      PaymentFailed → FAILED      PaymentProcessed → COMPLETED
// Orchestration (the saga's commands): FailOrder → FAILED      CompleteOrder → COMPLETED
// Both modes:
//   ProductAdded      → its price enters the local catalogue used to price new orders
// A reply or command about an order that is no longer PENDING (cancelled meanwhile)
// decides nothing: its OrderCancelled already told everyone, the saga included.
import { NotFoundError, PermanentError, type Handler, type SagaMode } from '@converge/platform';
import type { OrderCommand } from './order.ts';
import { executeOrderCommand, upsertCatalogue } from './store.ts';

export const orderSources = (mode: SagaMode): readonly string[] => (mode === 'choreography' ? ['inventory', 'payment'] : ['inventory', 'orchestrator']);

export const orderHandler = (mode: SagaMode): Handler => async (tx, message, { now }) => {
  const choreography = mode === 'choreography';
  let command: OrderCommand;
  let orderId: string;
  switch (message.type) {
    case 'ProductAdded':
      await upsertCatalogue(tx, message.data);
      return;
    case 'CompleteOrder':
      orderId = message.data.orderId;
      command = { type: 'CompleteOrder' };
      break;
    case 'FailOrder':
      orderId = message.data.orderId;
      command = { type: 'FailOrder', reason: message.data.reason };
      break;
    case 'InventoryRejected':
      if (!choreography) return;
      orderId = message.data.orderId;
      command = { type: 'FailOrder', reason: message.data.reason };
      break;
    case 'PaymentFailed':
      if (!choreography) return;
      orderId = message.data.orderId;
      command = { type: 'FailOrder', reason: `payment failed: ${message.data.reason}` };
      break;
    case 'PaymentProcessed':
      if (!choreography) return;
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
