// An order's life, pure. State is a fold of its events; `decide` turns a command and
// the current state into new events or a refusal. PENDING is the only state that
// moves; every later message about a final order decides nothing, which is what makes
// races (a payment reply after a cancel, a duplicate rejection) converge.
import type { DomainEvent, OrderLine } from '@converge/contracts';
import { ConflictError } from '@converge/platform';

type Placed = {
  orderId: string;
  userId: string;
  items: OrderLine[];
  totalAmount: number;
  currency: string;
  createdAt: string;
  version: number;
};

export type Order =
  | { status: 'NONE'; version: 0 }
  | (Placed & { status: 'PENDING' })
  | (Placed & { status: 'COMPLETED' })
  | (Placed & { status: 'FAILED'; reason: string })
  | (Placed & { status: 'CANCELLED'; reason: string });

export type OrderEvent = Extract<
  DomainEvent,
  { type: 'OrderCreated' | 'OrderCompleted' | 'OrderFailed' | 'OrderCancelled' }
>;

export type OrderCommand =
  | { type: 'PlaceOrder'; orderId: string; userId: string; items: OrderLine[]; currency: string; now: Date }
  | { type: 'CompleteOrder' }
  | { type: 'FailOrder'; reason: string }
  | { type: 'CancelOrder'; reason: string };

export const initialOrder: Order = { status: 'NONE', version: 0 };

export function evolve(state: Order, event: OrderEvent): Order {
  const version = state.version + 1;
  switch (event.type) {
    case 'OrderCreated': {
      const { orderId, userId, items, totalAmount, currency, createdAt } = event.data;
      return { status: 'PENDING', orderId, userId, items, totalAmount, currency, createdAt, version };
    }
    case 'OrderCompleted':
      return state.status === 'NONE' ? state : { ...state, status: 'COMPLETED', version };
    case 'OrderFailed':
      return state.status === 'NONE' ? state : { ...state, status: 'FAILED', reason: event.data.reason, version };
    case 'OrderCancelled':
      return state.status === 'NONE' ? state : { ...state, status: 'CANCELLED', reason: event.data.reason, version };
    default:
      return assertNever(event);
  }
}

export function totalOf(items: readonly OrderLine[]): number {
  return items.reduce((sum, line) => sum + line.quantity * line.unitPrice, 0);
}

export function decide(command: OrderCommand, state: Order): OrderEvent[] {
  switch (command.type) {
    case 'PlaceOrder': {
      if (state.status !== 'NONE') throw new ConflictError(`order ${command.orderId} exists`);
      const { orderId, userId, items, currency, now } = command;
      return [
        {
          type: 'OrderCreated',
          data: { orderId, userId, items, totalAmount: totalOf(items), currency, createdAt: now.toISOString() },
        },
      ];
    }
    case 'CompleteOrder':
      if (state.status !== 'PENDING') return [];
      return [
        {
          type: 'OrderCompleted',
          data: {
            orderId: state.orderId,
            userId: state.userId,
            totalAmount: state.totalAmount,
            currency: state.currency,
          },
        },
      ];
    case 'FailOrder':
      if (state.status !== 'PENDING') return [];
      return [{ type: 'OrderFailed', data: { orderId: state.orderId, userId: state.userId, reason: command.reason } }];
    case 'CancelOrder':
      if (state.status === 'CANCELLED') return [];
      if (state.status !== 'PENDING') {
        throw new ConflictError(
          state.status === 'NONE' ? 'no such order' : `order is ${state.status} and can no longer be cancelled`,
        );
      }
      return [
        { type: 'OrderCancelled', data: { orderId: state.orderId, userId: state.userId, reason: command.reason } },
      ];
    default:
      return assertNever(command);
  }
}

function assertNever(value: never): never {
  throw new Error(`unexpected ${JSON.stringify(value)}`);
}
