// Payment state: payments (one per order) and cancellation tombstones, always written
// in the consumer's transaction together with the events they cause.
import type { Sql } from '@converge/platform';
import type { Payment } from './payment.ts';

type PaymentRow = {
  payment_id: string; order_id: string; user_id: string; amount: number; currency: string;
  status: Payment['status']; reason: string | null; processed_at: Date; refunded_at: Date | null;
};

function toPayment(r: PaymentRow): Payment {
  const base = { paymentId: r.payment_id, orderId: r.order_id, userId: r.user_id, amount: r.amount, currency: r.currency };
  return r.status === 'FAILED' ? { ...base, status: 'FAILED', reason: r.reason ?? '' } : { ...base, status: r.status };
}

export async function lockPayment(tx: Sql, orderId: string): Promise<Payment | undefined> {
  const [row] = await tx.query<PaymentRow>('SELECT * FROM payments WHERE order_id = $1 FOR UPDATE', [orderId]);
  return row === undefined ? undefined : toPayment(row);
}

export async function insertPayment(tx: Sql, payment: Payment, now: Date): Promise<void> {
  await tx.query(
    `INSERT INTO payments (payment_id, order_id, user_id, amount, currency, status, reason, processed_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
    [payment.paymentId, payment.orderId, payment.userId, payment.amount, payment.currency, payment.status,
      payment.status === 'FAILED' ? payment.reason : null, now],
  );
}

export async function markRefunded(tx: Sql, orderId: string, now: Date): Promise<void> {
  await tx.query(`UPDATE payments SET status = 'REFUNDED', refunded_at = $2 WHERE order_id = $1 AND status = 'PROCESSED'`, [orderId, now]);
}

/** Records that the order was cancelled (once). */
export async function recordCancellation(tx: Sql, orderId: string, now: Date): Promise<void> {
  await tx.query('INSERT INTO cancelled_orders (order_id, at) VALUES ($1, $2) ON CONFLICT DO NOTHING', [orderId, now]);
}

export async function isCancelled(tx: Sql, orderId: string): Promise<boolean> {
  const [row] = await tx.query('SELECT 1 FROM cancelled_orders WHERE order_id = $1', [orderId]);
  return row !== undefined;
}

export async function findPayments(db: Sql, filter: { orderId?: string; userId?: string }, limit: number): Promise<Payment[]> {
  const rows = await db.query<PaymentRow>(
    `SELECT * FROM payments WHERE ($1::uuid IS NULL OR order_id = $1) AND ($2::text IS NULL OR user_id = $2)
      ORDER BY processed_at DESC LIMIT $3`,
    [filter.orderId ?? null, filter.userId ?? null, limit],
  );
  return rows.map(toPayment);
}
