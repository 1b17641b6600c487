// The local bus keeps RabbitMQ's promises in-process, over PGlite or a PostgreSQL
// database: routing by type to bound queues only (a type bound nowhere is refused),
// durable queues that wait for their subscriber, redelivery of whatever was not acked
// (even across a restart) up to the delivery limit and then parking, delayed nacks,
// prefetch and depth.
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Envelope } from '@converge/contracts';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { eventsOf, type Bus, type Delivery } from './bus.ts';
import { dropDatabase, ensureDatabase, openPglite, openPostgres, type Db } from './db.ts';
import { UnroutableError } from './errors.ts';
import { createLocalBus } from './local-bus.ts';
import { sleep } from './retry.ts';
import { eventually, serverAvailable, servers, uniqueName } from './testing.ts';

const pgUp = await serverAvailable('postgres');

// A store is where the bus keeps its queues; opening it again reaches the same queues.
type Backend = { name: 'pglite' | 'postgres'; up: boolean; store(): Promise<() => Promise<Db>> };
const database = uniqueName('t');
let serverUrl: string | undefined;
const cleanups: (() => Promise<void>)[] = [];

const backends: Backend[] = [
  {
    name: 'pglite',
    up: true,
    store: () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'local-bus-'));
      cleanups.push(async () => fs.promises.rm(dir, { recursive: true, force: true }));
      return Promise.resolve(() => openPglite('bus-test', dir));
    },
  },
  {
    name: 'postgres',
    up: pgUp,
    store: async () => {
      serverUrl ??= await ensureDatabase(servers.postgres, database);
      const url = serverUrl;
      const db = await openPostgres('bus-test', url);
      await db.exec('DROP TABLE IF EXISTS bus_messages, bus_bindings');
      await db.close();
      return () => openPostgres('bus-test', url);
    },
  },
];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

afterAll(async () => {
  if (serverUrl !== undefined) await dropDatabase(servers.postgres, database);
});

type Opened = { bus: Bus; db: Db; close(): Promise<void> };

async function openBus(open: () => Promise<Db>, options: { deliveryLimit?: number } = {}): Promise<Opened> {
  const db = await open();
  const bus = await createLocalBus(db, { pollMs: 50, ...options });
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await bus.close();
    await db.close();
  };
  cleanups.push(close);
  return { bus, db, close };
}

function envelope(type: string, subject: string = crypto.randomUUID(), sequence = 1): Envelope {
  const id = crypto.randomUUID();
  return {
    specversion: '1.0',
    id,
    source: 'inventory',
    type,
    subject,
    time: new Date().toISOString(),
    datacontenttype: 'application/json',
    dataversion: 1,
    sequence,
    correlationid: id,
    data: { n: sequence },
  };
}

/**
 * One broker message per event: these tests are about deliveries, and a publish of several events of a type is one
 * batch.
 */
async function publishEach(bus: Pick<Bus, 'publish'>, messages: readonly Envelope[]): Promise<void> {
  for (const message of messages) await bus.publish([message]);
}

/** A subscriber that records each delivery and leaves settling to the test. */
function recorder() {
  const deliveries: Delivery[] = [];
  const ids = () => deliveries.map((d) => (d.body as Envelope).id);
  const onDelivery = (d: Delivery) => {
    deliveries.push(d);
    return Promise.resolve();
  };
  const count = (n: number) =>
    eventually(() => Promise.resolve(deliveries.length >= n ? true : undefined), 5_000, `${n} deliveries`);
  return { deliveries, ids, onDelivery, count };
}

describe.each(backends)('local bus on $name', (backend) => {
  describe.skipIf(!backend.up)('the local bus', () => {
    it(
      'given two queues bound to different types, when three types are published, then each queue ' +
        'holds only its types and the publish is refused for the one bound nowhere, naming it',
      async () => {
        const { bus, db } = await openBus(await backend.store());
        await bus.declare('stock', ['StockAdjusted']);
        await bus.declare('catalogue', ['ProductAdded', 'StockAdjusted']);
        const [adjusted, added, created] = [
          envelope('StockAdjusted'),
          envelope('ProductAdded'),
          envelope('OrderCreated'),
        ];

        const publishing = bus.publish([adjusted, added, created]);

        await expect(publishing).rejects.toThrow(UnroutableError);
        await expect(publishing).rejects.toMatchObject({ types: ['OrderCreated'] });

        expect([await bus.depth('stock'), await bus.depth('catalogue'), await bus.depth('orders')]).toEqual([1, 2, 0]);
        const [all] = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM bus_messages');
        expect(all?.n).toBe(3);
        const stock = recorder();
        await bus.subscribe('stock', ['StockAdjusted'], stock.onDelivery);
        await stock.count(1);
        await sleep(200);
        expect(stock.ids()).toEqual([adjusted.id]);
        expect(stock.deliveries[0]?.routingKey).toBe('StockAdjusted');
      },
    );

    it(
      'given a declared queue with nobody listening, when messages are published and ' +
        'a subscriber comes later, then it gets them all in order, fresh',
      async () => {
        const { bus } = await openBus(await backend.store());
        await bus.declare('stock', ['StockAdjusted']);
        const messages = [1, 2, 3].map((n) => envelope('StockAdjusted', 's', n));
        await publishEach(bus, messages);
        await sleep(200);

        const late = recorder();
        await bus.subscribe('stock', ['StockAdjusted'], late.onDelivery);
        await late.count(3);

        expect(late.ids()).toEqual(messages.map((m) => m.id));
        expect(late.deliveries.map((d) => [d.redelivered, d.messageId])).toEqual(messages.map((m) => [false, m.id]));
        expect(late.deliveries[0]?.body).toEqual(messages[0]);
        for (const d of late.deliveries) await d.ack();
        expect(await bus.depth('stock')).toBe(0);
      },
    );

    it(
      'given several events of one type in one publish, when consumed, then they ' +
        'arrive as one batch delivery, in order, and one ack settles them all',
      async () => {
        const { bus } = await openBus(await backend.store());
        await bus.declare('stock', ['StockAdjusted', 'ProductAdded']);
        const adjusted = [1, 2, 3].map((n) => envelope('StockAdjusted', 's', n));
        const added = envelope('ProductAdded', 'p');

        await bus.publish([adjusted[0], added, ...adjusted.slice(1)].filter((m) => m !== undefined));
        const stock = recorder();
        await bus.subscribe('stock', ['StockAdjusted', 'ProductAdded'], stock.onDelivery);
        await stock.count(2);

        expect(stock.deliveries.map((d) => [d.routingKey, d.batch])).toEqual([
          ['StockAdjusted', true],
          ['ProductAdded', false],
        ]);
        expect(stock.deliveries.map((d) => eventsOf(d).map((e) => (e as Envelope).id))).toEqual([
          adjusted.map((m) => m.id),
          [added.id],
        ]);
        expect(await bus.depth('stock')).toBe(2);
        for (const d of stock.deliveries) await d.ack();
        expect(await bus.depth('stock')).toBe(0);
      },
    );

    it(
      'given a queue declared with fewer types than before, when the old ' +
        'types are published, then they no longer reach it',
      async () => {
        const { bus } = await openBus(await backend.store());
        await bus.declare('stock', ['StockAdjusted', 'ProductAdded']);
        await bus.declare('stock', ['StockAdjusted']);

        await expect(bus.publish([envelope('ProductAdded'), envelope('StockAdjusted')])).rejects.toThrow(
          UnroutableError,
        );

        expect(await bus.depth('stock')).toBe(1);
      },
    );

    it(
      'given a delivery held unacked, when its subscriber closes and another ' +
        'subscribes, then only the newcomer gets it again, marked redelivered',
      async () => {
        const { bus } = await openBus(await backend.store());
        const message = envelope('StockAdjusted');
        const first = recorder();
        const subscription = await bus.subscribe('stock', ['StockAdjusted'], first.onDelivery);
        await bus.publish([message]);
        await first.count(1);
        await sleep(300);
        expect(first.deliveries).toHaveLength(1);

        await subscription.close();
        const second = recorder();
        await bus.subscribe('stock', ['StockAdjusted'], second.onDelivery);
        await second.count(1);

        expect(second.ids()).toEqual([message.id]);
        expect(second.deliveries[0]?.redelivered).toBe(true);
        expect(first.deliveries).toHaveLength(1);
        await second.deliveries[0]?.ack();
        expect(await bus.depth('stock')).toBe(0);
      },
    );

    it(
      'given two subscribers, when one closes holding an unacked ' +
        'delivery, then the other gets it, marked redelivered',
      async () => {
        const { bus } = await openBus(await backend.store());
        const [a, b] = [recorder(), recorder()];
        const leaving = await bus.subscribe('stock', ['StockAdjusted'], a.onDelivery, { prefetch: 1 });
        await bus.subscribe('stock', ['StockAdjusted'], b.onDelivery, { prefetch: 1 });
        const messages = [envelope('StockAdjusted', 'x'), envelope('StockAdjusted', 'y')];
        await publishEach(bus, messages);
        await a.count(1);
        await b.count(1);

        await leaving.close();
        await b.deliveries[0]?.ack();
        await b.count(2);

        expect([...a.ids(), ...b.ids()]).toEqual([messages[0]?.id, messages[1]?.id, messages[0]?.id]);
        expect(b.deliveries.map((d) => d.redelivered)).toEqual([false, true]);
      },
    );

    it(
      'given one message acked and one not, when the bus and its database are ' +
        'closed and reopened, then only the unacked one comes back',
      async () => {
        const open = await backend.store();
        const before = await openBus(open);
        const [acked, unacked] = [envelope('StockAdjusted', 'a'), envelope('StockAdjusted', 'b')];
        const first = recorder();
        await before.bus.subscribe('stock', ['StockAdjusted'], first.onDelivery);
        await publishEach(before.bus, [acked, unacked]);
        await first.count(2);
        await first.deliveries[0]?.ack();

        await before.close();
        const after = await openBus(open);
        const afterRestart = envelope('StockAdjusted', 'c');
        await after.bus.publish([afterRestart]);
        const second = recorder();
        await after.bus.subscribe('stock', ['StockAdjusted'], second.onDelivery);
        await second.count(2);
        await sleep(200);

        expect(second.ids()).toEqual([unacked.id, afterRestart.id]);
        expect(second.deliveries.map((d) => d.redelivered)).toEqual([true, false]);
        expect(await after.bus.depth('stock')).toBe(2);
      },
    );

    it(
      'given a delivery nacked with a delay of 400 ms, when time passes, then ' +
        'later messages go first and it returns no sooner than the delay',
      async () => {
        const { bus } = await openBus(await backend.store());
        const [slow, quick] = [envelope('StockAdjusted', 'slow'), envelope('StockAdjusted', 'quick')];
        const seen = recorder();
        const at: number[] = [];
        await bus.subscribe('stock', ['StockAdjusted'], async (d) => {
          at.push(Date.now());
          await seen.onDelivery(d);
          if ((d.body as Envelope).id === slow.id && !d.redelivered) await d.nack(400);
          else await d.ack();
        });

        await bus.publish([slow]);
        await seen.count(1);
        await bus.publish([quick]);
        await seen.count(3);

        expect(seen.ids()).toEqual([slow.id, quick.id, slow.id]);
        expect(seen.deliveries.map((d) => d.redelivered)).toEqual([false, false, true]);
        expect((at[2] ?? 0) - (at[0] ?? 0)).toBeGreaterThanOrEqual(400);
        await eventually(async () => ((await bus.depth('stock')) === 0 ? true : undefined), 5_000, 'queue empty');
      },
    );

    it(
      'given a handler that throws, when a message is delivered, then ' +
        'it is returned to the queue and delivered again',
      async () => {
        const { bus } = await openBus(await backend.store());
        const seen = recorder();
        await bus.subscribe('stock', ['StockAdjusted'], async (d) => {
          await seen.onDelivery(d);
          if (!d.redelivered) throw new Error('handler crashed');
          await d.ack();
        });

        await bus.publish([envelope('StockAdjusted')]);
        await seen.count(2);

        expect(seen.deliveries.map((d) => d.redelivered)).toEqual([false, true]);
        await eventually(async () => ((await bus.depth('stock')) === 0 ? true : undefined), 5_000, 'queue empty');
      },
    );

    it(
      'given a subscriber with prefetch 1, when three messages wait, then it ' +
        'holds one at a time and depth counts ready and unacked alike',
      async () => {
        const { bus } = await openBus(await backend.store());
        await bus.declare('stock', ['StockAdjusted']);
        const messages = [1, 2, 3].map((n) => envelope('StockAdjusted', 's', n));
        await publishEach(bus, messages);
        expect(await bus.depth('stock')).toBe(3);
        const one = recorder();
        await bus.subscribe('stock', ['StockAdjusted'], one.onDelivery, { prefetch: 1 });

        await one.count(1);
        await sleep(200);
        expect(one.deliveries).toHaveLength(1);
        expect(await bus.depth('stock')).toBe(3);
        await one.deliveries[0]?.ack();
        await one.count(2);
        expect(await bus.depth('stock')).toBe(2);
        await one.deliveries[1]?.ack();
        await one.count(3);
        await one.deliveries[2]?.ack();

        expect(one.ids()).toEqual(messages.map((m) => m.id));
        expect(await bus.depth('stock')).toBe(0);
      },
    );

    it('given a type bound nowhere, when a queue comes to bind it, then the same publish is taken', async () => {
      const { bus } = await openBus(await backend.store());
      const created = envelope('OrderCreated');
      await expect(bus.publish([created])).rejects.toThrow(UnroutableError);

      await bus.declare('orders', ['OrderCreated']);
      await bus.publish([created]);

      expect(await bus.depth('orders')).toBe(1);
    });

    it(
      'given a delivery limit of 2, when a message crashes its consumer every time, then after ' +
        'three deliveries it waits in the parking queue while the messages behind it go through',
      async () => {
        const open = await backend.store();
        let opened = await openBus(open, { deliveryLimit: 2 });
        await opened.bus.declare('stock', ['StockAdjusted']);
        const [poison, next] = [envelope('StockAdjusted', 'poison'), envelope('StockAdjusted', 'next')];
        await publishEach(opened.bus, [poison, next]);
        const handled: string[] = [];
        let crashes = 0;

        // The process dies holding it, before any ack; each restart opens the bus again.
        const crashed = () => crashes;
        for (let round = 1; round <= 3; round += 1) {
          const { bus } = opened;
          await bus.subscribe(
            'stock',
            ['StockAdjusted'],
            (d) => {
              if ((d.body as Envelope).id === poison.id) crashes += 1;
              return Promise.resolve();
            },
            { prefetch: 1 },
          );
          await eventually(() => Promise.resolve(crashed() >= round ? true : undefined), 5_000, `crash ${round}`);
          await opened.close();
          opened = await openBus(open, { deliveryLimit: 2 });
        }
        await opened.bus.subscribe('stock', ['StockAdjusted'], async (d) => {
          handled.push((d.body as Envelope).id);
          await d.ack();
        });

        await eventually(() => Promise.resolve(handled.length >= 1 ? true : undefined), 5_000, 'the next one');
        await sleep(200);
        expect(handled).toEqual([next.id]);
        expect(crashes).toBe(3);
        expect(await opened.bus.depth('stock.parked')).toBe(1);
        expect(await opened.bus.depth('stock')).toBe(0);
      },
    );

    it('given a closed bus, when publishing, then it refuses', async () => {
      const { bus } = await openBus(await backend.store());
      await bus.close();

      await expect(bus.publish([envelope('StockAdjusted')])).rejects.toThrow('bus is closed');
    });
  });
});
