// A saga is a pure process manager: `decide(definition, state, input, now)` turns a
// reply, a deadline or an operator's action into saga events; `evolve` folds them into
// the saga's state. The shell (the orchestrator) persists the state, appends the events
// to the saga's step log and sends the commands that `CommandSent` events carry through
// its outbox, all in one transaction.
//
// A definition reads as a table of steps: the command that does the step, the replies
// that say it succeeded or failed, the compensation that undoes it and the replies that
// confirm the undo, a deadline and a retry policy. Steps run one at a time, in order.
// When a step fails, or its owner undid it from outside (the user cancelled the order),
// every step done so far is compensated in reverse order. A step whose outcome is
// unknown (no reply within its deadlines) is compensated too: compensations are
// idempotent, and a late success reply then finds its undo already under way.
// A step that cannot be undone is declared so (`compensation: 'none'`): the pivot after
// which the saga only goes forward, or the last step. When a forward step after the
// pivot, or a compensation, runs out of retries, the saga is parked as NEEDS_ATTENTION
// with its whole history; an operator retries or resolves it. Nothing is dropped: every
// reply, used or not, is in the log.
import { isEventType, type DomainEvent, type EventType } from '@converge/contracts';
import { ConflictError } from './errors.ts';
import type { Outgoing } from './outbox.ts';

/** How a deployment runs the order saga (SAGA_MODE). */
export type SagaMode = 'choreography' | 'orchestration';
export const sagaModes: readonly SagaMode[] = ['choreography', 'orchestration'];

export type RetryPolicy = {
  /** Sends of the command before giving up (the first one included). */
  attempts: number;
  /** How long the first attempt waits for a reply. */
  deadlineMs: number;
  /** Each further attempt waits this many times longer (default 2), up to `maxDeadlineMs`. */
  backoff?: number;
  maxDeadlineMs?: number;
};

export type Compensation<Data> = {
  command: (data: Data, reason: string) => Outgoing;
  /** Replies that confirm the step is undone (or was never done). */
  replies: readonly EventType[];
  retry: RetryPolicy;
};

export type SagaStep<Data> = {
  name: string;
  /** The command that does the step; absent for the step the saga's trigger already did. */
  command?: (data: Data) => Outgoing;
  success: readonly EventType[];
  failure?: readonly EventType[];
  /** How a failure reply explains itself (the reason the saga records and passes on). */
  reasonOf?: (reply: DomainEvent) => string;
  compensation: Compensation<Data> | 'none';
  /** Required for a step with a command. */
  retry?: RetryPolicy;
};

export type SagaDefinition<Data> = {
  name: string;
  /** The event that starts a saga, and the saga's id and data taken from it. */
  startedBy: EventType;
  start: (event: DomainEvent) => { id: string; data: Data };
  steps: readonly SagaStep<Data>[];
};

export type SagaStatus = 'RUNNING' | 'COMPENSATING' | 'COMPLETED' | 'COMPENSATED' | 'NEEDS_ATTENTION' | 'RESOLVED';
export type StepStatus = 'pending' | 'started' | 'succeeded' | 'failed' | 'timed-out' | 'compensating' | 'compensated';

export type StepState = {
  name: string;
  status: StepStatus;
  /** Sends of the current phase's command since the phase began or an operator retried. */
  attempts: number;
  startedAt?: string;
  endedAt?: string;
  compensatedAt?: string;
  error?: string;
};

export type Saga<Data> = {
  id: string;
  definition: string;
  status: SagaStatus;
  data: Data;
  /** Number of events folded so far: the version the next write expects. */
  version: number;
  steps: StepState[];
  /** When the step or compensation in flight times out; null when nothing waits. */
  deadlineAt: string | null;
  reason?: string;
  /** The request that started it: every command it sends carries it. */
  correlationId?: string;
  /** Where the saga was when it was parked, so a retry knows which way to go. */
  parkedFrom?: 'RUNNING' | 'COMPENSATING';
  startedAt: string;
  updatedAt: string;
};

export type SagaEvent<Data> =
  | { type: 'SagaStarted'; at: string; id: string; data: Data; correlationId?: string }
  | {
      type: 'CommandSent';
      at: string;
      step: number;
      phase: 'forward' | 'compensation';
      attempt: number;
      deadlineAt: string;
      command: Outgoing;
    }
  | { type: 'StepSucceeded'; at: string; step: number; reply: EventType; messageId?: string }
  | { type: 'StepFailed'; at: string; step: number; reason: string; reply?: EventType; messageId?: string }
  | { type: 'StepTimedOut'; at: string; step: number; reason: string }
  | { type: 'StepCompensated'; at: string; step: number; reply: EventType; messageId?: string }
  | { type: 'LateSuccess'; at: string; step: number; reply: EventType; messageId?: string }
  | { type: 'DeadlineMissed'; at: string; step: number; phase: 'forward' | 'compensation'; attempt: number }
  | { type: 'ReplyIgnored'; at: string; reply: string; messageId?: string; why: string }
  | { type: 'SagaCompleted'; at: string }
  | { type: 'SagaCompensated'; at: string }
  | { type: 'SagaParked'; at: string; reason: string }
  | { type: 'OperatorRetried'; at: string; note: string; actor?: string }
  | { type: 'OperatorResolved'; at: string; note: string; actor?: string };

export type SagaInput =
  | { kind: 'reply'; message: DomainEvent & { id?: string } }
  | { kind: 'deadline' }
  | { kind: 'retry'; note: string; actor?: string }
  | { kind: 'resolve'; note: string; actor?: string };

/** Who acted, as the log records it: the authenticated operator. */
const actorOf = (input: { actor?: string }) => (input.actor === undefined ? {} : { actor: input.actor });

export class SagaDefinitionError extends Error {
  override readonly name = 'SagaDefinitionError';
}

/** The statuses a saga leaves no more; queries over sagas take them from here. */
export const finalStatuses: readonly SagaStatus[] = ['COMPLETED', 'COMPENSATED', 'RESOLVED'];
export const isFinal = (status: SagaStatus): boolean => finalStatuses.includes(status);

/**
 * Checks a definition once, at start-up: every reply type is a catalogued event, every
 * step with a command has a retry policy, and a step that cannot be undone is either
 * the last or explicitly declared so. Throws listing every problem.
 */
export function validateSaga<Data>(
  definition: SagaDefinition<Data>,
  declaredIrreversible: readonly string[] = [],
): void {
  const problems: string[] = [];
  const { steps } = definition;
  if (!isEventType(definition.startedBy))
    problems.push(`startedBy ${String(definition.startedBy)} is not a known event type`);
  if (steps.length === 0) problems.push('a saga needs at least one step');
  const names = new Set<string>();
  steps.forEach((step, index) => {
    if (names.has(step.name)) problems.push(`step name ${step.name} is used twice`);
    names.add(step.name);
    const replies = [
      ...step.success,
      ...(step.failure ?? []),
      ...(step.compensation === 'none' ? [] : step.compensation.replies),
    ];
    for (const reply of replies)
      if (!isEventType(reply)) problems.push(`step ${step.name}: unknown reply type ${String(reply)}`);
    if (step.success.length === 0) problems.push(`step ${step.name}: no success reply`);
    if (step.command !== undefined && step.retry === undefined)
      problems.push(`step ${step.name}: a command needs a retry policy`);
    if (step.command === undefined && index !== 0)
      problems.push(`step ${step.name}: only the first step may be done by the trigger`);
    for (const policy of [step.retry, step.compensation === 'none' ? undefined : step.compensation.retry]) {
      if (policy !== undefined && (policy.attempts < 1 || policy.deadlineMs <= 0))
        problems.push(`step ${step.name}: retry needs attempts ≥ 1 and a positive deadline`);
    }
    const last = index === steps.length - 1;
    if (step.compensation === 'none' && !last && !declaredIrreversible.includes(step.name)) {
      problems.push(
        `step ${step.name} has no compensation: it must be the last step or be declared irreversible (the pivot)`,
      );
    }
  });
  for (const name of declaredIrreversible) {
    const step = steps.find((s) => s.name === name);
    if (step === undefined) problems.push(`irreversible step ${name} does not exist`);
    else if (step.compensation !== 'none')
      problems.push(`step ${name} is declared irreversible but has a compensation`);
  }
  if (problems.length > 0)
    throw new SagaDefinitionError(`saga ${definition.name} is not valid:\n  ${problems.join('\n  ')}`);
}

/** The state before the first event. */
export function newSaga<Data>(definition: SagaDefinition<Data>, id: string, data: Data, at: string): Saga<Data> {
  return {
    id,
    definition: definition.name,
    status: 'RUNNING',
    data,
    version: 0,
    deadlineAt: null,
    startedAt: at,
    updatedAt: at,
    steps: definition.steps.map((s) => ({ name: s.name, status: 'pending', attempts: 0 })),
  };
}

/** The events that start a saga from its trigger. */
export function startSaga<Data>(
  definition: SagaDefinition<Data>,
  trigger: DomainEvent & { id?: string; correlationid?: string },
  now: Date,
): { saga: Saga<Data>; events: SagaEvent<Data>[] } {
  const at = now.toISOString();
  const { id, data } = definition.start(trigger);
  const initial = newSaga(definition, id, data, at);
  const correlation = trigger.correlationid === undefined ? {} : { correlationId: trigger.correlationid };
  const events: SagaEvent<Data>[] = [{ type: 'SagaStarted', at, id, data, ...correlation }];
  const first = definition.steps[0];
  if (first !== undefined && first.command === undefined) {
    events.push({
      type: 'StepSucceeded',
      at,
      step: 0,
      reply: trigger.type,
      ...(trigger.id === undefined ? {} : { messageId: trigger.id }),
    });
  }
  return { saga: initial, events: [...events, ...advance(definition, events.reduce(evolve, initial), now)] };
}

export function evolve<Data>(saga: Saga<Data>, event: SagaEvent<Data>): Saga<Data> {
  const next: Saga<Data> = {
    ...saga,
    version: saga.version + 1,
    updatedAt: event.at,
    steps: saga.steps.map((s) => ({ ...s })),
  };
  const step = 'step' in event ? next.steps[event.step] : undefined;
  switch (event.type) {
    case 'SagaStarted':
      return {
        ...next,
        id: event.id,
        data: event.data,
        startedAt: event.at,
        ...(event.correlationId === undefined ? {} : { correlationId: event.correlationId }),
      };
    case 'CommandSent':
      if (step !== undefined) {
        step.status = event.phase === 'forward' ? 'started' : 'compensating';
        step.attempts = event.attempt;
        if (event.phase === 'forward' && event.attempt === 1) step.startedAt = event.at;
      }
      return { ...next, deadlineAt: event.deadlineAt };
    case 'StepSucceeded':
      if (step !== undefined)
        Object.assign(step, {
          status: 'succeeded',
          endedAt: event.at,
          ...(step.startedAt === undefined ? { startedAt: event.at } : {}),
        });
      return { ...unparked(next), deadlineAt: null };
    case 'StepFailed':
      if (step !== undefined) Object.assign(step, { status: 'failed', endedAt: event.at, error: event.reason });
      return { ...next, status: 'COMPENSATING', reason: next.reason ?? event.reason, deadlineAt: null };
    case 'StepTimedOut':
      if (step !== undefined) Object.assign(step, { status: 'timed-out', endedAt: event.at, error: event.reason });
      return { ...next, status: 'COMPENSATING', reason: next.reason ?? event.reason, deadlineAt: null };
    case 'LateSuccess':
      // Done after all, after it was undone: it needs undoing again.
      if (step !== undefined) step.status = 'succeeded';
      return { ...next, status: 'COMPENSATING' };
    case 'StepCompensated': {
      if (step !== undefined) Object.assign(step, { status: 'compensated', compensatedAt: event.at });
      // A step undone from outside while the saga ran (the order cancelled): the saga
      // can no longer go forward, so it compensates the rest.
      const aborted = next.status === 'RUNNING';
      return {
        ...unparked(next),
        deadlineAt: null,
        ...(aborted
          ? {
              status: 'COMPENSATING' as const,
              reason: next.reason ?? `${event.reply} undid step ${step?.name ?? event.step}`,
            }
          : {}),
      };
    }
    case 'DeadlineMissed':
      if (step !== undefined) step.error = `no reply within the deadline of attempt ${event.attempt}`;
      return { ...next, deadlineAt: null };
    case 'ReplyIgnored':
      return next;
    case 'SagaCompleted':
      return { ...next, status: 'COMPLETED', deadlineAt: null };
    case 'SagaCompensated':
      return { ...next, status: 'COMPENSATED', deadlineAt: null };
    case 'SagaParked': {
      const from = next.status === 'COMPENSATING' ? 'COMPENSATING' : 'RUNNING';
      return { ...next, status: 'NEEDS_ATTENTION', parkedFrom: from, deadlineAt: null, reason: event.reason };
    }
    case 'OperatorRetried':
      for (const s of next.steps) if (s.status === 'started' || s.status === 'compensating') s.attempts = 0;
      return { ...next, status: next.parkedFrom ?? 'RUNNING' };
    case 'OperatorResolved':
      return { ...next, status: 'RESOLVED', deadlineAt: null };
    default:
      return assertNever(event);
  }
}

/** The reply a parked saga waited for came after all (an operator replayed a dead letter): go on. */
function unparked<Data>(saga: Saga<Data>): Saga<Data> {
  return saga.status === 'NEEDS_ATTENTION' ? { ...saga, status: saga.parkedFrom ?? 'RUNNING' } : saga;
}

export function decide<Data>(
  definition: SagaDefinition<Data>,
  saga: Saga<Data>,
  input: SagaInput,
  now: Date,
): SagaEvent<Data>[] {
  const at = now.toISOString();
  switch (input.kind) {
    case 'reply':
      return withAdvance(definition, saga, onReply(definition, saga, input.message, at), now);
    case 'deadline':
      return withAdvance(definition, saga, onDeadline(definition, saga, now), now);
    case 'retry': {
      if (saga.status !== 'NEEDS_ATTENTION')
        throw new ConflictError(`saga ${saga.id} is ${saga.status}; only a saga that NEEDS_ATTENTION can be retried`);
      const retried: SagaEvent<Data> = { type: 'OperatorRetried', at, note: input.note, ...actorOf(input) };
      const state = evolve(saga, retried);
      return [retried, ...resend(definition, state, now), ...advance(definition, state, now)];
    }
    case 'resolve':
      if (saga.status !== 'NEEDS_ATTENTION')
        throw new ConflictError(`saga ${saga.id} is ${saga.status}; only a saga that NEEDS_ATTENTION can be resolved`);
      return [{ type: 'OperatorResolved', at, note: input.note, ...actorOf(input) }];
    default:
      return assertNever(input);
  }
}

function withAdvance<Data>(
  definition: SagaDefinition<Data>,
  saga: Saga<Data>,
  events: SagaEvent<Data>[],
  now: Date,
): SagaEvent<Data>[] {
  if (events.length === 0 || events.every((e) => e.type === 'ReplyIgnored')) return events;
  return [...events, ...advance(definition, events.reduce(evolve, saga), now)];
}

function onReply<Data>(
  definition: SagaDefinition<Data>,
  saga: Saga<Data>,
  message: DomainEvent & { id?: string },
  at: string,
): SagaEvent<Data>[] {
  const reply = message.type;
  const ids = message.id === undefined ? {} : { messageId: message.id };
  const ignored = (why: string): SagaEvent<Data>[] => [{ type: 'ReplyIgnored', at, reply, ...ids, why }];
  if (isFinal(saga.status)) {
    // A success reply of a step the saga undid (or never finished) means something was
    // done after all: undo it again. Compensations are idempotent.
    const late = definition.steps.findIndex(
      (s, i) => s.success.includes(reply) && saga.steps[i]?.status === 'compensated',
    );
    if (saga.status === 'COMPENSATED' && late >= 0) return [{ type: 'LateSuccess', at, step: late, reply, ...ids }];
    return ignored(`the saga is ${saga.status}`);
  }
  const events: SagaEvent<Data>[] = [];
  // A compensation reply: confirms the undo in flight, or says the owner undid a done step.
  definition.steps.forEach((step, index) => {
    const state = saga.steps[index];
    if (step.compensation === 'none' || state === undefined || !step.compensation.replies.includes(reply)) return;
    if (state.status === 'compensating' || state.status === 'succeeded')
      events.push({ type: 'StepCompensated', at, step: index, reply, ...ids });
  });
  // The reply to the step in flight.
  const active = saga.steps.findIndex((s) => s.status === 'started');
  const step = definition.steps[active];
  const forward = saga.status === 'RUNNING' || (saga.status === 'NEEDS_ATTENTION' && saga.parkedFrom === 'RUNNING');
  if (step !== undefined && forward) {
    if (step.success.includes(reply)) events.push({ type: 'StepSucceeded', at, step: active, reply, ...ids });
    else if (step.failure?.includes(reply)) {
      const reason = step.reasonOf?.(message) ?? `${step.name} failed: ${reply}`;
      events.push({ type: 'StepFailed', at, step: active, reason, reply, ...ids });
    }
  }
  if (events.length > 0) return events;
  const undone = definition.steps.findIndex(
    (s, i) => s.success.includes(reply) && saga.steps[i]?.status === 'compensated',
  );
  if (undone >= 0) return [{ type: 'LateSuccess', at, step: undone, reply, ...ids }];
  const compensating = saga.steps.findIndex((s) => s.status === 'compensating');
  if (compensating >= 0 && definition.steps[compensating]?.success.includes(reply)) {
    return ignored(
      `late success of ${saga.steps[compensating]?.name ?? compensating}: its compensation is already under way`,
    );
  }
  const parked = saga.status === 'NEEDS_ATTENTION' ? ' (the saga is parked)' : '';
  return ignored(`no step of ${saga.status.toLowerCase()} saga awaits ${reply}${parked}`);
}

function onDeadline<Data>(definition: SagaDefinition<Data>, saga: Saga<Data>, now: Date): SagaEvent<Data>[] {
  if (saga.deadlineAt === null || Date.parse(saga.deadlineAt) > now.getTime()) return [];
  if (saga.status !== 'RUNNING' && saga.status !== 'COMPENSATING') return [];
  const at = now.toISOString();
  const phase = saga.status === 'RUNNING' ? 'forward' : 'compensation';
  const index = saga.steps.findIndex((s) => s.status === (phase === 'forward' ? 'started' : 'compensating'));
  const step = definition.steps[index];
  const state = saga.steps[index];
  if (step === undefined || state === undefined) return [];
  const missed: SagaEvent<Data> = { type: 'DeadlineMissed', at, step: index, phase, attempt: state.attempts };
  const policy = phase === 'forward' ? step.retry : step.compensation === 'none' ? undefined : step.compensation.retry;
  if (policy !== undefined && state.attempts < policy.attempts) {
    return [missed, commandSent(definition, saga, index, phase, state.attempts + 1, now)];
  }
  const awaited = phase === 'compensation' ? `${step.name}'s compensation` : step.name;
  const waited = `no reply to ${awaited} after ${state.attempts} attempt(s)`;
  if (phase === 'forward' && step.compensation !== 'none') {
    // The outcome is unknown: treat the step as failed and undo it with the rest.
    return [missed, { type: 'StepTimedOut', at, step: index, reason: waited }];
  }
  return [missed, { type: 'SagaParked', at, reason: waited }];
}

/** After an operator's retry: the command in flight when the saga was parked, again. */
function resend<Data>(definition: SagaDefinition<Data>, saga: Saga<Data>, now: Date): SagaEvent<Data>[] {
  const phase = saga.status === 'COMPENSATING' ? 'compensation' : 'forward';
  const index = saga.steps.findIndex((s) => s.status === (phase === 'forward' ? 'started' : 'compensating'));
  return index < 0 ? [] : [commandSent(definition, saga, index, phase, 1, now)];
}

/** What the saga does next when nothing is in flight: the next step, the next undo, or the end. */
function advance<Data>(definition: SagaDefinition<Data>, saga: Saga<Data>, now: Date): SagaEvent<Data>[] {
  const at = now.toISOString();
  if (saga.status === 'RUNNING') {
    if (saga.steps.some((s) => s.status === 'started')) return [];
    const next = saga.steps.findIndex((s) => s.status === 'pending');
    if (next < 0) return [{ type: 'SagaCompleted', at }];
    return [commandSent(definition, saga, next, 'forward', 1, now)];
  }
  if (saga.status === 'COMPENSATING') {
    if (saga.steps.some((s) => s.status === 'compensating')) return [];
    // In reverse order: the latest step that did something (or may have) and can be undone.
    for (let index = saga.steps.length - 1; index >= 0; index--) {
      const state = saga.steps[index];
      const step = definition.steps[index];
      if (state === undefined || step === undefined || step.compensation === 'none') continue;
      // Done, or perhaps done (no reply yet, or none within the deadlines).
      const mayHaveDone = state.status === 'succeeded' || state.status === 'started' || state.status === 'timed-out';
      if (mayHaveDone) return [commandSent(definition, saga, index, 'compensation', 1, now)];
    }
    return [{ type: 'SagaCompensated', at }];
  }
  return [];
}

function commandSent<Data>(
  definition: SagaDefinition<Data>,
  saga: Saga<Data>,
  index: number,
  phase: 'forward' | 'compensation',
  attempt: number,
  now: Date,
): SagaEvent<Data> {
  const step = definition.steps[index];
  if (step === undefined) throw new Error(`saga ${saga.id} has no step ${index}`);
  const compensation = step.compensation === 'none' ? undefined : step.compensation;
  const command =
    phase === 'forward'
      ? step.command?.(saga.data)
      : compensation?.command(saga.data, saga.reason ?? 'saga compensated');
  const policy = phase === 'forward' ? step.retry : compensation?.retry;
  if (command === undefined || policy === undefined) throw new Error(`step ${step.name} has no ${phase} command`);
  return {
    type: 'CommandSent',
    at: now.toISOString(),
    step: index,
    phase,
    attempt,
    deadlineAt: new Date(now.getTime() + deadlineOf(policy, attempt)).toISOString(),
    command,
  };
}

/** The wait of attempt n: deadlineMs × backoff^(n−1), capped. */
export function deadlineOf(policy: RetryPolicy, attempt: number): number {
  const grown = policy.deadlineMs * (policy.backoff ?? 2) ** Math.max(0, attempt - 1);
  return Math.min(grown, policy.maxDeadlineMs ?? Number.POSITIVE_INFINITY);
}

function assertNever(value: never): never {
  throw new Error(`unexpected ${JSON.stringify(value)}`);
}
