// Payment state: payments (one per order) and cancellation tombstones, always written
// in the consumer's transaction together with the events they cause. A batch's orders
// are loaded in one statement and written back in one.
import type { PaymentStatus } from '@converge/contracts';
import type { Sql } from '@converge/platform';
import type { Payment, PaymentState } from './payment.ts';

type PaymentRow = {
  payment_id: string;
  order_id: string;
  user_id: string;
  amount: number;
  currency: string;
  status: PaymentStatus;
  reason: string | null;
  processed_at: Date;
  refunded_at: Date | null;
};

function toPayment(r: PaymentRow): Payment {
  const base = {
    paymentId: r.payment_id,
    orderId: r.order_id,
    userId: r.user_id,
    amount: r.amount,
    currency: r.currency,
  };
  return r.status === 'FAILED' ? { ...base, status: 'FAILED', reason: r.reason ?? '' } : { ...base, status: r.status };
}

/** The state of each of these orders, in one statement: its payment (row-locked) and whether it was cancelled. */
export async function loadStates(tx: Sql, orderIds: readonly string[]): Promise<Map<string, PaymentState>> {
  const rows = await tx.query<{ i: number; cancelled: boolean } & (PaymentRow | { payment_id: null })>(
    `WITH locked AS MATERIALIZED (
       SELECT * FROM payments WHERE order_id = ANY($1::uuid[]) ORDER BY order_id FOR UPDATE
     )
     SELECT o.i, p.*, EXISTS (SELECT 1 FROM cancelled_orders c WHERE c.order_id = o.order_id) AS cancelled
       FROM unnest($1::uuid[]) WITH ORDINALITY AS o(order_id, i) LEFT JOIN locked p USING (order_id)`,
    [orderIds],
  );
  const states = new Map<string, PaymentState>();
  for (const { i, cancelled, ...row } of rows) {
    const orderId = orderIds[i - 1];
    if (orderId === undefined) continue;
    states.set(orderId, { payment: row.payment_id === null ? undefined : toPayment(row), cancelled });
  }
  return states;
}

export type StateChange = { orderId: string; before: PaymentState; after: PaymentState };

/**
 * Writes back what changed, in one statement: payments inserted or moved on (refunded),
 * cancellations recorded once. A payment's processed_at is when it was first written.
 */
export async function saveStates(tx: Sql, changes: readonly StateChange[], now: Date): Promise<void> {
  const payments = changes.flatMap(({ before, after: { payment: p } }) => {
    if (p === undefined || p.status === before.payment?.status) return [];
    return [
      {
        payment_id: p.paymentId,
        order_id: p.orderId,
        user_id: p.userId,
        amount: p.amount,
        currency: p.currency,
        status: p.status,
        reason: p.status === 'FAILED' ? p.reason : null,
        refunded: p.status === 'REFUNDED',
      },
    ];
  });
  const cancelled = changes.filter(({ before, after }) => after.cancelled && !before.cancelled).map((c) => c.orderId);
  if (payments.length === 0 && cancelled.length === 0) return;
  await tx.query(
    `WITH cancelled AS (
       INSERT INTO cancelled_orders (order_id, at) SELECT unnest($2::uuid[]), $3 ON CONFLICT DO NOTHING
     )
     INSERT INTO payments (payment_id, order_id, user_id, amount, currency, status, reason, processed_at, refunded_at)
     SELECT payment_id, order_id, user_id, amount, currency, status, reason, $3,
            CASE WHEN refunded THEN $3::timestamptz END
       FROM jsonb_to_recordset($1::jsonb)
         AS x(payment_id uuid, order_id uuid, user_id text, amount bigint, currency text, status text, reason text,
              refunded boolean)
     ON CONFLICT (order_id) DO UPDATE
       SET status = excluded.status, reason = excluded.reason, refunded_at = excluded.refunded_at`,
    [JSON.stringify(payments), cancelled, now],
  );
}

export async function findPayments(
  db: Sql,
  filter: { orderId?: string; userId?: string },
  limit: number,
): Promise<Payment[]> {
  const rows = await db.query<PaymentRow>(
    `SELECT * FROM payments WHERE ($1::uuid IS NULL OR order_id = $1) AND ($2::text IS NULL OR user_id = $2)
      ORDER BY processed_at DESC LIMIT $3`,
    [filter.orderId ?? null, filter.userId ?? null, limit],
  );
  return rows.map(toPayment);
}
