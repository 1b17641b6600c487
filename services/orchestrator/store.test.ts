// The orchestrator's batch path against its one-message path: the same messages, given
// as consumer batches (one message per saga each) or one by one, leave the same sagas,
// the same step log and the same commands; a saga that moved meanwhile fails the batch.
import crypto from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { DomainEvent } from '@converge/contracts';
import { ConflictError, migrate, openPglite, platformMigrations, type Db, type Message } from '@converge/platform';
import { afterEach, describe, expect, it } from 'vitest';
import { sagaBatchHandler, sagaHandler } from './consumers.ts';
import { defaultTimings, orderFulfilment } from './fulfilment.ts';

const definition = orderFulfilment(defaultTimings);
const migrations = path.join(path.dirname(fileURLToPath(import.meta.url)), 'migrations');
const opened: Db[] = [];
afterEach(async () => {
  for (const db of opened.splice(0)) await db.close();
});

async function database(): Promise<Db> {
  const db = await openPglite('orchestrator-test');
  opened.push(db);
  await migrate(db, { platform: platformMigrations, orchestrator: migrations });
  return db;
}

const now = new Date('2026-12-01T10:00:00.000Z');
const productId = '00000000-0000-4000-8000-0000000000a1';

function message(source: string, subject: string, sequence: number, event: DomainEvent): Message {
  const id = crypto.randomUUID();
  return {
    specversion: '1.0',
    id,
    source,
    subject,
    time: now.toISOString(),
    datacontenttype: 'application/json',
    dataversion: 1,
    sequence,
    correlationid: `request-${subject}`,
    ...event,
  };
}

/** An order's life as the orchestrator hears it: created, stock reserved, paid, completed (or declined). */
function life(orderId: string, paid: boolean): Message[] {
  const items = [{ productId, quantity: 1 }];
  return [
    message('order', orderId, 1, {
      type: 'OrderCreated',
      data: {
        orderId,
        userId: 'ada',
        items: [{ productId, quantity: 1, unitPrice: 500 }],
        totalAmount: 500,
        currency: 'EUR',
        createdAt: now.toISOString(),
      },
    }),
    message('inventory', orderId, 1, {
      type: 'InventoryReserved',
      data: { orderId, userId: 'ada', items, totalAmount: 500, currency: 'EUR' },
    }),
    paid
      ? message('payment', orderId, 1, {
          type: 'PaymentProcessed',
          data: { orderId, paymentId: crypto.randomUUID(), userId: 'ada', amount: 500, currency: 'EUR' },
        })
      : message('payment', orderId, 1, {
          type: 'PaymentFailed',
          data: { orderId, paymentId: crypto.randomUUID(), userId: 'ada', amount: 500, reason: 'declined' },
        }),
  ];
}

async function outcome(db: Db) {
  const sagas = await db.query('SELECT saga_id, status, version FROM sagas ORDER BY saga_id');
  const log = await db.query('SELECT saga_id, version, type FROM saga_log ORDER BY saga_id, version');
  const commands = await db.query(
    "SELECT subject, type, envelope->>'correlationid' AS correlation FROM outbox ORDER BY subject, sequence",
  );
  return { sagas, log, commands };
}

describe('the orchestrator in batches', () => {
  it(
    'given the lives of six orders, when applied as consumer batches, then ' +
      'sagas, log and commands equal those applied one by one',
    async () => {
      const orders = Array.from({ length: 6 }, () => crypto.randomUUID());
      const lives = orders.map((orderId, i) => life(orderId, i % 2 === 0));
      const [single, batched] = [await database(), await database()];
      const handle = sagaHandler(definition);
      const handleBatch = sagaBatchHandler(definition);

      for (const message of lives.flat())
        await single.transaction((tx) => handle(tx, message, { now, emit: () => Promise.resolve() }));
      for (let step = 0; step < 3; step++) {
        const batch = lives.map((l) => l[step]).filter((m) => m !== undefined);
        await batched.transaction((tx) => handleBatch(tx, batch, { now, emit: () => undefined }));
      }

      const expected = await outcome(single);
      expect(expected.sagas).toHaveLength(6);
      expect(new Set(expected.commands.map((c) => c.type))).toEqual(
        new Set(['ReserveInventory', 'ProcessPayment', 'CompleteOrder', 'ReleaseInventory']),
      );
      expect(await outcome(batched)).toEqual(expected);
    },
  );

  it('given a saga that exists, when its trigger comes again in a batch, then nothing changes', async () => {
    const db = await database();
    const [created] = life(crypto.randomUUID(), true);
    if (created === undefined) throw new Error('no trigger');
    const handleBatch = sagaBatchHandler(definition);
    await db.transaction((tx) => handleBatch(tx, [created], { now, emit: () => undefined }));
    const before = await outcome(db);

    await db.transaction((tx) =>
      handleBatch(tx, [{ ...created, id: crypto.randomUUID() }], { now, emit: () => undefined }),
    );

    expect(await outcome(db)).toEqual(before);
  });

  it(
    'given a saga moved by another writer after the batch read it, when ' +
      'the batch writes, then it fails whole with a conflict',
    async () => {
      const db = await database();
      const [created, reserved] = life(crypto.randomUUID(), true);
      if (created === undefined || reserved === undefined) throw new Error('no life');
      const handleBatch = sagaBatchHandler(definition);
      await db.transaction((tx) => handleBatch(tx, [created], { now, emit: () => undefined }));

      const moved = db.transaction(async (tx) => {
        const racing = {
          query: async <R extends object>(text: string, params?: readonly unknown[]) => {
            const rows = await tx.query<R>(text, params);
            if (text.startsWith('SELECT saga_id, state FROM sagas'))
              await tx.query('UPDATE sagas SET version = version + 1');
            return rows;
          },
        };
        await handleBatch(racing, [reserved], { now, emit: () => undefined });
      });

      await expect(moved).rejects.toBeInstanceOf(ConflictError);
    },
  );
});
