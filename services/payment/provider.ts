// The payment provider is an interface: charge and refund, both idempotent by payment
// id, as real providers are with idempotency keys. The default implementation is
// simulated, with per-user credit in a database of its own, so a decline is a real
// business outcome and money is conserved. It can be told to fail or to be slow, for
// tests and chaos runs.
import type { Db } from '@converge/platform';
import { sleep } from '@converge/platform';

export type ChargeRequest = { paymentId: string; userId: string; amount: number; currency: string };
export type ChargeResult = { status: 'approved' } | { status: 'declined'; reason: string };

export interface PaymentProvider {
  charge(request: ChargeRequest): Promise<ChargeResult>;
  refund(request: { paymentId: string }): Promise<void>;
}

export class ProviderUnavailableError extends Error {
  override readonly name = 'ProviderUnavailableError';
}

export type ProviderFaults = {
  /** Every call fails as if the provider were down. */
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
    charge: async ({ paymentId, userId, amount }) => {
      await disturb();
      return db.transaction(async (tx) => {
        const [previous] = await tx.query<{ status: string; reason: string | null }>(
          'SELECT status, reason FROM provider_charges WHERE payment_id = $1', [paymentId],
        );
        if (previous !== undefined) {
          return previous.status === 'declined' ? { status: 'declined', reason: previous.reason ?? 'declined' } : { status: 'approved' };
        }
        const [debited] = await tx.query(
          'UPDATE provider_accounts SET credit = credit - $2 WHERE user_id = $1 AND credit >= $2 RETURNING 1', [userId, amount],
        );
        if (debited === undefined) {
          const [account] = await tx.query('SELECT 1 FROM provider_accounts WHERE user_id = $1', [userId]);
          const reason = account === undefined ? 'no payment account' : 'insufficient credit';
          await tx.query(
            `INSERT INTO provider_charges (payment_id, user_id, amount, status, reason) VALUES ($1, $2, $3, 'declined', $4)`,
            [paymentId, userId, amount, reason],
          );
          return { status: 'declined', reason };
        }
        await tx.query(`INSERT INTO provider_charges (payment_id, user_id, amount, status) VALUES ($1, $2, $3, 'captured')`, [
          paymentId, userId, amount,
        ]);
        return { status: 'approved' };
      });
    },
    refund: async ({ paymentId }) => {
      await disturb();
      if (faults.refundsDown) throw new ProviderUnavailableError('payment provider refuses refunds for now (injected)');
      await db.transaction(async (tx) => {
        const [charge] = await tx.query<{ user_id: string; amount: number }>(
          `UPDATE provider_charges SET status = 'refunded' WHERE payment_id = $1 AND status = 'captured' RETURNING user_id, amount`,
          [paymentId],
        );
        if (charge !== undefined) {
          await tx.query('UPDATE provider_accounts SET credit = credit + $2 WHERE user_id = $1', [charge.user_id, charge.amount]);
        }
      });
    },
    credit: async (userId) => {
      const [row] = await db.query<{ credit: number }>('SELECT credit FROM provider_accounts WHERE user_id = $1', [userId]);
      return row?.credit;
    },
    deposit: async (userId, amount) => {
      const [row] = await db.query<{ credit: number }>(
        `INSERT INTO provider_accounts (user_id, credit, deposited) VALUES ($1, $2, $2)
         ON CONFLICT (user_id) DO UPDATE SET credit = provider_accounts.credit + $2, deposited = provider_accounts.deposited + $2
         RETURNING credit`,
        [userId, amount],
      );
      if (row === undefined) throw new Error('deposit failed');
      return row.credit;
    },
  };
}
