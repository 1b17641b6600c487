// A user's orders: a narrow row per order for paged lists, newest first, folded from
// the order service's events only (they arrive in order per order).
import type { DomainEvent } from '@converge/contracts';
import type { OrderStatus } from './order-summary.ts';

export type UserOrder = {
  orderId: string;
  userId: string;
  status: OrderStatus;
  totalAmount: number;
  currency: string;
  lines: number;
  createdAt: string;
  updatedAt: string;
};

/** The row after an order event; undefined for events this model ignores or an order not yet created. */
export function evolveUserOrder(row: UserOrder | undefined, event: DomainEvent & { time: string }): UserOrder | undefined {
  switch (event.type) {
    case 'OrderCreated': {
      const { orderId, userId, totalAmount, currency, items, createdAt } = event.data;
      return { orderId, userId, status: 'PENDING', totalAmount, currency, lines: items.length, createdAt, updatedAt: event.time };
    }
    case 'OrderCompleted':
      return row === undefined ? row : { ...row, status: 'COMPLETED', updatedAt: event.time };
    case 'OrderFailed':
      return row === undefined ? row : { ...row, status: 'FAILED', updatedAt: event.time };
    case 'OrderCancelled':
      return row === undefined ? row : { ...row, status: 'CANCELLED', updatedAt: event.time };
    default:
      return row;
  }
}
