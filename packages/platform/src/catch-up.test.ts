// Catching up from the feeds, on PGlite: a source publishes through its relay to a bus
// the consumer is not subscribed to (the broker lost its queue), so everything the
// consumer applies it has found in the feed, read over HTTP or through the source's
// app in process. The handler records its effect in the consumer's transaction, so the
// assertions count what really took effect, and in which order.
import type { Envelope } from '@converge/contracts';
import { afterEach, describe, expect, it } from 'vitest';
import { catchUp, httpFeed, inProcessFeed, readFeedFrom, watchForGaps, type FeedSource } from './catch-up.ts';
import { startConsumer, type Handler } from './consumer.ts';
import { openPglite, type Db } from './db.ts';
import { readFeed, registerFeedRoutes } from './feed.ts';
import { createHttpApp, type HttpApp } from './http.ts';
import { createLocalBus } from './local-bus.ts';
import { silentLogger } from './log.ts';
import { migrate, platformMigrations } from './migrate.ts';
import { appendToOutbox } from './outbox.ts';
import { relayBatch } from './relay.ts';
import { sleep } from './retry.ts';
import { eventually } from './testing.ts';

const productA = '00000000-0000-4000-8000-0000000000a1';
const productB = '00000000-0000-4000-8000-0000000000b2';
const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function opened(name: string): Promise<Db> {
  const db = await openPglite(name);
  cleanups.push(() => db.close());
  await migrate(db, { platform: platformMigrations });
  return db;
}

/** A source with a feed and a relay, and a consumer of its events that only catch-ups feed. */
async function world() {
  const source = await opened('catch-up-source');
  // A database of its own: the relay publishes inside its transaction on the source.
  const busDb = await openPglite('catch-up-bus');
  cleanups.push(() => busDb.close());
  const bus = await createLocalBus(busDb);
  cleanups.push(() => bus.close());
  // Bound, or the bus would refuse what the relay publishes; nobody reads it.
  await bus.declare('elsewhere', ['StockAdjusted']);
  const app = await createHttpApp({ service: 'inventory', log: silentLogger });
  registerFeedRoutes(app, source);
  await app.ready();
  cleanups.push(() => app.close());

  const db = await opened('catch-up-consumer');
  await db.exec(`CREATE TABLE feed_checkpoints (source text PRIMARY KEY, position bigint NOT NULL,
      updated_at timestamptz NOT NULL);
    CREATE TABLE effects (n serial PRIMARY KEY, subject text NOT NULL, sequence integer NOT NULL)`);
  const record: Handler = async (tx, m) => {
    await tx.query('INSERT INTO effects (subject, sequence) VALUES ($1, $2)', [m.subject, m.sequence]);
  };
  // Not subscribed: what the relay publishes never reaches it.
  const consumer = await startConsumer(
    { name: 'watcher', db, bus, log: silentLogger, sources: ['inventory'], handle: record },
    false,
  );
  cleanups.push(() => consumer.stop());

  /** Commits stock moves at the source and relays them: they get feed positions, and are lost on the way. */
  const publish = async (products: readonly string[], at = new Date()) => {
    await source.transaction((tx) =>
      appendToOutbox(
        tx,
        { source: 'inventory', now: at },
        products.map((productId) => ({
          type: 'StockAdjusted' as const,
          subject: productId,
          data: { productId, delta: 1, reason: 'restock', stockQuantity: 1, reserved: 0, sold: 0 },
        })),
      ),
    );
    await relayBatch(source, bus, 100);
  };
  const effects = async () =>
    (await db.query<{ e: string }>(`SELECT subject || ':' || sequence AS e FROM effects ORDER BY n`)).map((r) => r.e);
  const checkpoint = async () =>
    (
      await db.query<{ position: number }>('SELECT position::int AS position FROM feed_checkpoints WHERE source = $1', [
        'inventory',
      ])
    )[0]?.position;
  return { source, app, db, consumer, publish, effects, checkpoint };
}

const ofProduct = (effects: readonly string[], product: string) => effects.filter((e) => e.startsWith(product));

describe('catching up from the feeds', () => {
  it(
    'given events the broker lost, when caught up over HTTP, then each is applied once in stream ' +
      'order, the checkpoint stands at the head, and a delivered event is found applied',
    async () => {
      const w = await world();
      await w.publish([productA, productB, productA]);
      await w.publish([productA, productB]);
      const url = await w.app.listen({ port: 0, host: '127.0.0.1' });
      const feed = httpFeed('inventory', url);

      const everything = await readFeedFrom(feed, 0, 2);
      expect(everything.events.map((e) => `${e.subject}:${e.sequence}`)).toEqual([
        `${productA}:1`,
        `${productB}:1`,
        `${productA}:2`,
        `${productA}:3`,
        `${productB}:2`,
      ]);
      expect(everything.next).toBe(5);

      expect(await catchUp(w.db, w.consumer, [feed])).toEqual({ read: 5, applied: 5, duplicate: 0 });
      expect(ofProduct(await w.effects(), productA)).toEqual([`${productA}:1`, `${productA}:2`, `${productA}:3`]);
      expect(ofProduct(await w.effects(), productB)).toEqual([`${productB}:1`, `${productB}:2`]);
      expect(await w.checkpoint()).toBe(5);

      // This one the broker delivers; the next catch-up reads it and finds it applied.
      await w.publish([productB]);
      const [delivered] = (await readFeed(w.source, 5, 10)).events;
      expect(await w.consumer.process(delivered?.event)).toBe('applied');
      expect(await catchUp(w.db, w.consumer, [feed])).toEqual({ read: 1, duplicate: 1 });
      expect(await w.effects()).toHaveLength(6);
      expect(await w.checkpoint()).toBe(6);
    },
  );

  it(
    'given unseen events committed after the settle mark, when swept, then they ' +
      'are left to the broker and the checkpoint stops before them',
    async () => {
      const w = await world();
      await w.publish([productA], new Date('2026-01-01T00:00:00.000Z'));
      await w.publish([productB], new Date('2026-01-01T00:00:10.000Z'));
      const feed = inProcessFeed('inventory', () => w.app);

      expect(await catchUp(w.db, w.consumer, [feed], { settledBefore: new Date('2026-01-01T00:00:05.000Z') })).toEqual({
        read: 1,
        applied: 1,
        duplicate: 0,
      });
      expect(await w.effects()).toEqual([`${productA}:1`]);
      expect(await w.checkpoint()).toBe(1);

      expect(await catchUp(w.db, w.consumer, [feed])).toEqual({ read: 1, applied: 1, duplicate: 0 });
      expect(await w.effects()).toEqual([`${productA}:1`, `${productB}:1`]);
      expect(await w.checkpoint()).toBe(2);
    },
  );

  it(
    'given a source not running yet, when the watch starts, then the start-up catch-up is owed until the source ' +
      'answers; and an event held for a lost predecessor makes it read the feed and drain the hold',
    async () => {
      const w = await world();
      await w.publish([productA, productA]);
      const started: { app?: HttpApp } = {};
      const feeds: FeedSource[] = [inProcessFeed('inventory', () => started.app)];
      const watch = watchForGaps({
        db: w.db,
        consumer: w.consumer,
        feeds: () => feeds,
        log: silentLogger,
        now: () => new Date(),
        everyMs: 20,
        gapAfterMs: 50,
        sweepEveryMs: 0,
      });
      cleanups.push(() => watch.stop());

      await sleep(150);
      expect(watch.stats.runs).toBe(0);
      expect(await w.effects()).toEqual([]);
      started.app = w.app;
      await eventually(() => Promise.resolve(watch.stats.runs >= 1 ? true : undefined), 5_000, 'the start-up catch-up');
      expect(await w.effects()).toEqual([`${productA}:1`, `${productA}:2`]);
      expect(watch.stats.recovered).toBe(2);

      // The third is lost, the fourth delivered: it waits in the hold for its predecessor.
      await w.publish([productA, productA]);
      const fourth = (await readFeed(w.source, 0, 10)).events
        .map((e) => e.event)
        .find((e: Envelope) => e.sequence === 4);
      expect(await w.consumer.process(fourth)).toBe('held');
      await eventually(
        async () => ((await w.effects()).length === 4 ? true : undefined),
        5_000,
        'the gap closed from the feed',
      );
      expect(await w.effects()).toEqual([`${productA}:1`, `${productA}:2`, `${productA}:3`, `${productA}:4`]);
      expect(await w.db.query('SELECT 1 FROM held_messages')).toHaveLength(0);
      expect(watch.stats.runs).toBeGreaterThanOrEqual(2);
    },
  );
});
