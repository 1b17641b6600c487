// The deadline timer: a step that got no reply in time is retried, then compensated (or
// the saga parked); see platform/src/saga.ts. Every orchestrator instance runs one. Each
// tick claims due sagas with FOR UPDATE SKIP LOCKED, so instances share the work
// without waiting on each other, and decides on each in the same transaction; the
// saga's version check catches a reply that raced the tick.
import type { Db, Logger, SagaDefinition } from '@converge/platform';
import { advanceSaga, claimDueSagas } from './store.ts';

export type DeadlineTimer = { tick(): Promise<number>; stop(): Promise<void> };

export function startDeadlineTimer<Data>(options: {
  db: Db;
  definition: SagaDefinition<Data>;
  log: Logger;
  now: () => Date;
  intervalMs?: number;
  batch?: number;
}): DeadlineTimer {
  const { db, definition, log, now } = options;
  const intervalMs = options.intervalMs ?? 250;
  const batch = options.batch ?? 100;
  let running: Promise<number> | undefined;
  let stopped = false;

  const tick = async (): Promise<number> => {
    const at = now();
    return db.transaction(async (tx) => {
      const due = await claimDueSagas(tx, at, batch);
      for (const sagaId of due) {
        await advanceSaga(tx, definition, sagaId, { kind: 'deadline' }, { source: 'orchestrator', now: at });
      }
      return due.length;
    });
  };

  const loop = async (): Promise<void> => {
    while (!stopped) {
      running = tick().catch((error: unknown) => {
        log.warn('deadline tick failed; next tick retries', { error: (error as Error).message });
        return 0;
      });
      const handled = await running;
      // A full batch means more are due: go again at once.
      if (handled < batch) await new Promise((resolve) => setTimeout(resolve, intervalMs));
    }
  };
  void loop();

  return {
    tick: async () => {
      await running;
      return tick();
    },
    stop: async () => {
      stopped = true;
      await running;
    },
  };
}
