// A saga's status is written once, as the SagaStatus schema of the contracts; the
// CHECK constraint on sagas.status that the migrations leave (forward-only, so it is
// not generated) is read back from a migrated database and must allow exactly those.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { literalsOf, SagaStatus } from '@converge/contracts';
import { migrate, openPglite, platformMigrations, type Db } from '@converge/platform';
import { afterAll, beforeAll, expect, it } from 'vitest';

let db: Db;
beforeAll(async () => {
  db = await openPglite('orchestrator-statuses-test');
  await migrate(db, {
    platform: platformMigrations,
    orchestrator: path.join(path.dirname(fileURLToPath(import.meta.url)), 'migrations'),
  });
});
afterAll(() => db.close());

it(
  'given the migrated database, when the CHECK on sagas.status is read, ' +
    'then it allows exactly the SagaStatus of the contracts',
  async () => {
    const [row] = await db.query<{ definition: string }>(
      `SELECT pg_get_constraintdef(oid) AS definition FROM pg_constraint
        WHERE conrelid = 'sagas'::regclass AND conname = 'sagas_status_check'`,
    );
    const allowed = [...(row?.definition ?? '').matchAll(/'([^']*)'::text/g)].map((match) => match[1]);

    expect(allowed.toSorted()).toEqual(literalsOf(SagaStatus).toSorted());
  },
);
