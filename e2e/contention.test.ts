// Concurrent writers on one product: 200 orders race for its last 10 units. Reservations
// lock the product row and update it conditionally, so exactly 10 win, stock never
// goes below zero, and every loser fails with the reason.
import { expect, it } from 'vitest';
import { describeSystem, modes } from './harness.ts';

describeSystem('contention', modes, (h) => {
  it(
    'given 10 units left, when 200 orders for one unit each arrive at ' +
      'once, then exactly 10 complete and 190 fail with the reason',
    async () => {
      const product = await h.product(10, 250);
      const users = await Promise.all(Array.from({ length: 20 }, () => h.user(1_000_000)));
      let lowest = 10;
      let watching = true;
      const watcher = (async () => {
        while (watching) {
          const { stockQuantity } = await h.stock(product);
          lowest = Math.min(lowest, stockQuantity);
          await new Promise((r) => setTimeout(r, 5));
        }
      })();
      const placed = await Promise.all(
        Array.from({ length: 200 }, (_, i) =>
          h.place(users[i % users.length] ?? 'nobody', [{ productId: product, quantity: 1 }]),
        ),
      );
      expect(placed.every((p) => p.status === 201)).toBe(true);
      await h.quiet(60_000);
      watching = false;
      await watcher;

      const finals = await Promise.all(placed.map((p) => h.order(p.orderId)));
      const completed = finals.filter((o) => o.status === 'COMPLETED');
      const failed = finals.filter((o) => o.status === 'FAILED');
      expect(completed).toHaveLength(10);
      expect(failed).toHaveLength(190);
      for (const order of failed)
        expect(order.reason).toMatch(/^insufficient stock for .* \(requested 1, available 0\)$/);
      expect(lowest).toBeGreaterThanOrEqual(0);
      expect(await h.stock(product)).toMatchObject({ stockQuantity: 0, reserved: 0, sold: 10 });
      await h.check();
    },
  );
});
