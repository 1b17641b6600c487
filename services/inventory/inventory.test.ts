// Inventory's rules, pure: given products and reservations, when messages arrive (one
// batch, in order), then these events, this stock and these reservations. No database.
import type { DomainEvent, StockLine } from '@converge/contracts';
import { PermanentError, type SagaMode } from '@converge/platform';
import { describe, expect, it } from 'vitest';
import {
  changedReservations,
  decide,
  evolve,
  netMoves,
  type InventoryEvent,
  type InventoryState,
  type Product,
  type Reservation,
} from './inventory.ts';

const apple = '00000000-0000-4000-8000-00000000000a';
const pear = '00000000-0000-4000-8000-00000000000b';
const unknown = '00000000-0000-4000-8000-0000000000ff';
const order1 = '00000000-0000-4000-8000-000000000001';
const order2 = '00000000-0000-4000-8000-000000000002';

const product = (productId: string, stockQuantity: number, reserved = 0, sold = 0): Product => ({
  productId,
  name: productId === apple ? 'apple' : 'pear',
  price: 100,
  currency: 'EUR',
  stockQuantity,
  reserved,
  sold,
});

function given(products: Product[], reservations: Reservation[] = []): InventoryState {
  return {
    products: new Map(products.map((p) => [p.productId, p])),
    reservations: new Map(reservations.map((r) => [r.orderId, r])),
  };
}

/** Decides and evolves each message in turn, as the shell does for a batch. */
function when(
  state: InventoryState,
  messages: DomainEvent[],
  mode: SagaMode = 'choreography',
): { state: InventoryState; events: InventoryEvent[] } {
  const events: InventoryEvent[] = [];
  for (const message of messages) {
    const decision = decide(state, message, mode);
    state = evolve(state, decision);
    events.push(...decision.events);
  }
  return { state, events };
}

const stockOf = (state: InventoryState, productId: string) => {
  const p = state.products.get(productId);
  return p === undefined ? undefined : { available: p.stockQuantity, reserved: p.reserved, sold: p.sold };
};

const orderCreated = (orderId: string, items: [string, number][]): DomainEvent => ({
  type: 'OrderCreated',
  data: {
    orderId,
    userId: 'ada',
    items: items.map(([productId, quantity]) => ({ productId, quantity, unitPrice: 100 })),
    totalAmount: items.reduce((sum, [, q]) => sum + q * 100, 0),
    currency: 'EUR',
    createdAt: '2026-01-01T00:00:00.000Z',
  },
});
const reserveInventory = (orderId: string, items: [string, number][]): DomainEvent => ({
  type: 'ReserveInventory',
  data: {
    orderId,
    userId: 'ada',
    items: items.map(([productId, quantity]) => ({ productId, quantity })),
    totalAmount: 100,
    currency: 'EUR',
  },
});
const paymentFailed = (orderId: string): DomainEvent => ({
  type: 'PaymentFailed',
  data: { orderId, paymentId: orderId, userId: 'ada', amount: 100, reason: 'declined' },
});
const orderCancelled = (orderId: string): DomainEvent => ({
  type: 'OrderCancelled',
  data: { orderId, userId: 'ada', reason: 'changed my mind' },
});
const orderCompleted = (orderId: string): DomainEvent => ({
  type: 'OrderCompleted',
  data: { orderId, userId: 'ada', totalAmount: 100, currency: 'EUR' },
});
const releaseInventory = (orderId: string): DomainEvent => ({
  type: 'ReleaseInventory',
  data: { orderId, reason: 'saga compensates' },
});
const commitInventory = (orderId: string): DomainEvent => ({ type: 'CommitInventory', data: { orderId } });

const reserved = (orderId: string, items: StockLine[]): Reservation => ({
  status: 'RESERVED',
  orderId,
  userId: 'ada',
  items,
});
const types = (events: InventoryEvent[]) => events.map((e) => e.type);

describe('inventory rules, choreography', () => {
  it('given stock, when an order arrives, then every line is reserved, lines of one product summed', () => {
    const { state, events } = when(given([product(apple, 5), product(pear, 2)]), [
      orderCreated(order1, [
        [pear, 1],
        [apple, 2],
        [apple, 1],
      ]),
    ]);

    expect(events).toEqual([
      {
        type: 'InventoryReserved',
        subject: order1,
        data: {
          orderId: order1,
          userId: 'ada',
          items: [
            { productId: apple, quantity: 3 },
            { productId: pear, quantity: 1 },
          ],
          totalAmount: 400,
          currency: 'EUR',
        },
      },
    ]);
    expect(stockOf(state, apple)).toEqual({ available: 2, reserved: 3, sold: 0 });
    expect(stockOf(state, pear)).toEqual({ available: 1, reserved: 1, sold: 0 });
    expect(state.reservations.get(order1)?.status).toBe('RESERVED');
  });

  it(
    'given one line short, when the order arrives, ' + 'then nothing is reserved and it is rejected with the shortage',
    () => {
      const { state, events } = when(given([product(apple, 5), product(pear, 1)]), [
        orderCreated(order1, [
          [apple, 2],
          [pear, 2],
        ]),
      ]);

      expect(events).toEqual([
        {
          type: 'InventoryRejected',
          subject: order1,
          data: {
            orderId: order1,
            userId: 'ada',
            reason: `insufficient stock for ${pear} (requested 2, available 1)`,
            shortages: [{ productId: pear, requested: 2, available: 1 }],
          },
        },
      ]);
      expect(stockOf(state, apple)).toEqual({ available: 5, reserved: 0, sold: 0 });
      expect(state.reservations.get(order1)).toMatchObject({ status: 'REJECTED', items: [], answered: false });
    },
  );

  it('given no such product, when the order arrives, then it is rejected as unknown', () => {
    const { events } = when(given([product(apple, 5)]), [orderCreated(order1, [[unknown, 1]])]);

    expect(events[0]).toMatchObject({ type: 'InventoryRejected', data: { reason: `unknown product ${unknown}` } });
  });

  it(
    'given the last item, when two orders for it come in one batch, ' +
      'then the first gets it and the second is rejected',
    () => {
      const { state, events } = when(given([product(apple, 1)]), [
        orderCreated(order1, [[apple, 1]]),
        orderCreated(order2, [[apple, 1]]),
      ]);

      expect(events.map((e) => [e.type, e.subject])).toEqual([
        ['InventoryReserved', order1],
        ['InventoryRejected', order2],
      ]);
      expect(stockOf(state, apple)).toEqual({ available: 0, reserved: 1, sold: 0 });
    },
  );

  it('given a reservation, when the same order arrives again, then nothing happens', () => {
    const start = given([product(apple, 4, 1)], [reserved(order1, [{ productId: apple, quantity: 1 }])]);
    const { state, events } = when(start, [orderCreated(order1, [[apple, 1]])]);

    expect(events).toEqual([]);
    expect(state).toEqual(start);
  });

  it.each([
    ['payment failed', paymentFailed, 'payment failed: declined'],
    ['order cancelled', orderCancelled, 'order cancelled'],
  ])(
    'given a reservation, when %s, then the stock comes back and InventoryReleased says what',
    (_, release, reason) => {
      const start = given([product(apple, 3, 2)], [reserved(order1, [{ productId: apple, quantity: 2 }])]);
      const { state, events } = when(start, [release(order1), release(order1)]);

      expect(events).toEqual([
        {
          type: 'InventoryReleased',
          subject: order1,
          data: { orderId: order1, items: [{ productId: apple, quantity: 2 }], reason },
        },
      ]);
      expect(stockOf(state, apple)).toEqual({ available: 5, reserved: 0, sold: 0 });
      expect(state.reservations.get(order1)).toMatchObject({ status: 'RELEASED', reason });
    },
  );

  it(
    'given a cancel before its order, when the order arrives late, ' +
      'then it reserves nothing but its items are recorded',
    () => {
      const { state, events } = when(given([product(apple, 5)]), [
        orderCancelled(order1),
        orderCreated(order1, [
          [apple, 2],
          [apple, 1],
        ]),
      ]);

      expect(events).toEqual([]);
      expect(stockOf(state, apple)).toEqual({ available: 5, reserved: 0, sold: 0 });
      expect(state.reservations.get(order1)).toEqual({
        status: 'RELEASED',
        orderId: order1,
        userId: null,
        items: [{ productId: apple, quantity: 3 }],
        reason: 'order cancelled',
      });
    },
  );

  it('given a reservation, when the order completes (twice), then reserved stock becomes sold, once', () => {
    const start = given([product(apple, 3, 2)], [reserved(order1, [{ productId: apple, quantity: 2 }])]);
    const { state, events } = when(start, [orderCompleted(order1), orderCompleted(order1)]);

    expect(events).toEqual([
      {
        type: 'InventoryCommitted',
        subject: order1,
        data: { orderId: order1, items: [{ productId: apple, quantity: 2 }] },
      },
    ]);
    expect(stockOf(state, apple)).toEqual({ available: 3, reserved: 0, sold: 2 });
  });

  it('given sold stock, when the order is cancelled, then nothing is given back', () => {
    const start = given(
      [product(apple, 3, 0, 2)],
      [{ status: 'COMMITTED', orderId: order1, userId: 'ada', items: [{ productId: apple, quantity: 2 }] }],
    );
    const { state, events } = when(start, [orderCancelled(order1)]);

    expect(events).toEqual([]);
    expect(state).toEqual(start);
  });

  it.each([
    ['no reservation', [] as Reservation[]],
    [
      'a released one',
      [{ status: 'RELEASED', orderId: order1, userId: 'ada', items: [], reason: 'order cancelled' }] as Reservation[],
    ],
    [
      'a rejected one',
      [
        { status: 'REJECTED', orderId: order1, userId: 'ada', items: [], reason: 'short', answered: false },
      ] as Reservation[],
    ],
  ])('given %s, when the order completes, then it is an invariant violation for an operator', (_, reservations) => {
    expect(() => when(given([product(apple, 3)], reservations), [orderCompleted(order1)])).toThrow(PermanentError);
  });
});

describe('inventory rules, orchestration', () => {
  it('given stock, when the saga reserves and commits, then the same rules apply as in choreography', () => {
    const { state, events } = when(
      given([product(apple, 2)]),
      [reserveInventory(order1, [[apple, 2]]), commitInventory(order1)],
      'orchestration',
    );

    expect(types(events)).toEqual(['InventoryReserved', 'InventoryCommitted']);
    expect(stockOf(state, apple)).toEqual({ available: 0, reserved: 0, sold: 2 });
  });

  it(
    'given orchestration, when the order and payment events arrive, ' + 'then they decide nothing (the saga drives)',
    () => {
      const start = given([product(apple, 2)], [reserved(order1, [{ productId: apple, quantity: 1 }])]);
      const { state, events } = when(
        start,
        [orderCreated(order2, [[apple, 1]]), paymentFailed(order1), orderCancelled(order1), orderCompleted(order1)],
        'orchestration',
      );

      expect(events).toEqual([]);
      expect(state).toEqual(start);
    },
  );

  it('given a reservation, when the saga releases it twice, then stock comes back and it is answered once', () => {
    const start = given([product(apple, 1, 1)], [reserved(order1, [{ productId: apple, quantity: 1 }])]);
    const { state, events } = when(start, [releaseInventory(order1), releaseInventory(order1)], 'orchestration');

    expect(events).toEqual([
      {
        type: 'InventoryReleased',
        subject: order1,
        data: { orderId: order1, items: [{ productId: apple, quantity: 1 }], reason: 'saga compensates' },
      },
    ]);
    expect(stockOf(state, apple)).toEqual({ available: 2, reserved: 0, sold: 0 });
  });

  it(
    'given nothing yet, when the saga releases before it reserves, then an ' +
      'empty answer, once, and the late reserve takes nothing',
    () => {
      const { state, events } = when(
        given([product(apple, 2)]),
        [releaseInventory(order1), releaseInventory(order1), reserveInventory(order1, [[apple, 1]])],
        'orchestration',
      );

      expect(events).toEqual([
        {
          type: 'InventoryReleased',
          subject: order1,
          data: { orderId: order1, items: [], reason: 'saga compensates' },
        },
      ]);
      expect(stockOf(state, apple)).toEqual({ available: 2, reserved: 0, sold: 0 });
      expect(state.reservations.get(order1)).toMatchObject({
        status: 'RELEASED',
        items: [{ productId: apple, quantity: 1 }],
      });
    },
  );

  it(
    'given a rejected order, when the saga releases it twice, then one ' +
      'empty InventoryReleased, remembered on the reservation',
    () => {
      const { state, events } = when(
        given([product(apple, 0)]),
        [reserveInventory(order1, [[apple, 1]]), releaseInventory(order1), releaseInventory(order1)],
        'orchestration',
      );

      expect(types(events)).toEqual(['InventoryRejected', 'InventoryReleased']);
      expect(events[1]?.data).toEqual({ orderId: order1, items: [], reason: 'saga compensates' });
      expect(state.reservations.get(order1)).toMatchObject({ status: 'REJECTED', answered: true });
    },
  );

  it('given sold stock, when the saga asks to release it, then it is an invariant violation', () => {
    const start = given(
      [product(apple, 0, 0, 1)],
      [{ status: 'COMMITTED', orderId: order1, userId: 'ada', items: [{ productId: apple, quantity: 1 }] }],
    );

    expect(() => when(start, [releaseInventory(order1)], 'orchestration')).toThrow(PermanentError);
  });

  it('given no reservation, when the saga commits, then it is an invariant violation', () => {
    expect(() => when(given([product(apple, 1)]), [commitInventory(order1)], 'orchestration')).toThrow(PermanentError);
  });
});

describe('what a batch writes back', () => {
  it(
    'given a batch that reserved, released and reserved again, then one net move per ' +
      'product and each changed reservation with the status it was read with',
    () => {
      const start = given(
        [product(apple, 5, 1), product(pear, 5)],
        [reserved(order1, [{ productId: apple, quantity: 1 }])],
      );
      const { state } = when(start, [paymentFailed(order1), orderCreated(order2, [[apple, 2]])]);

      expect(netMoves(start, state)).toEqual([{ productId: apple, available: -1, reserved: 1, sold: 0 }]);
      expect(changedReservations(start, state).map((c) => [c.from, c.to.status, c.to.orderId])).toEqual([
        ['RESERVED', 'RELEASED', order1],
        [undefined, 'RESERVED', order2],
      ]);
    },
  );
});
