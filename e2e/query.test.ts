// The query service end to end, on both backends. Read your writes: a write's
// consistency token makes a read of the read models wait for that write, so a client
// never reads an older state as if it were fresh; when the read side is behind for
// longer than the bound, it says so (503 with how far behind), and catches up
// afterwards. Rebuilds from the feeds, with orders flowing, equal the live models.
import { eventually } from '@converge/platform/testing';
import { expect, it } from 'vitest';
import { backendOf, customer, describeSystem, merchant, modes, sagaModeOf } from './harness.ts';

describeSystem(
  'query service',
  modes.filter((m) => sagaModeOf(m) === 'choreography'),
  (h, name) => {
    const query = async (url: string, token?: string) =>
      h.system.services.query.app.inject({
        method: 'GET',
        url,
        headers: { ...(await h.auth()), ...(token === undefined ? {} : { 'consistency-token': token }) },
      });

    it(
      'given orders just placed and cancelled, when each is read at once with ' +
        'its token, then the read model already shows that write',
      async () => {
        const product = await h.product(100, 300);
        const user = await h.user(1_000_000);
        for (let i = 0; i < 10; i++) {
          const placed = await h.system.services.order.app.inject({
            method: 'POST',
            url: '/orders',
            headers: { ...(await h.auth(customer(user))), 'idempotency-key': `ryw-${i}` },
            payload: { items: [{ productId: product, quantity: 1 }] },
          });
          const token = placed.headers['consistency-token'];
          expect(token).toMatch(/^order:[0-9a-f-]{36}:1$/);
          const orderId = placed.json<{ orderId: string }>().orderId;
          const summary = await query(`/orders/${orderId}`, String(token));
          expect(summary.statusCode).toBe(200);
          expect(summary.json()).toMatchObject({ orderId, userId: user });
          if (i % 3 === 0) {
            const cancelled = await h.system.services.order.app.inject({
              headers: await h.auth(customer(user)),
              method: 'POST',
              url: `/orders/${orderId}/cancel`,
              payload: {},
            });
            if (cancelled.statusCode === 200) {
              const after = await query(`/orders/${orderId}`, String(cancelled.headers['consistency-token']));
              expect(after.json()).toMatchObject({ status: 'CANCELLED' });
            }
          }
        }
        const restocked = await h.system.services.inventory.app.inject({
          headers: await h.auth(merchant),
          method: 'POST',
          url: `/products/${product}/restock`,
          payload: { quantity: 5 },
        });
        const restockToken = String(restocked.headers['consistency-token']);
        expect(restockToken).toMatch(new RegExp(`^inventory:${product}:\\d+$`));
        const availability = (await query(`/products/${product}`, restockToken)).json<{
          stockQuantity: number;
          reserved: number;
          sold: number;
        }>();
        expect(availability.stockQuantity + availability.reserved + availability.sold).toBe(105);
        await h.check();
      },
    );

    it(
      'given the read side stopped, when a read carries a fresh token, then it answers 503 ' +
        'saying how far behind it is; once running again, the same read succeeds',
      async () => {
        const product = await h.product(10, 300);
        const user = await h.user(10_000);
        // The start-up catch-up would apply the order from the feeds; it has run before this.
        await eventually(
          async () =>
            /^converge_projection_catchups_total [1-9]\d*$/m.test((await query('/metrics')).body) ? true : undefined,
          10_000,
          'the start-up catch-up',
        );
        await h.system.services.query.consumer.stop();
        const placed = await h.system.services.order.app.inject({
          method: 'POST',
          url: '/orders',
          headers: { ...(await h.auth(customer(user))), 'idempotency-key': 'ryw-stopped' },
          payload: { items: [{ productId: product, quantity: 1 }] },
        });
        const { orderId } = placed.json<{ orderId: string }>();
        const token = String(placed.headers['consistency-token']);

        const behind = await query(`/orders/${orderId}`, token);
        expect(behind.statusCode).toBe(503);
        expect(behind.headers['content-type']).toContain('application/problem+json');
        expect(behind.headers['retry-after']).toBe('1');
        expect(behind.json<{ detail: string }>().detail).toMatch(
          new RegExp(`has not applied ${token} yet: it is at version 0 of that stream after \\d+ ms`),
        );
        // Without a token the read answers from what the model has: this order is not in it yet.
        expect((await query(`/orders/${orderId}`)).statusCode).toBe(404);
        type Projections = {
          projections: {
            name: string;
            applied: number;
            delayMs: { p99: number; samples: number };
            lag: { events: number; seconds: number };
          }[];
        };
        const lagging = (await query('/projections'))
          .json<Projections>()
          .projections.find((p) => p.name === 'order-summary');
        expect(lagging?.lag.events).toBeGreaterThanOrEqual(1);
        expect(lagging?.lag.seconds).toBeGreaterThan(0);
        const metrics = (await query('/metrics')).body;
        expect(metrics).toMatch(/^converge_projection_lag_events\{model="order-summary"\} [1-9]\d*$/m);

        await h.system.restart('query');
        const caughtUp = await query(`/orders/${orderId}`, token);
        expect(caughtUp.statusCode).toBe(200);
        expect(Number(caughtUp.headers['consistency-waited-ms'])).toBeGreaterThanOrEqual(0);
        await h.waitFinal(orderId);
        await h.check();
        const projections = (await query('/projections')).json<Projections>().projections;
        expect(projections.map((p) => p.name)).toEqual([
          'order-summary',
          'user-orders',
          'product-availability',
          'order-counts',
        ]);
        for (const p of projections) {
          expect(p.applied, p.name).toBeGreaterThan(0);
          expect(p.delayMs.samples, p.name).toBeGreaterThan(0);
          expect(p.lag, p.name).toEqual({ events: 0, seconds: 0 });
        }
        expect((await query('/metrics')).body).toMatch(
          /^converge_projection_delay_seconds_count\{model="order-summary"\} [1-9]\d*$/m,
        );
      },
    );

    it(
      'given a malformed token, or one from a source the read models do not ' +
        'follow, when a read carries it, then 400 or 422 problem+json',
      async () => {
        const cases: [string, number][] = [
          ['nonsense', 400],
          ['order:abc', 400],
          ['order:abc:0', 400],
          ['order:abc:-1', 400],
          [`order:${'x'.repeat(300)}:1`, 400],
          ['orchestrator:abc:1', 422],
        ];
        for (const [token, status] of cases) {
          const refused = await query('/system', token);
          expect(refused.statusCode, token).toBe(status);
          expect(refused.headers['content-type'], token).toContain('application/problem+json');
        }
      },
    );

    /** The live read models, as rows that a rebuild must reproduce (bookkeeping times aside). */
    const snapshot = async () => {
      const db = h.system.dbs.query;
      return {
        summaries: await db.query('SELECT order_id, status, document FROM order_summaries ORDER BY order_id'),
        users: await db.query('SELECT * FROM user_orders ORDER BY order_id'),
        products: await db.query(
          'SELECT product_id, name, price, currency, stock_quantity, ' +
            'reserved, sold FROM product_availability ORDER BY product_id',
        ),
        counts: await db.query('SELECT status, n FROM order_counts WHERE n <> 0 ORDER BY status'),
      };
    };
    const rebuild = async (model: string) =>
      h.system.services.query.app.inject({
        headers: await h.auth(),
        method: 'POST',
        url: `/projections/${model}/rebuild`,
      });

    it(
      'given a quiet system, when every read model is rebuilt from the ' +
        'feeds, then each equals the live one it replaces',
      async () => {
        const product = await h.product(50, 400);
        const users = [await h.user(1_000_000), await h.user(500)];
        for (let i = 0; i < 8; i++)
          await h.waitFinal((await h.place(users[i % 2] ?? '', [{ productId: product, quantity: 1 }])).orderId);
        await h.quiet();
        const before = await snapshot();
        const response = await rebuild('all');
        expect(response.statusCode).toBe(200);
        const { rebuilt } = response.json<{ rebuilt: { model: string; events: number; rows: number }[] }>();
        expect(rebuilt.map((r) => r.model)).toEqual([
          'order-summary',
          'user-orders',
          'product-availability',
          'order-counts',
        ]);
        for (const r of rebuilt) expect(r.events, r.model).toBeGreaterThan(0);
        expect(await snapshot()).toEqual(before);
        await h.check();
      },
    );

    it('given a read model that drifted, when it is rebuilt, then it equals the fold of its events again', async () => {
      const product = await h.product(5, 200);
      const user = await h.user(10_000);
      await h.waitFinal((await h.place(user, [{ productId: product, quantity: 2 }])).orderId);
      await h.quiet();
      await h.system.dbs.query.query(
        'UPDATE product_availability SET stock_quantity = stock_quantity + 7 WHERE product_id = $1',
        [product],
      );
      expect((await rebuild('product-availability')).statusCode).toBe(200);
      expect((await query(`/products/${product}`)).json()).toMatchObject({ stockQuantity: 3, reserved: 0, sold: 2 });
      await h.check();
    });

    it(
      'given orders flowing, when the read models are rebuilt meanwhile, then ' +
        'nothing is lost or counted twice: they equal the fold of the feeds',
      async () => {
        const products = [await h.product(100, 150), await h.product(100, 250)];
        const user = await h.user(1_000_000);
        const placing = (async () => {
          const placed: string[] = [];
          for (let i = 0; i < 40; i++) {
            placed.push((await h.place(user, [{ productId: products[i % 2] ?? '', quantity: 1 + (i % 2) }])).orderId);
            if (i % 10 === 9) await new Promise((resolve) => setTimeout(resolve, 20));
          }
          return placed;
        })();
        for (const model of ['all', 'product-availability', 'order-summary']) {
          const response = await rebuild(model);
          expect(response.statusCode, model).toBe(200);
        }
        for (const orderId of await placing) await h.waitFinal(orderId);
        await h.check();
        const [rows] = await h.system.dbs.query.query<{ n: number }>(
          'SELECT count(*)::int AS n FROM user_orders WHERE user_id = $1',
          [user],
        );
        expect(rows?.n).toBe(40);
      },
    );

    // A consumer transaction that read the live table and then writes it while the rebuild
    // holds its lock and waits to drop it: a deadlock. PostgreSQL finds it at once, on the
    // writer's side (it holds a lock the rebuild's waiting request conflicts with), so the
    // writer is aborted — the consumer retries such a transaction by itself — and the
    // rebuild completes.
    // Needs two connections at once: PostgreSQL only (PGlite has one).
    if (backendOf(name) === 'postgres+rabbitmq')
      it(
        'given a transaction that read the live table and writes it after the rebuild locked it, when ' +
          'PostgreSQL breaks the deadlock, then the writer is the victim and the rebuild completes',
        async () => {
          const db = h.system.dbs.query;
          let rebuilding: ReturnType<typeof rebuild> | undefined;
          const writer = await db
            .transaction(async (tx) => {
              await tx.query('SELECT 1 FROM user_orders LIMIT 1');
              rebuilding = rebuild('user-orders');
              // The rebuild holds its lock and waits to drop the table this transaction still reads.
              await eventually(
                async () =>
                  (
                    await db.query(
                      'SELECT 1 FROM pg_stat_activity WHERE wait_event_type = ' +
                        "'Lock' AND query LIKE 'DROP TABLE user_orders%'",
                    )
                  ).length > 0
                    ? true
                    : undefined,
                10_000,
                'the rebuild waiting',
              );
              await tx.query('LOCK TABLE user_orders IN ROW EXCLUSIVE MODE');
              return 'written';
            })
            .catch((error: unknown) => (error as { code?: string }).code);
          expect(writer).toBe('40P01');
          const response = await rebuilding;
          expect(response?.statusCode).toBe(200);
          await h.check();
        },
      );

    it(
      'given a user with several orders, when the list is read page by page, then each order comes ' +
        'once, newest first; a status filter keeps that status; a forged cursor is 400',
      async () => {
        const product = await h.product(4, 100);
        const user = await h.user(100_000);
        const placed: string[] = [];
        for (let i = 0; i < 5; i++) placed.push((await h.place(user, [{ productId: product, quantity: 1 }])).orderId);
        const finals = new Map<string, string>();
        for (const orderId of placed) finals.set(orderId, (await h.waitFinal(orderId)).status);
        type Page = { items: { orderId: string; status: string; createdAt: string }[]; next: string | null };
        await eventually(
          async () => {
            const all = (await query(`/users/${user}/orders?limit=500`)).json<Page>().items;
            return all.length === 5 && all.every((o) => o.status === finals.get(o.orderId)) ? true : undefined;
          },
          20_000,
          "the user's orders in the read model",
        );

        const seen: Page['items'] = [];
        const sizes: number[] = [];
        let cursor: string | null = null;
        do {
          const response = await query(`/users/${user}/orders?limit=2${cursor === null ? '' : `&cursor=${cursor}`}`);
          expect(response.statusCode).toBe(200);
          const page = response.json<Page>();
          seen.push(...page.items);
          sizes.push(page.items.length);
          cursor = page.next;
        } while (cursor !== null);
        expect(sizes).toEqual([2, 2, 1]);
        // A last page that is full says so: no cursor to an empty page.
        expect((await query(`/users/${user}/orders?limit=5`)).json<Page>().next).toBeNull();
        expect(seen.map((o) => o.orderId).sort()).toEqual([...placed].sort());
        for (let i = 1; i < seen.length; i++)
          expect(Date.parse(seen[i - 1]?.createdAt ?? '') >= Date.parse(seen[i]?.createdAt ?? '')).toBe(true);

        // Four in stock, five ordered: one order failed.
        const failed = (await query(`/users/${user}/orders?status=FAILED`)).json<Page>();
        expect(failed.items.map((o) => o.orderId)).toEqual(
          [...finals].filter(([, status]) => status === 'FAILED').map(([id]) => id),
        );
        expect(failed.items).toHaveLength(1);
        for (const bad of [
          'nonsense',
          Buffer.from('2026-11-22T10:00:00Z|not-a-uuid').toString('base64url'),
          Buffer.from(`1|${product}`).toString('base64url'),
        ]) {
          const refused = await query(`/users/${user}/orders?cursor=${bad}`);
          expect(refused.statusCode, bad).toBe(400);
          expect(refused.headers['content-type']).toContain('application/problem+json');
        }
        expect((await query(`/users/${user}/orders?status=LOST`)).statusCode).toBe(400);
        await h.check();
      },
    );

    it(
      'given an unknown read model, when a rebuild is asked for, ' + 'then 400 problem+json and nothing changes',
      async () => {
        await h.quiet(); // nothing in flight may change the read models meanwhile
        const before = await snapshot();
        const refused = await rebuild('everything');
        expect(refused.statusCode).toBe(400);
        expect(refused.headers['content-type']).toContain('application/problem+json');
        expect(await snapshot()).toEqual(before);
      },
    );

    const until = <T>(probe: () => Promise<T | undefined>, what: string, timeoutMs = 20_000): Promise<T> =>
      eventually(probe, timeoutMs, what);
    const summaryStatus = async (orderId: string) => {
      const response = await query(`/orders/${orderId}`);
      return response.statusCode === 200 ? (response.json<{ status: string | null }>().status ?? undefined) : undefined;
    };
    /**
     * Waits until every event of the order's stream is in the query service's queue, then drops the queue's
     * content.
     */
    const loseQueuedEvents = async (orderId: string) => {
      const [row] = await h.system.dbs.order.query<{ n: number }>(
        'SELECT count(*)::int AS n FROM outbox WHERE subject = $1 AND published_at IS NULL',
        [orderId],
      );
      expect(row?.n).toBe(0);
      await until(
        async () => ((await h.system.bus.depth('query')) > 0 ? true : undefined),
        'events waiting for the query service',
      );
      const purged = await h.system.bus.purge?.('query');
      if (purged === undefined) throw new Error('this bus cannot purge');
      return purged;
    };

    it(
      "given the broker lost the query service's messages while it was down, " +
        'when it starts again, then it catches up from the feeds',
      async () => {
        const product = await h.product(10, 300);
        const user = await h.user(10_000);
        await h.system.services.query.stop();
        const { orderId } = await h.place(user, [{ productId: product, quantity: 1 }]);
        await h.waitFinal(orderId);
        await until(
          async () =>
            (
              await h.system.dbs.inventory.query(
                "SELECT 1 FROM outbox WHERE subject = $1 AND type = 'InventoryCommitted' AND published_at IS NOT NULL",
                [orderId],
              )
            ).length > 0
              ? true
              : undefined,
          'the last event published',
        );
        expect(await loseQueuedEvents(orderId)).toBeGreaterThan(0);

        await h.system.restart('query');
        expect(
          await until(
            async () => ((await summaryStatus(orderId)) === 'COMPLETED' ? true : undefined),
            'the order in the read model',
          ),
        ).toBe(true);
        // The catch-up counts what it recovered when it is done with every feed.
        await until(
          async () =>
            /^converge_projection_recovered_total [1-9]\d*$/m.test((await query('/metrics')).body) ? true : undefined,
          'the recovery counted',
        );
        await h.check();
      },
    );

    it(
      'given a stream whose first events the broker lost, when a later one arrives, then the ' +
        'query service notices the gap by sequence and catches up from the feeds',
      async () => {
        const product = await h.product(10, 300);
        const user = await h.user(10_000);
        const consumer = h.system.services.query.consumer;
        await consumer.stop(); // the service (and its gap watch) runs on; nothing arrives from the broker
        try {
          const { orderId } = await h.place(user, [{ productId: product, quantity: 1 }]);
          await h.waitFinal(orderId);
          await until(
            async () =>
              (
                await h.system.dbs.inventory.query(
                  'SELECT 1 FROM outbox WHERE subject = $1 AND type = ' +
                    "'InventoryCommitted' AND published_at IS NOT NULL",
                  [orderId],
                )
              ).length > 0
                ? true
                : undefined,
            'the last event published',
          );
          expect(await loseQueuedEvents(orderId)).toBeGreaterThan(0);
          // The order's last event comes in alone: its predecessor is missing, so it is held.
          const [last] = await h.system.dbs.order.query<{ envelope: unknown }>(
            'SELECT envelope FROM outbox WHERE subject = $1 ORDER BY sequence DESC LIMIT 1',
            [orderId],
          );
          expect(await consumer.process(last?.envelope)).toBe('held');
          expect(await summaryStatus(orderId)).toBeUndefined();
          expect(
            await until(
              async () => ((await summaryStatus(orderId)) === 'COMPLETED' ? true : undefined),
              'the gap to be noticed and filled',
            ),
          ).toBe(true);
          expect(await h.system.dbs.query.query("SELECT 1 FROM held_messages WHERE consumer = 'query'")).toHaveLength(
            0,
          );
        } finally {
          await h.system.restart('query');
        }
        await h.check();
      },
    );

    it('given an operator, when a catch-up is asked for, then every feed event is read and found applied', async () => {
      const response = await h.system.services.query.app.inject({
        headers: await h.auth(),
        method: 'POST',
        url: '/projections/catch-up',
      });
      expect(response.statusCode).toBe(200);
      const result = response.json<{ read: number; applied?: number }>();
      expect(result.applied ?? 0).toBe(0);
      await h.check();
    });

    it(
      "given cached product and order reads, when they change, then a read with the write's " +
        'token never meets the cached old value, and repeated reads hit the cache',
      async () => {
        const product = await h.product(10, 100);
        const hits = async () =>
          Number(
            /^converge_cache_reads_total\{cache="\w+",outcome="hit"\} (\d+)$/m.exec(
              (await query('/metrics')).body,
            )?.[1] ?? -1,
          );
        for (let i = 1; i <= 10; i++) {
          await query(`/products/${product}`); // fills the cache
          const restocked = await h.system.services.inventory.app.inject({
            headers: await h.auth(merchant),
            method: 'POST',
            url: `/products/${product}/restock`,
            payload: { quantity: 1 },
          });
          const fresh = await query(`/products/${product}`, String(restocked.headers['consistency-token']));
          expect(fresh.json<{ stockQuantity: number }>().stockQuantity, `restock ${i}`).toBe(10 + i);
        }
        const before = await hits();
        for (let i = 0; i < 3; i++)
          expect((await query(`/products/${product}`)).json<{ stockQuantity: number }>().stockQuantity).toBe(20);
        expect(await hits()).toBeGreaterThanOrEqual(before + 2);
        await h.check();
      },
    );
  },
);
