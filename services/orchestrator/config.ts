// The orchestrator's own settings: how patient the order-fulfilment saga is with each
// step, and when a saga counts as stuck. Read with the settings every service shares.
import { setting } from '@converge/platform';
import { defaultTimings } from './fulfilment.ts';

export const orchestratorConfig = {
  /** A step's first wait for its reply (later attempts wait twice as long, up to the max). */
  SAGA_STEP_DEADLINE_MS: setting.int(defaultTimings.deadlineMs, 10, 3_600_000),
  SAGA_STEP_MAX_DEADLINE_MS: setting.int(defaultTimings.maxDeadlineMs, 10, 86_400_000),
  /** Sends of a step's command before it counts as failed (and is compensated). */
  SAGA_STEP_ATTEMPTS: setting.int(defaultTimings.attempts, 1, 100),
  /** Sends of a compensation before the saga is parked as NEEDS_ATTENTION. */
  SAGA_COMPENSATION_ATTEMPTS: setting.int(defaultTimings.compensationAttempts, 1, 100),
  /** A saga not final and unchanged this long counts as stuck (converge_sagas_stuck). */
  SAGA_STUCK_AFTER_MS: setting.int(60_000, 1_000, 86_400_000),
};
