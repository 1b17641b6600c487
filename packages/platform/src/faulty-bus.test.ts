// The test-only fault switch, on the local bus: a duplicated delivery reaches the
// consumer twice and only the original settles the message; a delayed one is overtaken
// by the messages behind it; closing the subscription gives back deliveries still
// waiting out their delay; and the counters say what happened.
import crypto from 'node:crypto';
import type { Envelope } from '@converge/contracts';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { Bus, Delivery } from './bus.ts';
import { openPglite } from './db.ts';
import { parseBusFaults, withFaults, type BusFaults } from './faulty-bus.ts';
import { createLocalBus } from './local-bus.ts';
import { sleep } from './retry.ts';
import { eventually } from './testing.ts';

const db = await openPglite('faulty-bus-test');
const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});
afterAll(() => db.close());

async function faultyBus(faults: BusFaults) {
  await db.exec('DROP TABLE IF EXISTS bus_messages, bus_bindings');
  const inner = await createLocalBus(db, { pollMs: 50 });
  const bus = withFaults(inner, faults);
  cleanups.push(() => bus.close());
  await bus.declare('stock', ['StockAdjusted']);
  return Object.assign(bus, { inner });
}

function envelope(sequence: number): Envelope {
  const id = crypto.randomUUID();
  return {
    specversion: '1.0',
    id,
    source: 'inventory',
    type: 'StockAdjusted',
    subject: 's',
    time: new Date().toISOString(),
    datacontenttype: 'application/json',
    dataversion: 1,
    sequence,
    correlationid: id,
    data: { n: sequence },
  };
}

const idOf = (d: Delivery) => (d.body as Envelope).id;

/**
 * One broker message per event: these tests are about deliveries, and a publish of several events of a type is one
 * batch.
 */
async function publishEach(bus: Pick<Bus, 'publish'>, messages: readonly Envelope[]): Promise<void> {
  for (const message of messages) await bus.publish([message]);
}

describe('a bus with faults', () => {
  it(
    'given every delivery duplicated, when three messages are consumed and acked, then ' +
      'each arrives twice, the copy marked redelivered, and the queue empties',
    async () => {
      const bus = await faultyBus({ duplicateRate: 1, delayRate: 0, maxDelayMs: 0 });
      const messages = [1, 2, 3].map(envelope);
      const seen: Delivery[] = [];

      await bus.subscribe('stock', ['StockAdjusted'], async (d) => {
        seen.push(d);
        await d.ack();
      });
      await publishEach(bus, messages);

      await eventually(
        async () => (seen.length >= 6 && (await bus.depth('stock')) === 0 ? true : undefined),
        5_000,
        'six deliveries, queue empty',
      );
      for (const message of messages) {
        const copies = seen.filter((d) => idOf(d) === message.id);
        expect(copies).toHaveLength(2);
        expect(copies.map((d) => d.redelivered).sort()).toEqual([false, true]);
      }
      expect(bus.faultStats).toEqual({ duplicated: 3, delayed: 0 });
    },
  );

  it(
    'given a duplicated delivery, when only the copy is acked, then ' +
      'the message stays in the queue until the original is',
    async () => {
      const bus = await faultyBus({ duplicateRate: 1, delayRate: 0, maxDelayMs: 0 });
      const originals: Delivery[] = [];

      await bus.subscribe('stock', ['StockAdjusted'], async (d) => {
        if (d.redelivered)
          await d.ack(); // the copy (the original is a first delivery)
        else originals.push(d);
      });
      await bus.publish([envelope(1)]);
      await eventually(() => Promise.resolve(originals.length >= 1 ? true : undefined), 5_000, 'the original');
      await sleep(200);

      expect(await bus.depth('stock')).toBe(1);
      await originals[0]?.ack();
      expect(await bus.depth('stock')).toBe(0);
    },
  );

  it(
    'given every delivery delayed, when messages are published, then they ' +
      'all arrive later and out of order, and the counter says so',
    async () => {
      const bus = await faultyBus({ duplicateRate: 0, delayRate: 1, maxDelayMs: 400 });
      const messages = Array.from({ length: 20 }, (_, i) => envelope(i + 1));
      const arrived: number[] = [];

      await bus.subscribe('stock', ['StockAdjusted'], async (d) => {
        arrived.push((d.body as Envelope).sequence);
        await d.ack();
      });
      await publishEach(bus, messages);

      await eventually(
        async () => (arrived.length >= 20 && (await bus.depth('stock')) === 0 ? true : undefined),
        5_000,
        'all delivered',
      );
      expect([...arrived].sort((a, b) => a - b)).toEqual(messages.map((m) => m.sequence));
      expect(arrived).not.toEqual(messages.map((m) => m.sequence)); // 20 random delays keep this order with p = 1/20!
      expect(bus.faultStats).toEqual({ duplicated: 0, delayed: 20 });
    },
  );

  it(
    'given deliveries waiting out their delay, when the subscription closes, ' +
      'then none reaches the handler and a new subscriber gets them all',
    async () => {
      const bus = await faultyBus({ duplicateRate: 0, delayRate: 1, maxDelayMs: 60_000 });
      const first: Delivery[] = [];
      const subscription = await bus.subscribe('stock', ['StockAdjusted'], (d) => {
        first.push(d);
        return Promise.resolve();
      });
      await publishEach(bus, [1, 2, 3].map(envelope));
      await eventually(() => Promise.resolve(bus.faultStats.delayed >= 3 ? true : undefined), 5_000, 'three delayed');

      await subscription.close();
      const second: Delivery[] = [];
      await bus.inner.subscribe('stock', ['StockAdjusted'], async (d) => {
        second.push(d);
        await d.ack();
      });

      await eventually(
        async () => (second.length >= 3 && (await bus.depth('stock')) === 0 ? true : undefined),
        5_000,
        'redelivered',
      );
      await sleep(100);
      expect(first).toHaveLength(0);
      expect(second.every((d) => d.redelivered)).toBe(true);
    },
  );

  it('given no faults asked for, when messages flow, then nothing is duplicated or delayed', async () => {
    const bus = await faultyBus({ duplicateRate: 0, delayRate: 0, maxDelayMs: 3000 });
    const seen: number[] = [];
    await bus.subscribe('stock', ['StockAdjusted'], async (d) => {
      seen.push((d.body as Envelope).sequence);
      await d.ack();
    });
    await publishEach(bus, [1, 2, 3].map(envelope));
    await eventually(() => Promise.resolve(seen.length >= 3 ? true : undefined), 5_000, 'three');
    await sleep(100);
    expect(seen).toEqual([1, 2, 3]);
    expect(bus.faultStats).toEqual({ duplicated: 0, delayed: 0 });
  });
});

describe('the BUS_FAULTS setting', () => {
  it('given the documented form, when parsed, then it gives the rates and the longest delay', () => {
    expect(parseBusFaults('duplicate=0.1,delay=0.1,max-delay-ms=3000')).toEqual({
      duplicateRate: 0.1,
      delayRate: 0.1,
      maxDelayMs: 3000,
    });
    expect(parseBusFaults(' duplicate = 0.5 ')).toEqual({ duplicateRate: 0.5, delayRate: 0, maxDelayMs: 0 });
  });

  it.each(['duplicate=2', 'delay=-0.1', 'dup=0.1', 'duplicate', 'duplicate=abc', 'max-delay-ms=-1', 'delay=0.1=0.2'])(
    'given %s, when parsed, then it is refused',
    (text) => {
      expect(() => parseBusFaults(text)).toThrow();
    },
  );
});
