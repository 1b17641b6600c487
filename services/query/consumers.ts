// How the query service reacts: every event of the order, inventory and payment
// services goes through each read model of the registry (read-models.ts), in the
// consumer's transaction (inbox, per-subject order). An event about an order updates
// its summary, its row in the user's list and the status counts; a stock move updates
// the products it touches. The consumer hands over a batch of due events at once (one
// per subject, except what a closed gap releases, in order): each model loads the rows
// the batch touches in one statement, folds every event onto them in memory and writes
// them back in one statement, so a batch costs a handful of round trips rather than a
// handful per event.
import type { Handler, Message, ReadCache, Sql } from '@converge/platform';
import type { LagTracker } from './lag.ts';
import { projectEvents, type SourceEvent } from './read-model.ts';
import { readModels, type ReadModelName } from './read-models.ts';

export const querySources = ['order', 'inventory', 'payment'] as const;

// Cached rows are invalidated at their new versions inside the transaction, before the
// commit: a reader in between reads the old row and offers an older version, which the
// cache refuses; were the transaction to roll back, the keys would only miss until the
// next write. (Invalidated after the commit instead, a read carrying a consistency
// token could meet the old cached value in between.)
/** A batch handler that emits nothing: a projection only folds. */
export type Projector = (tx: Sql, messages: readonly Message[], context: { now: Date }) => Promise<void>;

export const projectBatch =
  (lag: LagTracker, cache: ReadCache): Projector =>
  async (tx, messages, { now }) => {
    const { run, written } = await projectEvents(tx, readModels, messages, now);
    await cache.invalidate(written);
    // Which models each event changed, for the lag figures.
    const changed = new Map<SourceEvent, Set<ReadModelName>>(messages.map((m) => [m, new Set()]));
    for (const model of readModels) {
      for (const step of model.steps(run)) if (step.after !== undefined) changed.get(step.event)?.add(model.name);
    }
    // Recorded as the transaction ends; a transaction that then fails is retried and
    // records again, so the figures may count a retried event twice, never miss one.
    const appliedAt = new Date();
    for (const message of messages) lag.record([...(changed.get(message) ?? [])], message.time, appliedAt);
  };

/** One event alone (retries, a drained hold, replays): the batch fold of one. */
export const queryHandler =
  (project: Projector): Handler =>
  (tx, message, { now }) =>
    project(tx, [message], { now });
