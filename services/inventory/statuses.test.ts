// A reservation's status is written once, as the ReservationStatus schema of the contracts; the
// CHECK constraint on reservations.status that the migrations leave (forward-only, so it is
// not generated) is read back from a migrated database and must allow exactly those.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { literalsOf, ReservationStatus } from '@converge/contracts';
import { migrate, openPglite, platformMigrations, type Db } from '@converge/platform';
import { afterAll, beforeAll, expect, it } from 'vitest';

let db: Db;
beforeAll(async () => {
  db = await openPglite('inventory-statuses-test');
  await migrate(db, {
    platform: platformMigrations,
    inventory: path.join(path.dirname(fileURLToPath(import.meta.url)), 'migrations'),
  });
});
afterAll(() => db.close());

it(
  'given the migrated database, when the CHECK on reservations.status is read, ' +
    'then it allows exactly the ReservationStatus of the contracts',
  async () => {
    const [row] = await db.query<{ definition: string }>(
      `SELECT pg_get_constraintdef(oid) AS definition FROM pg_constraint
        WHERE conrelid = 'reservations'::regclass AND conname = 'reservations_status_check'`,
    );
    const allowed = [...(row?.definition ?? '').matchAll(/'([^']*)'::text/g)].map((match) => match[1]);

    expect(allowed.toSorted()).toEqual(literalsOf(ReservationStatus).toSorted());
  },
);
