// A user's orders: a narrow row per order for paged lists, newest first, folded from
// the order service's events only (they arrive in order per order).
import type { DomainEvent } from '@converge/contracts';
import type { Sql } from '@converge/platform';
import { readModel, type SaveTo } from '../read-model.ts';
import { orderOf, summarises, type OrderStatus } from './order-summary.ts';

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
export function evolveUserOrder(
  row: UserOrder | undefined,
  event: DomainEvent & { time: string },
): UserOrder | undefined {
  switch (event.type) {
    case 'OrderCreated': {
      const { orderId, userId, totalAmount, currency, items, createdAt } = event.data;
      return {
        orderId,
        userId,
        status: 'PENDING',
        totalAmount,
        currency,
        lines: items.length,
        createdAt,
        updatedAt: event.time,
      };
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

type UserOrderRow = {
  order_id: string;
  user_id: string;
  status: UserOrder['status'];
  total_amount: number;
  currency: string;
  lines: number;
  created_at: Date;
  updated_at: Date;
};
const toUserOrder = (r: UserOrderRow): UserOrder => ({
  orderId: r.order_id,
  userId: r.user_id,
  status: r.status,
  totalAmount: r.total_amount,
  currency: r.currency,
  lines: r.lines,
  createdAt: r.created_at.toISOString(),
  updatedAt: r.updated_at.toISOString(),
});

/** Every stored row, as documents (the invariant checker compares them with the fold). */
export async function allUserOrders(db: Sql): Promise<Map<string, UserOrder>> {
  const rows = await db.query<UserOrderRow>('SELECT * FROM user_orders');
  return new Map(rows.map((r) => [r.order_id, toUserOrder(r)]));
}

// Rows are locked and written in key order, so two instances lock them in the same order.
async function loadUserOrders(tx: Sql, orderIds: readonly string[]): Promise<Map<string, UserOrder>> {
  const rows = await tx.query<UserOrderRow>(
    'SELECT * FROM user_orders WHERE order_id = ANY($1::uuid[]) ORDER BY order_id FOR UPDATE',
    [[...orderIds]],
  );
  return new Map(rows.map((r) => [r.order_id, toUserOrder(r)]));
}

async function saveUserOrders(tx: Sql, rows: readonly UserOrder[], { table }: SaveTo): Promise<[]> {
  if (rows.length === 0) return [];
  await tx.query(
    `INSERT INTO ${table} (order_id, user_id, status, total_amount, currency, lines, created_at, updated_at)
     SELECT x.order_id, x.user_id, x.status, x.total_amount, x.currency, x.lines, x.created_at, x.updated_at
       FROM jsonb_to_recordset($1::jsonb)
         AS x(order_id uuid, user_id text, status text, total_amount bigint, currency text, lines int,
              created_at timestamptz, updated_at timestamptz)
      ORDER BY x.order_id
     ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at`,
    [
      JSON.stringify(
        rows.map((r) => ({
          order_id: r.orderId,
          user_id: r.userId,
          status: r.status,
          total_amount: r.totalAmount,
          currency: r.currency,
          lines: r.lines,
          created_at: r.createdAt,
          updated_at: r.updatedAt,
        })),
      ),
    ],
  );
  return [];
}

export const userOrders = readModel({
  name: 'user-orders',
  table: 'user_orders',
  keysOf: (event) => {
    const orderId = orderOf(event);
    return event.source === 'order' && orderId !== undefined && summarises(event.type) ? [orderId] : [];
  },
  evolve: (row: UserOrder | undefined, event) => evolveUserOrder(row, event),
  load: loadUserOrders,
  save: saveUserOrders,
});

/** Where a page of a user's orders ends: the last order's creation time and id. */
export type UserOrdersCursor = { createdAt: string; orderId: string };

export async function listUserOrders(
  db: Sql,
  userId: string,
  options: { limit: number; status?: string | undefined; after?: UserOrdersCursor | undefined },
): Promise<UserOrder[]> {
  const rows = await db.query<UserOrderRow>(
    `SELECT * FROM user_orders
      WHERE user_id = $1 AND ($2::text IS NULL OR status = $2)
        AND ($3::timestamptz IS NULL OR (created_at, order_id) < ($3::timestamptz, $4::uuid))
      ORDER BY created_at DESC, order_id DESC LIMIT $5`,
    [userId, options.status ?? null, options.after?.createdAt ?? null, options.after?.orderId ?? null, options.limit],
  );
  return rows.map(toUserOrder);
}
