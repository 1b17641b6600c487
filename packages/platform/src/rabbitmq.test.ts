// The RabbitMQ bus against a real broker. Each test gets its own exchange and queue
// prefix, so suites running in parallel never see each other's messages, and removes
// them afterwards (with their parking queues and dead-letter exchange).
import crypto from 'node:crypto';
import { connect, type Channel, type ChannelModel } from 'amqplib';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import type { Envelope } from '@converge/contracts';
import { eventsOf, type Bus, type Delivery } from './bus.ts';
import { UnroutableError } from './errors.ts';
import { createRabbitBus, deadLetterExchangeOf, forceDisconnect, type RabbitBusOptions } from './rabbitmq.ts';
import { eventually, serverAvailable, servers, uniqueName } from './testing.ts';

const up = await serverAvailable('rabbitmq');

function envelope(type: string, sequence: number, subject = 'order-1'): Envelope {
  return {
    specversion: '1.0',
    id: crypto.randomUUID(),
    source: 'test',
    type,
    subject,
    time: new Date().toISOString(),
    datacontenttype: 'application/json',
    dataversion: 1,
    sequence,
    correlationid: 'test',
    data: { sequence },
  };
}

/** The events of the deliveries, in order (a publish of several of one type is one batch). */
const eventsIn = (deliveries: readonly Delivery[]): Envelope[] => deliveries.flatMap((d) => eventsOf(d) as Envelope[]);

function until(condition: () => boolean, what: string, timeoutMs = 15_000): Promise<true> {
  return eventually(() => Promise.resolve(condition() ? true : undefined), timeoutMs, what);
}

describe.skipIf(!up)('RabbitMQ bus', () => {
  let admin: ChannelModel;
  let adminChannel: Channel;

  beforeAll(async () => {
    admin = await connect(servers.rabbitmq);
    adminChannel = await admin.createChannel();
  });
  afterAll(async () => {
    await admin.close();
  });

  type Setup = { bus: Bus; exchange: string; queuePrefix: string; logs: { level: string; msg: string }[] };

  async function setup(queues: readonly string[], options: Partial<RabbitBusOptions> = {}): Promise<Setup> {
    const exchange = uniqueName('test.events');
    const queuePrefix = `${uniqueName('test')}.`;
    const logs: Setup['logs'] = [];
    const log: RabbitBusOptions['log'] = (level, msg) => logs.push({ level, msg });
    const bus = await createRabbitBus({ url: servers.rabbitmq, exchange, queuePrefix, log, ...options });
    onTestFinished(async () => {
      await bus.close();
      for (const queue of queues) {
        await adminChannel.deleteQueue(queuePrefix + queue);
        await adminChannel.deleteQueue(`${queuePrefix}${queue}.parked`);
      }
      await adminChannel.deleteExchange(exchange);
      await adminChannel.deleteExchange(deadLetterExchangeOf(exchange));
    });
    return { bus, exchange, queuePrefix, logs };
  }

  function collect(): { deliveries: Delivery[]; onDelivery: (delivery: Delivery) => Promise<void> } {
    const deliveries: Delivery[] = [];
    return { deliveries, onDelivery: (delivery) => Promise.resolve(void deliveries.push(delivery)) };
  }

  it('delivers the whole envelope as the body, with its id and type', async () => {
    const { bus } = await setup(['orders']);
    const { deliveries, onDelivery } = collect();
    await bus.subscribe('orders', ['OrderCreated'], onDelivery);
    const sent = envelope('OrderCreated', 1);

    await bus.publish([sent]);

    await until(() => deliveries.length === 1, 'the delivery');
    const [delivery] = deliveries;
    expect(delivery?.body).toEqual(sent);
    expect(delivery?.messageId).toBe(sent.id);
    expect(delivery?.routingKey).toBe('OrderCreated');
    expect(delivery?.redelivered).toBe(false);
    await delivery?.ack();
    await eventually(async () => ((await bus.depth('orders')) === 0 ? true : undefined), 5_000, 'an empty queue');
  });

  it('keeps the publishing order of 500 messages', async () => {
    const { bus } = await setup(['orders']);
    const { deliveries, onDelivery } = collect();
    await bus.subscribe('orders', ['OrderCreated'], async (delivery) => {
      await onDelivery(delivery);
      await delivery.ack();
    });
    const sent = Array.from({ length: 500 }, (_, i) => envelope('OrderCreated', i + 1));

    await bus.publish(sent.slice(0, 200));
    await bus.publish(sent.slice(200));

    await until(() => eventsIn(deliveries).length === 500, '500 events');
    expect(deliveries.map((d) => d.batch)).toEqual([true, true]);
    expect(eventsIn(deliveries).map((e) => e.sequence)).toEqual(sent.map((m) => m.sequence));
  });

  it('lets concurrent callers publish big batches, each in its own order', async () => {
    const { bus } = await setup(['orders']);
    const { deliveries, onDelivery } = collect();
    await bus.subscribe('orders', ['OrderCreated'], async (delivery) => {
      await onDelivery(delivery);
      await delivery.ack();
    });
    const subjects = ['a', 'b', 'c', 'd'];
    // Enough messages per call to fill amqplib's write buffer and exercise 'drain'.
    const batches = subjects.map((subject) =>
      Array.from({ length: 3000 }, (_, i) => envelope('OrderCreated', i + 1, subject)),
    );

    await Promise.all(batches.map((batch) => bus.publish(batch)));

    await until(() => eventsIn(deliveries).length === 12_000, '12000 events', 30_000);
    for (const subject of subjects) {
      const received = eventsIn(deliveries)
        .filter((e) => e.subject === subject)
        .map((e) => e.sequence);
      expect(received).toEqual(Array.from({ length: 3000 }, (_, i) => i + 1));
    }
  });

  it('redelivers what a closed subscription left unacked, flagged as redelivered', async () => {
    const { bus } = await setup(['orders']);
    const first = collect();
    const subscription = await bus.subscribe('orders', ['OrderCreated'], first.onDelivery);
    const sent = envelope('OrderCreated', 1);
    await bus.publish([sent]);
    await until(() => first.deliveries.length === 1, 'the first delivery');

    await subscription.close();
    await expect(first.deliveries[0]?.ack()).resolves.toBeUndefined(); // too late, and harmless

    const second = collect();
    await bus.subscribe('orders', ['OrderCreated'], second.onDelivery);
    await until(() => second.deliveries.length === 1, 'the redelivery');
    expect(second.deliveries[0]?.messageId).toBe(sent.id);
    expect(second.deliveries[0]?.redelivered).toBe(true);
  });

  it('gives a nacked message back after the delay', async () => {
    const { bus, logs } = await setup(['orders']);
    const { deliveries, onDelivery } = collect();
    await bus.subscribe('orders', ['OrderCreated'], onDelivery);
    const sent = envelope('OrderCreated', 1);
    await bus.publish([sent]);
    await until(() => deliveries.length === 1, 'the first delivery');

    const nackedAt = Date.now();
    await deliveries[0]?.nack(200);
    await until(() => deliveries.length === 2, 'the redelivery');

    expect(Date.now() - nackedAt).toBeGreaterThanOrEqual(200);
    expect(deliveries[1]?.messageId).toBe(sent.id);
    expect(deliveries[1]?.redelivered).toBe(true);
    await deliveries[1]?.ack();
    await deliveries[0]?.ack(); // settled already: ignored, must not close the channel
    await eventually(async () => ((await bus.depth('orders')) === 0 ? true : undefined), 5_000, 'an empty queue');
    expect(logs.filter((l) => l.level !== 'info')).toEqual([]);
  });

  it('hands a body that is not JSON over as text', async () => {
    const { bus, exchange } = await setup(['orders']);
    const { deliveries, onDelivery } = collect();
    await bus.subscribe('orders', ['OrderCreated'], onDelivery);

    adminChannel.publish(exchange, 'OrderCreated', Buffer.from('{"broken": tru'));

    await until(() => deliveries.length === 1, 'the poison message');
    expect(deliveries[0]?.body).toBe('{"broken": tru');
    expect(deliveries[0]?.messageId).toBeUndefined();
    await deliveries[0]?.ack();
  });

  it('delivers only the types the queue is bound to', async () => {
    const { bus } = await setup(['orders']);
    const { deliveries, onDelivery } = collect();
    await bus.subscribe('orders', ['OrderCreated', 'OrderCancelled'], onDelivery);

    // One channel keeps publish order, so once the last one is in, any unbound one
    // published before it would have arrived too.
    const publishing = bus.publish([
      envelope('PaymentCaptured', 1),
      envelope('OrderCreated', 2),
      envelope('StockReserved', 3),
      envelope('OrderCancelled', 4),
    ]);

    // The unbound ones reached no queue at all: the publish says so.
    await expect(publishing).rejects.toThrow(UnroutableError);
    await expect(publishing).rejects.toMatchObject({ types: ['PaymentCaptured', 'StockReserved'] });
    await until(() => deliveries.length === 2, 'two deliveries');
    expect(deliveries.map((d) => d.routingKey)).toEqual(['OrderCreated', 'OrderCancelled']);
  });

  it('refuses a publish of a type no queue is bound to, among concurrent ones, and takes it once one is', async () => {
    const { bus } = await setup(['orders', 'audit']);
    await bus.declare('orders', ['OrderCreated']);

    const outcomes = await Promise.allSettled([
      bus.publish([envelope('OrderCreated', 1)]),
      bus.publish([envelope('StockAdjusted', 1, 'p-1'), envelope('StockAdjusted', 2, 'p-1')]),
      bus.publish([envelope('OrderCreated', 2)]),
    ]);

    expect(outcomes.map((o) => o.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    const refused = outcomes[1].status === 'rejected' ? (outcomes[1].reason as unknown) : undefined;
    expect(refused).toBeInstanceOf(UnroutableError);
    expect(refused).toMatchObject({ types: ['StockAdjusted'] });
    await eventually(async () => ((await bus.depth('orders')) === 2 ? true : undefined), 5_000, 'two orders');

    await bus.declare('audit', ['StockAdjusted']);
    await bus.publish([envelope('StockAdjusted', 1, 'p-1')]);

    await eventually(async () => ((await bus.depth('audit')) === 1 ? true : undefined), 5_000, 'the stock event');
  });

  it('parks a message that crashes its consumer each time once past the delivery limit; the others flow', async () => {
    const { bus, queuePrefix } = await setup(['orders'], { deliveryLimit: 2 });
    const [before, poison, after] = [
      envelope('OrderCreated', 1),
      envelope('OrderCreated', 2),
      envelope('OrderCreated', 3),
    ];
    await bus.declare('orders', ['OrderCreated']);
    for (const message of [before, poison, after]) await bus.publish([message]);
    const handled: string[] = [];
    let crashes = 0;
    // Its process dies on the poison message before it can ack: the connection drops
    // with the delivery unacked, and the broker hands it out again after the reconnect.
    await bus.subscribe(
      'orders',
      ['OrderCreated'],
      async (delivery) => {
        if (delivery.messageId === poison.id) {
          crashes += 1;
          forceDisconnect(bus);
          return;
        }
        handled.push(delivery.messageId ?? '');
        await delivery.ack();
      },
      { prefetch: 1 },
    );

    await until(() => handled.length === 2, 'the other two handled', 30_000);
    expect(handled).toEqual([before.id, after.id]);
    expect(crashes).toBe(3); // the first delivery and two more: the limit
    await eventually(async () => ((await bus.depth('orders.parked')) === 1 ? true : undefined), 10_000, 'parked');
    const probe = await admin.createChannel();
    const parked = await probe.get(`${queuePrefix}orders.parked`, { noAck: true });
    await probe.close();
    if (parked === false) throw new Error('expected the parked message');
    expect(parked.properties.messageId).toBe(poison.id);
    expect(parked.properties.type).toBe('OrderCreated');
    expect(parked.properties.headers?.['x-first-death-reason']).toBe('delivery_limit');
    await eventually(async () => ((await bus.depth('orders')) === 0 ? true : undefined), 5_000, 'an empty queue');
  });

  it('refuses to declare over a queue made with other arguments, says which, and leaves it as it is', async () => {
    const { bus, queuePrefix } = await setup(['orders']);
    const old = `${queuePrefix}orders`;
    await adminChannel.assertQueue(old, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
    adminChannel.sendToQueue(old, Buffer.from('{}'), { persistent: true });

    await expect(bus.declare('orders', ['OrderCreated'])).rejects.toThrow(
      new RegExp(`queue ${old.replace(/\./g, '\\.')} exists with other arguments`),
    );
    await expect(bus.subscribe('orders', ['OrderCreated'], () => Promise.resolve())).rejects.toThrow(
      /exists with other arguments/,
    );

    await eventually(
      async () => ((await adminChannel.checkQueue(old)).messageCount === 1 ? true : undefined),
      5_000,
      'the old queue with its message',
    );
  });

  it('sends several events of one type as one batch message (CloudEvents batched mode), with one confirm', async () => {
    const { bus, queuePrefix } = await setup(['orders']);
    await bus.declare('orders', ['OrderCreated', 'OrderCancelled']);
    const created = [1, 2, 3].map((n) => envelope('OrderCreated', n));
    const cancelled = envelope('OrderCancelled', 4);

    await bus.publish([...created, cancelled]);

    const probe = await admin.createChannel();
    const first = await probe.get(queuePrefix + 'orders', { noAck: true });
    const second = await probe.get(queuePrefix + 'orders', { noAck: true });
    await probe.close();
    if (first === false || second === false) throw new Error('expected two messages');
    expect(first.properties.contentType).toBe('application/cloudevents-batch+json');
    expect((JSON.parse(first.content.toString()) as Envelope[]).map((e) => e.id)).toEqual(created.map((m) => m.id));
    expect([second.properties.contentType, second.properties.messageId]).toEqual([
      'application/cloudevents+json',
      cancelled.id,
    ]);
  });

  it('unbinds the types a queue is declared without', async () => {
    const { bus } = await setup(['orders']);
    await bus.declare('orders', ['OrderCreated', 'OrderCancelled']);
    await bus.declare('orders', ['OrderCreated']);
    const { deliveries, onDelivery } = collect();
    await bus.subscribe('orders', ['OrderCreated'], onDelivery);

    await expect(bus.publish([envelope('OrderCancelled', 1)])).rejects.toThrow(UnroutableError);
    await bus.publish([envelope('OrderCreated', 2)]);

    await until(() => deliveries.length === 1, 'one delivery');
    expect(deliveries.map((d) => d.routingKey)).toEqual(['OrderCreated']);
  });

  it('declares a durable quorum queue with a delivery limit and a parking queue', async () => {
    const { bus, exchange, queuePrefix } = await setup(['orders'], { deliveryLimit: 7 });
    await bus.declare('orders', ['OrderCreated']);

    // Declaring them again with other arguments would close the channel (406).
    const probe = await admin.createChannel();
    probe.on('error', () => undefined);
    const declared = await probe.assertQueue(queuePrefix + 'orders', {
      durable: true,
      arguments: {
        'x-queue-type': 'quorum',
        'x-delivery-limit': 7,
        'x-dead-letter-exchange': `${exchange}.dlx`,
        'x-dead-letter-routing-key': queuePrefix + 'orders',
        'x-dead-letter-strategy': 'at-least-once',
        'x-overflow': 'reject-publish',
      },
    });
    const parking = await probe.assertQueue(`${queuePrefix}orders.parked`, {
      durable: true,
      arguments: { 'x-queue-type': 'quorum' },
    });
    await probe.close();
    expect([declared.queue, parking.queue]).toEqual([queuePrefix + 'orders', `${queuePrefix}orders.parked`]);
  });

  it('counts waiting and held messages in depth', async () => {
    const { bus } = await setup(['orders']);
    expect(await bus.depth('orders')).toBe(0); // not declared yet
    await bus.declare('orders', ['OrderCreated']);
    for (const n of [1, 2, 3]) await bus.publish([envelope('OrderCreated', n)]);
    await eventually(async () => ((await bus.depth('orders')) === 3 ? true : undefined), 5_000, 'three waiting');

    const { deliveries, onDelivery } = collect();
    await bus.subscribe('orders', ['OrderCreated'], onDelivery);
    await until(() => deliveries.length === 3, 'three deliveries');
    expect(await bus.depth('orders')).toBe(3); // held here, not acked yet

    await deliveries[0]?.ack();
    await deliveries[1]?.ack();
    expect(await bus.depth('orders')).toBe(1);
    await deliveries[2]?.ack();
    await eventually(async () => ((await bus.depth('orders')) === 0 ? true : undefined), 5_000, 'an empty queue');
  });

  it('reconnects after the connection drops: publishing resumes and so does the subscription', async () => {
    const { bus, logs } = await setup(['orders']);
    const { deliveries, onDelivery } = collect();
    await bus.subscribe('orders', ['OrderCreated'], onDelivery);
    const before = envelope('OrderCreated', 1);
    await bus.publish([before]);
    await until(() => deliveries.length === 1, 'the delivery before the drop');

    forceDisconnect(bus);

    const startedAt = Date.now();
    await expect(bus.publish([envelope('OrderCreated', 2)])).rejects.toThrow();
    expect(Date.now() - startedAt).toBeLessThan(2_000);
    await expect(deliveries[0]?.ack()).resolves.toBeUndefined(); // its channel is gone

    const after = envelope('OrderCreated', 3);
    await eventually(() => bus.publish([after]).then(() => true), 20_000, 'a publish after the reconnect');
    const afterDrop = await eventually(
      () => Promise.resolve(deliveries.find((d) => d.messageId === after.id)),
      20_000,
      'the delivery after the reconnect',
    );
    await afterDrop.ack();
    // The message held when the connection dropped was never acked: it comes back.
    const again = await eventually(
      () => Promise.resolve(deliveries.slice(1).find((d) => d.messageId === before.id)),
      5_000,
      'the redelivery of the held message',
    );
    expect(again.redelivered).toBe(true);
    await again.ack();
    expect(logs.some((l) => l.level === 'warn' && l.msg.includes('lost the RabbitMQ connection'))).toBe(true);
    await eventually(async () => ((await bus.depth('orders')) === 0 ? true : undefined), 5_000, 'an empty queue');
  });

  it('rejects a publish the broker refuses', async () => {
    const { bus, exchange } = await setup([]);
    await adminChannel.deleteExchange(exchange);

    await expect(bus.publish([envelope('OrderCreated', 1)])).rejects.toThrow();
  });

  it('closes idempotently and refuses to publish afterwards', async () => {
    const { bus } = await setup([]);
    await Promise.all([bus.close(), bus.close()]);
    await bus.close();
    await expect(bus.publish([envelope('OrderCreated', 1)])).rejects.toThrow(/closed/);
  });
});

describe('RabbitMQ bus without a broker', () => {
  it('gives up connecting after connectTimeoutMs', async () => {
    const startedAt = Date.now();
    await expect(
      createRabbitBus({ url: 'amqp://guest:secret@127.0.0.1:1', connectTimeoutMs: 500, log: () => undefined }),
    ).rejects.toThrow(/unreachable for 500 ms/);
    expect(Date.now() - startedAt).toBeLessThan(3_000);
  });
});
