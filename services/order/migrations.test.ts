// The order service's migrations on a database an earlier version left behind: claims of
// an Idempotency-Key without a response (that version claimed first and placed after, and
// a request could die in between) are dropped, and no such claim can be written again.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { migrate, openPglite, platformMigrations, type Db } from '@converge/platform';
import { afterAll, beforeAll, expect, it } from 'vitest';

const migrations = path.join(path.dirname(fileURLToPath(import.meta.url)), 'migrations');
let db: Db;
let firstOnly: string;

beforeAll(async () => {
  firstOnly = fs.mkdtempSync(path.join(os.tmpdir(), 'order-migrations-'));
  fs.copyFileSync(path.join(migrations, '001_orders.sql'), path.join(firstOnly, '001_orders.sql'));
  db = await openPglite('order-migrations-test');
  await migrate(db, { platform: platformMigrations, order: firstOnly });
});
afterAll(async () => {
  await db.close();
  fs.rmSync(firstOnly, { recursive: true, force: true });
});

it(
  'given claims left without a response by an earlier version, when the migrations run, then ' +
    'they are gone, finished keys stay, and no unfinished claim can be written',
  async () => {
    const insert = `INSERT INTO idempotency_keys
                         (user_id, key, request_hash, state, order_id, response_status, response_body, created_at)
                  VALUES ($1, $2, 'h', $3, $4, $5, $6::jsonb, now())`;
    await db.query(insert, ['alice', 'died', 'in_flight', null, null, null]);
    await db.query(insert, [
      'alice',
      'placed',
      'done',
      '5b0c1f9e-8d0a-4b8e-9a43-0d1c2b3a4f5e',
      201,
      JSON.stringify({ orderId: '5b0c1f9e-8d0a-4b8e-9a43-0d1c2b3a4f5e' }),
    ]);

    await migrate(db, { platform: platformMigrations, order: migrations });

    const keys = await db.query<{ key: string }>('SELECT key FROM idempotency_keys ORDER BY key');
    expect(keys.map((k) => k.key)).toEqual(['placed']);
    await expect(db.query(insert, ['bob', 'claim', 'in_flight', null, null, null])).rejects.toThrow(/violates/);
    await expect(db.query(insert, ['bob', 'claim', 'done', null, 201, null])).rejects.toThrow(/violates/);
  },
);
