// How the orchestrator reacts: the order service's OrderCreated starts an order's
// saga; every other event about that order is a reply the saga decides on (a step's
// success or failure, a compensation done, or something it records and ignores). The
// saga's new state, its step log and the next command commit with the inbox row of
// the reply, so a crash anywhere replays the reply or finds it applied, never half.
import type { BatchHandler, Handler, SagaDefinition } from '@converge/platform';
import { advanceSaga, applyToSagas, beginSaga, replyContext } from './store.ts';

export const orchestratorSources = ['order', 'inventory', 'payment'] as const;

export function sagaHandler<Data>(definition: SagaDefinition<Data>): Handler {
  return async (tx, message, { now }) => {
    const context = replyContext(message, now);
    if (message.type === definition.startedBy) {
      await beginSaga(tx, definition, message, context);
      return;
    }
    // Replies are about the saga's entity: an order id here. A message about something
    // no saga covers (a product's stock adjusted) has nothing to advance.
    await advanceSaga(tx, definition, message.subject, { kind: 'reply', message }, context);
  };
}

/** The same rules for a consumer batch, in a fixed number of statements (applyToSagas). */
export const sagaBatchHandler =
  <Data>(definition: SagaDefinition<Data>): BatchHandler =>
  (tx, messages, { now }) =>
    applyToSagas(tx, definition, messages, now);
