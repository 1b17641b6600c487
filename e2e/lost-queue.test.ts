// The broker losing the query service's events while it runs, on both backends. What
// a later event reveals (a gap by sequence) is in query.test.ts; here is what nothing
// later reveals: a stream's last events lost, found by the periodic sweep of the feeds.
// On RabbitMQ the queue itself is deleted while orders flow: the bus declares it again,
// the events published meanwhile went nowhere, and the read models converge anyway.
import amqp from 'amqplib';
import { eventually, servers } from '@converge/platform/testing';
import { expect, it } from 'vitest';
import { backendOf, describeSystem, modes, sagaModeOf } from './harness.ts';

describeSystem(
  'the query service losing its queue',
  modes.filter((m) => sagaModeOf(m) === 'choreography'),
  { queryWatch: { sweepEveryMs: 1_000, settleMs: 1_000 } },
  (h, name) => {
    const query = async (url: string) =>
      h.system.services.query.app.inject({ method: 'GET', url, headers: await h.auth() });
    const summaryStatus = async (orderId: string) => {
      const response = await query(`/orders/${orderId}`);
      return response.statusCode === 200 ? (response.json<{ status: string | null }>().status ?? undefined) : undefined;
    };
    const recovered = async () =>
      Number(/^converge_projection_recovered_total (\d+)$/m.exec((await query('/metrics')).body)?.[1] ?? 0);
    const published = (orderId: string) =>
      eventually(
        async () =>
          (
            await h.system.dbs.inventory.query(
              "SELECT 1 FROM outbox WHERE subject = $1 AND type = 'InventoryCommitted' AND published_at IS NOT NULL",
              [orderId],
            )
          ).length > 0
            ? true
            : undefined,
        10_000,
        "the order's last event published",
      );

    it(
      'given a stream whose every event the broker lost, when nothing ' +
        'later arrives, then the sweep of the feeds finds them',
      async () => {
        const product = await h.product(10, 300);
        const user = await h.user(10_000);
        const consumer = h.system.services.query.consumer;
        const before = await recovered();
        await consumer.stop(); // the service and its sweep run on; nothing arrives from the broker
        try {
          const { orderId } = await h.place(user, [{ productId: product, quantity: 2 }]);
          expect((await h.waitFinal(orderId)).status).toBe('COMPLETED');
          await published(orderId);
          await eventually(
            async () => ((await h.system.bus.depth('query')) > 0 ? true : undefined),
            10_000,
            'events waiting for the query service',
          );
          expect(await h.system.bus.purge?.('query')).toBeGreaterThan(0);
          // No event of the stream ever arrives, so nothing is held: no gap to notice.
          expect(await h.system.dbs.query.query("SELECT 1 FROM held_messages WHERE consumer = 'query'")).toHaveLength(
            0,
          );
          expect(
            await eventually(
              async () => ((await summaryStatus(orderId)) === 'COMPLETED' ? true : undefined),
              15_000,
              'the sweep to find the order',
            ),
          ).toBe(true);
          expect(await h.system.dbs.query.query("SELECT 1 FROM held_messages WHERE consumer = 'query'")).toHaveLength(
            0,
          );
          // The sweep counts what it recovered when it is done with every feed.
          await eventually(
            async () => ((await recovered()) > before ? true : undefined),
            10_000,
            'the recovery counted',
          );
          const availability = (await query(`/products/${product}`)).json<{
            stockQuantity: number;
            reserved: number;
            sold: number;
          }>();
          expect(availability).toMatchObject({ stockQuantity: 8, reserved: 0, sold: 2 });
        } finally {
          await h.system.restart('query');
        }
        await h.check();
      },
    );

    // Only a broker has a queue to delete.
    if (backendOf(name) === 'postgres+rabbitmq')
      it(
        "given orders flowing, when the query service's queue is deleted on the broker, " +
          'then it is declared again and the read models converge from the feeds',
        async () => {
          const bus = h.system.options.bus;
          if (bus.kind !== 'rabbitmq') throw new Error('needs RabbitMQ');
          const queue = `${bus.queuePrefix ?? ''}query`;
          const product = await h.product(1_000, 100);
          const user = await h.user(1_000_000);
          const connection = await amqp.connect(servers.rabbitmq);
          try {
            const channel = await connection.createChannel();
            const orders: Promise<{ orderId: string }>[] = [];
            for (let i = 0; i < 30; i++) {
              orders.push(h.place(user, [{ productId: product, quantity: 1 }]));
              // The queue goes (with what it held) while orders flow; until the bus notices and
              // declares it again, their events are routed nowhere. The bus declares it again
              // within milliseconds, so one deletion may lose nothing: it goes six times.
              if (i >= 5 && i <= 20 && i % 3 === 2) await channel.deleteQueue(queue);
              await new Promise((r) => setTimeout(r, 50));
            }
            const placed = await Promise.all(orders);
            for (const { orderId } of placed) await h.waitFinal(orderId);
            // A check of a missing queue closes its channel: each look takes a channel of its own.
            const exists = async () => {
              const probe = await connection.createChannel();
              const found = await probe.checkQueue(queue).then(
                () => true,
                () => false,
              );
              await probe.close().catch(() => undefined);
              return found;
            };
            await eventually(async () => ((await exists()) ? true : undefined), 10_000, 'the queue declared again');
            for (const { orderId } of placed) {
              const final = (await h.order(orderId)).status;
              await eventually(
                async () => ((await summaryStatus(orderId)) === final ? true : undefined),
                20_000,
                `order ${orderId} in the read model`,
              );
            }
          } finally {
            await connection.close().catch(() => undefined);
          }
          // What the deleted queue lost, the feeds gave back: by the sweep (counted as recovered) or by
          // a gap the next event revealed. How much was lost varies from run to run: publishes are
          // mandatory, so an event only this queue binds (InventoryCommitted) is refused while the
          // queue is gone and stays in its outbox until it is back, and is not lost at all. What must
          // hold is that the read models converge.
          // A status can be right while a stream's last events (InventoryCommitted, the only
          // PaymentProcessed) were lost with the queue: nothing later reveals them, and the
          // sweep finds them once they are older than its settle time. The read models
          // converge; they are not equal the moment the statuses are.
          await eventually(() => h.check().then(() => true), 20_000, 'the read models equal the fold of the feeds');
        },
      );
  },
);
