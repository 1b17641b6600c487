// A payment's status is written once, as the PaymentStatus schema of the contracts; the
// CHECK constraint on payments.status that the migrations leave (forward-only, so it is
// not generated) is read back from a migrated database and must allow exactly those.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { literalsOf, PaymentStatus } from '@converge/contracts';
import { migrate, openPglite, platformMigrations, type Db } from '@converge/platform';
import { afterAll, beforeAll, expect, it } from 'vitest';

let db: Db;
beforeAll(async () => {
  db = await openPglite('payment-statuses-test');
  await migrate(db, {
    platform: platformMigrations,
    payment: path.join(path.dirname(fileURLToPath(import.meta.url)), 'migrations'),
  });
});
afterAll(() => db.close());

it(
  'given the migrated database, when the CHECK on payments.status is read, ' +
    'then it allows exactly the PaymentStatus of the contracts',
  async () => {
    const [row] = await db.query<{ definition: string }>(
      `SELECT pg_get_constraintdef(oid) AS definition FROM pg_constraint
        WHERE conrelid = 'payments'::regclass AND conname = 'payments_status_check'`,
    );
    const allowed = [...(row?.definition ?? '').matchAll(/'([^']*)'::text/g)].map((match) => match[1]);

    expect(allowed.toSorted()).toEqual(literalsOf(PaymentStatus).toSorted());
  },
);
