// A test-only fault switch around any Bus: some deliveries are handed to the consumer
// twice and some are held back for a while, so later messages overtake them. That is
// what a real broker does now and then (a redelivery after a lost ack, a slow node), here
// at a rate we choose, to show that consumers stay exactly-once in effect and in order
// per subject. The copy of a duplicated delivery settles nothing (its ack and nack do
// nothing): the broker's own delivery stays the one that is acked. Counters say how
// many deliveries were duplicated and delayed, so a test can prove the faults happened.
//
// Never on in production: the cluster service refuses BUS_FAULTS unless NODE_ENV=test.
import type { Bus, Delivery, Subscription } from './bus.ts';

/** Fractions of deliveries duplicated and delayed (0–1), and the longest delay. */
export type BusFaults = { duplicateRate: number; delayRate: number; maxDelayMs: number };

export type FaultStats = { duplicated: number; delayed: number };

const ignore = (): void => undefined;

export function withFaults(
  bus: Bus,
  faults: BusFaults,
  stats: FaultStats = { duplicated: 0, delayed: 0 },
): Bus & { faultStats: FaultStats } {
  checkFaults(faults);
  const subscribe: Bus['subscribe'] = async (queue, types, onDelivery, options) => {
    // Delayed deliveries not handed out yet when the subscription closes are dropped
    // unsettled: the bus gives them back to the queue as it does any unacked delivery.
    const waiting = new Set<() => void>();
    const faulty = async (delivery: Delivery): Promise<void> => {
      if (Math.random() < faults.duplicateRate) {
        stats.duplicated += 1;
        const copy: Delivery = {
          ...delivery,
          redelivered: true,
          ack: () => Promise.resolve(),
          nack: () => Promise.resolve(),
        };
        void onDelivery(copy).catch(ignore);
      }
      if (Math.random() < faults.delayRate) {
        stats.delayed += 1;
        const handOut = await new Promise<boolean>((resolve) => {
          const drop = () => {
            clearTimeout(timer);
            waiting.delete(drop);
            resolve(false);
          };
          const timer = setTimeout(() => {
            waiting.delete(drop);
            resolve(true);
          }, Math.random() * faults.maxDelayMs);
          waiting.add(drop);
        });
        if (!handOut) return;
      }
      await onDelivery(delivery);
    };
    const subscription = await bus.subscribe(queue, types, faulty, options);
    return {
      queue: subscription.queue,
      close: async () => {
        for (const drop of [...waiting]) drop();
        await subscription.close();
      },
    } satisfies Subscription;
  };
  return {
    kind: bus.kind,
    faultStats: stats,
    publish: (messages) => bus.publish(messages),
    subscribe,
    declare: (queue, types) => bus.declare(queue, types),
    depth: (queue) => bus.depth(queue),
    close: () => bus.close(),
  };
}

function checkFaults(faults: BusFaults): void {
  const rate = (value: number) => Number.isFinite(value) && value >= 0 && value <= 1;
  if (
    !rate(faults.duplicateRate) ||
    !rate(faults.delayRate) ||
    !(Number.isFinite(faults.maxDelayMs) && faults.maxDelayMs >= 0)
  ) {
    throw new Error(`invalid bus faults ${JSON.stringify(faults)}: rates are in [0, 1], max delay ≥ 0`);
  }
}

/** Parses `duplicate=0.1,delay=0.1,max-delay-ms=3000` (every key optional, default 0). */
export function parseBusFaults(text: string): BusFaults {
  const faults: BusFaults = { duplicateRate: 0, delayRate: 0, maxDelayMs: 0 };
  const keys = { duplicate: 'duplicateRate', delay: 'delayRate', 'max-delay-ms': 'maxDelayMs' } as const;
  for (const part of text
    .split(',')
    .map((p) => p.trim())
    .filter((p) => p !== '')) {
    const [key = '', value = '', ...rest] = part.split('=').map((s) => s.trim());
    const field = Object.hasOwn(keys, key) ? keys[key as keyof typeof keys] : undefined;
    if (field === undefined || rest.length > 0 || value === '' || !Number.isFinite(Number(value))) {
      throw new Error(`"${part}" is not one of duplicate=<0–1>, delay=<0–1>, max-delay-ms=<ms>`);
    }
    faults[field] = Number(value);
  }
  checkFaults(faults);
  return faults;
}
