// The payment provider is an interface: charge and refund, a batch at a time, both
// idempotent by payment id, as real providers are with idempotency keys. The default
// implementation is simulated, with per-user credit in a database of its own, so a
// decline is a real business outcome and money is conserved. A batch of charges is one
// transaction: the users' credit is read once, each charge decided in memory in order,
// everything written in one statement. It can be told to fail or to be slow (a batch is
// one call), for tests and chaos runs.
import type { Db } from '@converge/platform';
import { sleep } from '@converge/platform';

export type ChargeRequest = { paymentId: string; userId: string; amount: number; currency: string };
export type ChargeResult = { status: 'approved' } | { status: 'declined'; reason: string };

/** A batch of charges is answered in request order; one user's charges draw on their credit one after another. */
export interface PaymentProvider {
  chargeMany(requests: readonly ChargeRequest[]): Promise<ChargeResult[]>;
  refundMany(requests: readonly { paymentId: string }[]): Promise<void>;
}

export class ProviderUnavailableError extends Error {
  override readonly name = 'ProviderUnavailableError';
}

export type ProviderFaults = {
  /** Every call (a batch of charges or of refunds is one call) fails as if the provider were down. */
  down: boolean;
  /** The next n calls fail. */
  failNext: number;
  /** Each call takes this long. */
  delayMs: number;
  /** Refunds fail as if the provider were down; charges still work. */
  refundsDown: boolean;
};

export type SimulatedProvider = PaymentProvider & {
  readonly db: Db;
  faults: ProviderFaults;
  credit(userId: string): Promise<number | undefined>;
  deposit(userId: string, amount: number): Promise<number>;
};

export function simulatedProvider(db: Db): SimulatedProvider {
  const faults: ProviderFaults = { down: false, failNext: 0, delayMs: 0, refundsDown: false };
  const disturb = async () => {
    if (faults.delayMs > 0) await sleep(faults.delayMs);
    if (faults.down) throw new ProviderUnavailableError('payment provider unavailable');
    if (faults.failNext > 0) {
      faults.failNext -= 1;
      throw new ProviderUnavailableError('payment provider failed (injected)');
    }
  };
  return {
    db,
    faults,
    chargeMany: async (requests) => {
      if (requests.length === 0) return [];
      await disturb();
      return db.transaction(async (tx) => {
        // One row per request: the first answer to its payment id, if any, and its user's
        // credit, the accounts locked in one order (two batches of charges never deadlock).
        const known = await tx.query<{ status: string | null; reason: string | null; credit: number | null }>(
          `WITH accounts AS MATERIALIZED (
             SELECT user_id, credit FROM provider_accounts WHERE user_id = ANY($2::text[]) ORDER BY user_id FOR UPDATE
           )
           SELECT c.status, c.reason, a.credit
             FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS r(payment_id, user_id, i)
             LEFT JOIN provider_charges c ON c.payment_id = r.payment_id LEFT JOIN accounts a ON a.user_id = r.user_id
            ORDER BY r.i`,
          [requests.map((r) => r.paymentId), requests.map((r) => r.userId)],
        );
        const answers = new Map<string, ChargeResult>();
        const credit = new Map<string, number>();
        for (const [k, { paymentId, userId }] of requests.entries()) {
          const row = known[k];
          if (row?.status != null)
            answers.set(
              paymentId,
              row.status === 'declined'
                ? { status: 'declined', reason: row.reason ?? 'declined' }
                : { status: 'approved' },
            );
          if (row?.credit != null && !credit.has(userId)) credit.set(userId, row.credit);
        }
        // In request order, so one user's charges take their credit one after another.
        const fresh: {
          payment_id: string;
          user_id: string;
          amount: number;
          status: 'captured' | 'declined';
          reason: string | null;
        }[] = [];
        const results = requests.map(({ paymentId, userId, amount }): ChargeResult => {
          const previous = answers.get(paymentId);
          if (previous !== undefined) return previous;
          const available = credit.get(userId);
          const result: ChargeResult =
            available === undefined
              ? { status: 'declined', reason: 'no payment account' }
              : available < amount
                ? { status: 'declined', reason: 'insufficient credit' }
                : { status: 'approved' };
          if (available !== undefined && result.status === 'approved') credit.set(userId, available - amount);
          answers.set(paymentId, result);
          fresh.push({
            payment_id: paymentId,
            user_id: userId,
            amount,
            status: result.status === 'approved' ? 'captured' : 'declined',
            reason: result.status === 'declined' ? result.reason : null,
          });
          return result;
        });
        if (fresh.length > 0) {
          await tx.query(
            `WITH charged AS (
               INSERT INTO provider_charges (payment_id, user_id, amount, status, reason)
               SELECT payment_id, user_id, amount, status, reason
                 FROM jsonb_to_recordset($1::jsonb)
                  AS x(payment_id uuid, user_id text, amount bigint, status text, reason text)
               RETURNING user_id, amount, status
             ), debits AS (
               SELECT user_id, sum(amount) AS amount FROM charged WHERE status = 'captured' GROUP BY user_id
             )
             UPDATE provider_accounts a SET credit = a.credit - d.amount FROM debits d WHERE a.user_id = d.user_id`,
            [JSON.stringify(fresh)],
          );
        }
        return results;
      });
    },
    refundMany: async (requests) => {
      if (requests.length === 0) return;
      await disturb();
      if (faults.refundsDown) throw new ProviderUnavailableError('payment provider refuses refunds for now (injected)');
      // One statement, so atomic on its own: only a captured charge is given back, once.
      await db.query(
        `WITH refunded AS (
           UPDATE provider_charges SET status = 'refunded' WHERE payment_id = ANY($1::uuid[]) AND status = 'captured'
           RETURNING user_id, amount
         ), credits AS (
           SELECT user_id, sum(amount) AS amount FROM refunded GROUP BY user_id
         )
         UPDATE provider_accounts a SET credit = a.credit + c.amount FROM credits c WHERE a.user_id = c.user_id`,
        [requests.map((r) => r.paymentId)],
      );
    },
    credit: async (userId) => {
      const [row] = await db.query<{ credit: number }>('SELECT credit FROM provider_accounts WHERE user_id = $1', [
        userId,
      ]);
      return row?.credit;
    },
    deposit: async (userId, amount) => {
      const [row] = await db.query<{ credit: number }>(
        `INSERT INTO provider_accounts (user_id, credit, deposited) VALUES ($1, $2, $2)
         ON CONFLICT (user_id) DO UPDATE
          SET credit = provider_accounts.credit + $2, deposited = provider_accounts.deposited + $2
         RETURNING credit`,
        [userId, amount],
      );
      if (row === undefined) throw new Error('deposit failed');
      return row.credit;
    },
  };
}
