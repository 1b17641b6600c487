// The saga engine, pure: given a saga's history, when a reply, a deadline or an
// operator acts, then these events (and so these commands). No database, no clock.
import type { DomainEvent, EventType } from '@converge/contracts';
import { describe, expect, it } from 'vitest';
import {
  decide,
  evolve,
  SagaDefinitionError,
  startSaga,
  validateSaga,
  type Saga,
  type SagaDefinition,
  type SagaEvent,
  type SagaInput,
} from './saga.ts';

type Trip = { orderId: string; userId: string; amount: number };

const orderId = '00000000-0000-4000-8000-000000000001';
const userId = 'ada';
const retry = { attempts: 2, deadlineMs: 1000, backoff: 2 };

/**
 * A three-step saga shaped like order fulfilment: order (by the trigger), reserve, pay, then a pivot and a last
 * step.
 */
const definition: SagaDefinition<Trip> = {
  name: 'test',
  startedBy: 'OrderCreated',
  start: (event) => {
    if (event.type !== 'OrderCreated') throw new Error('unexpected trigger');
    return {
      id: event.data.orderId,
      data: { orderId: event.data.orderId, userId: event.data.userId, amount: event.data.totalAmount },
    };
  },
  steps: [
    {
      name: 'order',
      success: ['OrderCreated'],
      compensation: {
        command: (d, reason) => ({ type: 'FailOrder', subject: d.orderId, data: { orderId: d.orderId, reason } }),
        replies: ['OrderFailed', 'OrderCancelled'],
        retry,
      },
    },
    {
      name: 'reserve',
      retry,
      command: (d) => ({
        type: 'ReserveInventory',
        subject: d.orderId,
        data: {
          orderId: d.orderId,
          userId: d.userId,
          items: [{ productId: d.orderId, quantity: 1 }],
          totalAmount: d.amount,
          currency: 'EUR',
        },
      }),
      success: ['InventoryReserved'],
      failure: ['InventoryRejected'],
      compensation: {
        command: (d, reason) => ({
          type: 'ReleaseInventory',
          subject: d.orderId,
          data: { orderId: d.orderId, reason },
        }),
        replies: ['InventoryReleased'],
        retry,
      },
    },
    {
      name: 'pay',
      retry,
      command: (d) => ({
        type: 'ProcessPayment',
        subject: d.orderId,
        data: { orderId: d.orderId, userId: d.userId, amount: d.amount, currency: 'EUR' },
      }),
      success: ['PaymentProcessed'],
      failure: ['PaymentFailed'],
      reasonOf: (reply) => (reply.type === 'PaymentFailed' ? `payment failed: ${reply.data.reason}` : 'payment failed'),
      compensation: {
        command: (d, reason) => ({
          type: 'RefundPayment',
          subject: d.orderId,
          data: { orderId: d.orderId, userId: d.userId, amount: d.amount, currency: 'EUR', reason },
        }),
        replies: ['PaymentRefunded', 'PaymentFailed'],
        retry,
      },
    },
    {
      name: 'complete',
      retry,
      compensation: 'none',
      success: ['OrderCompleted'],
      failure: ['OrderCancelled'],
      command: (d) => ({ type: 'CompleteOrder', subject: d.orderId, data: { orderId: d.orderId } }),
    },
    {
      name: 'commit',
      retry,
      compensation: 'none',
      success: ['InventoryCommitted'],
      command: (d) => ({ type: 'CommitInventory', subject: d.orderId, data: { orderId: d.orderId } }),
    },
  ],
};

const t0 = new Date('2026-11-22T10:00:00.000Z');
const at = (ms: number) => new Date(t0.getTime() + ms);

const replies: { [T in EventType]?: (data?: Record<string, unknown>) => DomainEvent } = {
  InventoryReserved: () => ({
    type: 'InventoryReserved',
    data: { orderId, userId, items: [{ productId: orderId, quantity: 1 }], totalAmount: 500, currency: 'EUR' },
  }),
  InventoryRejected: () => ({
    type: 'InventoryRejected',
    data: { orderId, userId, reason: 'insufficient stock', shortages: [] },
  }),
  InventoryReleased: () => ({ type: 'InventoryReleased', data: { orderId, items: [], reason: 'r' } }),
  InventoryCommitted: () => ({ type: 'InventoryCommitted', data: { orderId, items: [] } }),
  PaymentProcessed: () => ({
    type: 'PaymentProcessed',
    data: { orderId, paymentId: orderId, userId, amount: 500, currency: 'EUR' },
  }),
  PaymentFailed: () => ({
    type: 'PaymentFailed',
    data: { orderId, paymentId: orderId, userId, amount: 500, reason: 'insufficient credit' },
  }),
  PaymentRefunded: () => ({
    type: 'PaymentRefunded',
    data: { orderId, paymentId: orderId, userId, amount: 500, currency: 'EUR' },
  }),
  OrderCompleted: () => ({ type: 'OrderCompleted', data: { orderId, userId, totalAmount: 500, currency: 'EUR' } }),
  OrderFailed: () => ({ type: 'OrderFailed', data: { orderId, userId, reason: 'r' } }),
  OrderCancelled: () => ({ type: 'OrderCancelled', data: { orderId, userId, reason: 'changed my mind' } }),
};

function reply(type: EventType, id = `${type}-1`): SagaInput {
  const make = replies[type];
  if (make === undefined) throw new Error(`no reply ${type}`);
  return { kind: 'reply', message: { ...make(), id } };
}

/** A saga driven through inputs; returns the final state, every event and the commands sent, in order. */
function run(inputs: [number, SagaInput][]): { saga: Saga<Trip>; events: SagaEvent<Trip>[]; commands: string[] } {
  const trigger: DomainEvent & { id: string } = {
    id: 'created-1',
    type: 'OrderCreated',
    data: {
      orderId,
      userId,
      items: [{ productId: orderId, quantity: 1, unitPrice: 500 }],
      totalAmount: 500,
      currency: 'EUR',
      createdAt: t0.toISOString(),
    },
  };
  const started = startSaga(definition, trigger, t0);
  let saga = started.events.reduce(evolve, started.saga);
  const events = [...started.events];
  for (const [ms, input] of inputs) {
    const next = decide(definition, saga, input, at(ms));
    saga = next.reduce(evolve, saga);
    events.push(...next);
  }
  const commands = events.flatMap((e) => (e.type === 'CommandSent' ? [`${e.command.type}#${e.attempt}`] : []));
  return { saga, events, commands };
}

const statuses = (saga: Saga<Trip>) => Object.fromEntries(saga.steps.map((s) => [s.name, s.status]));

describe('saga engine', () => {
  it(
    'given every step succeeds, when the replies come, then each ' +
      'command is sent once in order and the saga completes',
    () => {
      const { saga, commands } = run([
        [10, reply('InventoryReserved')],
        [20, reply('PaymentProcessed')],
        [30, reply('OrderCompleted')],
        [40, reply('InventoryCommitted')],
      ]);
      expect(commands).toEqual(['ReserveInventory#1', 'ProcessPayment#1', 'CompleteOrder#1', 'CommitInventory#1']);
      expect(saga.status).toBe('COMPLETED');
      expect(saga.deadlineAt).toBeNull();
      expect(saga.steps.map((s) => s.status)).toEqual([
        'succeeded',
        'succeeded',
        'succeeded',
        'succeeded',
        'succeeded',
      ]);
    },
  );

  it(
    'given payment is declined, when the reply comes, then stock is released ' +
      'and the order failed, in reverse order, with the reason',
    () => {
      const { saga, events, commands } = run([
        [10, reply('InventoryReserved')],
        [20, reply('PaymentFailed')],
        [30, reply('InventoryReleased')],
        [40, reply('OrderFailed')],
      ]);
      expect(commands).toEqual(['ReserveInventory#1', 'ProcessPayment#1', 'ReleaseInventory#1', 'FailOrder#1']);
      expect(saga.status).toBe('COMPENSATED');
      expect(saga.reason).toBe('payment failed: insufficient credit');
      const failOrder = events.find((e) => e.type === 'CommandSent' && e.command.type === 'FailOrder');
      expect(failOrder?.type === 'CommandSent' && failOrder.command.data).toMatchObject({
        reason: 'payment failed: insufficient credit',
      });
      expect(statuses(saga)).toMatchObject({
        order: 'compensated',
        reserve: 'compensated',
        pay: 'failed',
        complete: 'pending',
      });
    },
  );

  it(
    'given a step that gets no reply, when its deadlines pass, then it is retried ' +
      'with a longer deadline, then compensated with the steps before it',
    () => {
      const first = run([[10, reply('InventoryReserved')]]);
      expect(first.saga.deadlineAt).toBe(at(10 + 1000).toISOString());
      const { saga, commands, events } = run([
        [10, reply('InventoryReserved')],
        [500, { kind: 'deadline' }], // not due yet: nothing
        [1010, { kind: 'deadline' }], // attempt 2, waits 2 s
        [3010, { kind: 'deadline' }], // out of attempts: the payment's outcome is unknown, refund it
        [3100, reply('PaymentFailed', 'refund-answer')],
        [3200, reply('InventoryReleased')],
        [3300, reply('OrderFailed')],
      ]);
      expect(commands).toEqual([
        'ReserveInventory#1',
        'ProcessPayment#1',
        'ProcessPayment#2',
        'RefundPayment#1',
        'ReleaseInventory#1',
        'FailOrder#1',
      ]);
      const second = events.find((e) => e.type === 'CommandSent' && e.attempt === 2);
      expect(second?.type === 'CommandSent' && second.deadlineAt).toBe(at(1010 + 2000).toISOString());
      expect(events.filter((e) => e.type === 'DeadlineMissed')).toHaveLength(2);
      expect(saga.status).toBe('COMPENSATED');
      expect(saga.reason).toBe('no reply to pay after 2 attempt(s)');
      expect(statuses(saga)).toMatchObject({ pay: 'compensated', reserve: 'compensated', order: 'compensated' });
    },
  );

  it(
    'given a payment timed out, when its late success arrives during the refund, ' +
      'then it is recorded and the refund still completes the undo',
    () => {
      const { saga, events } = run([
        [10, reply('InventoryReserved')],
        [1010, { kind: 'deadline' }],
        [3010, { kind: 'deadline' }],
        [3050, reply('PaymentProcessed', 'late')],
        [3100, reply('PaymentRefunded')],
        [3200, reply('InventoryReleased')],
        [3300, reply('OrderFailed')],
      ]);
      const ignored = events.find((e) => e.type === 'ReplyIgnored');
      expect(ignored).toMatchObject({ reply: 'PaymentProcessed', messageId: 'late' });
      expect(ignored?.type === 'ReplyIgnored' && ignored.why).toContain('compensation is already under way');
      expect(saga.status).toBe('COMPENSATED');
    },
  );

  it(
    'given a compensated saga, when a success it undid arrives late ' +
      'after all, then that step is compensated again',
    () => {
      const { saga, commands } = run([
        [10, reply('InventoryReserved')],
        [20, reply('PaymentFailed')],
        [30, reply('InventoryReleased')],
        [40, reply('OrderFailed')],
        [50, reply('InventoryReserved', 'very-late')],
        [60, reply('InventoryReleased', 'released-again')],
      ]);
      expect(commands.slice(-1)).toEqual(['ReleaseInventory#1']);
      expect(commands.filter((c) => c.startsWith('ReleaseInventory'))).toHaveLength(2);
      expect(saga.status).toBe('COMPENSATED');
    },
  );

  it(
    'given a duplicate reply, when it arrives after its step moved on, ' +
      'then it is recorded as ignored and nothing is sent',
    () => {
      const { saga, events, commands } = run([
        [10, reply('InventoryReserved')],
        [20, reply('InventoryReserved', 'again')],
      ]);
      expect(commands).toEqual(['ReserveInventory#1', 'ProcessPayment#1']);
      expect(events.at(-1)).toMatchObject({ type: 'ReplyIgnored', reply: 'InventoryReserved', messageId: 'again' });
      expect(saga.steps[2]?.status).toBe('started');
    },
  );

  it(
    'given the user cancels while payment is in flight, when OrderCancelled ' +
      'arrives, then payment and stock are undone and no FailOrder is sent',
    () => {
      const { saga, commands } = run([
        [10, reply('InventoryReserved')],
        [20, reply('OrderCancelled')],
        [30, reply('PaymentProcessed', 'late')],
        [40, reply('PaymentRefunded')],
        [50, reply('InventoryReleased')],
      ]);
      expect(commands).toEqual(['ReserveInventory#1', 'ProcessPayment#1', 'RefundPayment#1', 'ReleaseInventory#1']);
      expect(saga.status).toBe('COMPENSATED');
      expect(statuses(saga)).toMatchObject({ order: 'compensated', pay: 'compensated', reserve: 'compensated' });
    },
  );

  it(
    'given the user cancels before CompleteOrder is handled, when ' +
      'OrderCancelled answers it, then everything done is undone',
    () => {
      const { saga, commands } = run([
        [10, reply('InventoryReserved')],
        [20, reply('PaymentProcessed')],
        [30, reply('OrderCancelled')],
        [40, reply('PaymentRefunded')],
        [50, reply('InventoryReleased')],
      ]);
      expect(commands).toEqual([
        'ReserveInventory#1',
        'ProcessPayment#1',
        'CompleteOrder#1',
        'RefundPayment#1',
        'ReleaseInventory#1',
      ]);
      expect(statuses(saga)).toMatchObject({
        complete: 'failed',
        pay: 'compensated',
        reserve: 'compensated',
        order: 'compensated',
      });
      expect(saga.status).toBe('COMPENSATED');
    },
  );

  it(
    'given a compensation that never answers, when its attempts run out, then the ' +
      'saga is parked; a retry sends it again and the saga finishes',
    () => {
      const parked = run([
        [10, reply('InventoryReserved')],
        [20, reply('PaymentFailed')],
        [1020, { kind: 'deadline' }],
        [3020, { kind: 'deadline' }],
      ]);
      expect(parked.saga.status).toBe('NEEDS_ATTENTION');
      expect(parked.saga.parkedFrom).toBe('COMPENSATING');
      expect(parked.saga.deadlineAt).toBeNull();
      expect(parked.saga.reason).toBe("no reply to reserve's compensation after 2 attempt(s)");
      expect(decide(definition, parked.saga, { kind: 'deadline' }, at(99_000))).toEqual([]);

      const { saga, commands, events } = run([
        [10, reply('InventoryReserved')],
        [20, reply('PaymentFailed')],
        [1020, { kind: 'deadline' }],
        [3020, { kind: 'deadline' }],
        [60_000, { kind: 'retry', note: 'inventory is back' }],
        [60_100, reply('InventoryReleased')],
        [60_200, reply('OrderFailed')],
      ]);
      expect(commands).toEqual([
        'ReserveInventory#1',
        'ProcessPayment#1',
        'ReleaseInventory#1',
        'ReleaseInventory#2',
        'ReleaseInventory#1',
        'FailOrder#1',
      ]);
      expect(events.find((e) => e.type === 'OperatorRetried')).toMatchObject({ note: 'inventory is back' });
      expect(saga.status).toBe('COMPENSATED');
    },
  );

  it(
    'given a parked saga, when the awaited reply arrives after all (a ' +
      'replayed dead letter), then it goes on by itself',
    () => {
      const { saga } = run([
        [10, reply('InventoryReserved')],
        [20, reply('PaymentFailed')],
        [1020, { kind: 'deadline' }],
        [3020, { kind: 'deadline' }],
        [5000, reply('InventoryReleased')],
        [5100, reply('OrderFailed')],
      ]);
      expect(saga.status).toBe('COMPENSATED');
    },
  );

  it(
    'given a step after the pivot that never answers, when its attempts ' +
      'run out, then the saga is parked, never compensated',
    () => {
      const { saga, commands } = run([
        [10, reply('InventoryReserved')],
        [20, reply('PaymentProcessed')],
        [30, reply('OrderCompleted')],
        [1030, { kind: 'deadline' }],
        [3030, { kind: 'deadline' }],
      ]);
      expect(commands).toEqual([
        'ReserveInventory#1',
        'ProcessPayment#1',
        'CompleteOrder#1',
        'CommitInventory#1',
        'CommitInventory#2',
      ]);
      expect(saga.status).toBe('NEEDS_ATTENTION');
      expect(saga.parkedFrom).toBe('RUNNING');
    },
  );

  it(
    'given a parked saga, when an operator resolves it, then it is RESOLVED ' +
      'with the note; retry and resolve refuse any other state',
    () => {
      const parked = run([
        [10, reply('InventoryReserved')],
        [20, reply('PaymentFailed')],
        [1020, { kind: 'deadline' }],
        [3020, { kind: 'deadline' }],
      ]).saga;
      const resolved = decide(definition, parked, { kind: 'resolve', note: 'released by hand' }, at(9000)).reduce(
        evolve,
        parked,
      );
      expect(resolved.status).toBe('RESOLVED');
      expect(() => decide(definition, resolved, { kind: 'retry', note: 'x' }, at(9001))).toThrow(
        /only a saga that NEEDS_ATTENTION/,
      );
      const running = run([]).saga;
      expect(() => decide(definition, running, { kind: 'resolve', note: 'x' }, at(1))).toThrow(/RUNNING/);
    },
  );
});

describe('saga definitions are checked at start-up', () => {
  it('accepts the test definition with its pivot declared', () => {
    expect(() => validateSaga(definition, ['complete'])).not.toThrow();
  });

  it('refuses a step without a compensation that is neither last nor declared irreversible', () => {
    expect(() => validateSaga(definition)).toThrow(SagaDefinitionError);
    expect(() => validateSaga(definition)).toThrow(/step complete has no compensation/);
  });

  it(
    'refuses an unknown reply type, a command without a retry ' +
      'policy, and a misdeclared pivot, listing every problem',
    () => {
      const broken = {
        ...definition,
        steps: [
          ...definition.steps.slice(0, 2),
          { ...definition.steps[2], name: 'pay', success: ['PaymentTaken' as EventType], retry: undefined },
          ...definition.steps.slice(3),
        ],
      } as SagaDefinition<Trip>;
      let message = '';
      try {
        validateSaga(broken, ['complete', 'reserve', 'nowhere']);
      } catch (error) {
        message = (error as Error).message;
      }
      expect(message).toContain('step pay: unknown reply type PaymentTaken');
      expect(message).toContain('step pay: a command needs a retry policy');
      expect(message).toContain('step reserve is declared irreversible but has a compensation');
      expect(message).toContain('irreversible step nowhere does not exist');
    },
  );
});
