// How the orchestrator reacts: the order service's OrderCreated starts an order's
// saga; every other event about that order is a reply the saga decides on (a step's
// success or failure, a compensation done, or something it records and ignores). The
// saga's new state, its step log and the next command commit with the inbox row of
// the reply, so a crash anywhere replays the reply or finds it applied, never half.
import type { Handler } from '@converge/platform';
import type { SagaDefinition } from '@converge/platform';
import { advanceSaga, beginSaga } from './store.ts';

export const orchestratorSources = ['order', 'inventory', 'payment'] as const;

export function sagaHandler<Data>(definition: SagaDefinition<Data>): Handler {
  return async (tx, message, { now }) => {
    const context = {
      source: 'orchestrator', now, correlationId: message.correlationid, causationId: message.id,
      ...(message.traceparent === undefined ? {} : { traceparent: message.traceparent }),
    };
    if (message.type === definition.startedBy) {
      await beginSaga(tx, definition, message, context);
      return;
    }
    // Replies are about the saga's entity: an order id here. A message about something
    // no saga covers (a product's stock adjusted) has nothing to advance.
    await advanceSaga(tx, definition, message.subject, { kind: 'reply', message }, context);
  };
}
