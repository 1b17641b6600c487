// What a service can say about its own consistency: outbox backlog and age, what its
// consumer did with the messages it received, early messages held, dead letters.
// As JSON for the dashboard (/status) and as Prometheus text (/metrics).
import Type, { type Static } from 'typebox';
import type { Consumer } from './consumer.ts';
import type { Db } from './db.ts';
import type { HttpApp } from './http.ts';
import { outboxStatus } from './relay.ts';

export const StatusSchema = Type.Object({
  service: Type.String(),
  outbox: Type.Object({ backlog: Type.Integer(), oldestAgeSeconds: Type.Number(), published: Type.Integer() }),
  consumer: Type.Record(Type.String(), Type.Integer()),
  held: Type.Integer(),
  deadLetters: Type.Integer(),
});

export async function serviceStatus(service: string, db: Db, consumer: Consumer): Promise<Static<typeof StatusSchema>> {
  const [counts] = await db.query<{ held: number; dead: number }>(
    `SELECT (SELECT count(*) FROM held_messages)::int AS held,
            (SELECT count(*) FROM dead_letters WHERE status = 'parked')::int AS dead`,
  );
  return {
    service,
    outbox: await outboxStatus(db),
    consumer: { ...consumer.stats },
    held: counts?.held ?? 0,
    deadLetters: counts?.dead ?? 0,
  };
}

export function registerStatusRoutes(
  app: HttpApp,
  service: string,
  db: Db,
  consumer: Consumer,
): void {
  app.get('/status', { schema: { tags: ['operations'], summary: 'Outbox, consumer and dead-letter figures', response: { 200: StatusSchema } } }, () =>
    serviceStatus(service, db, consumer));
  app.get('/metrics', { schema: { hide: true } }, async (_request, reply) => {
    const s = await serviceStatus(service, db, consumer);
    const label = `service="${service}"`;
    const lines = [
      '# HELP converge_outbox_backlog Events committed and not yet published.',
      '# TYPE converge_outbox_backlog gauge',
      `converge_outbox_backlog{${label}} ${s.outbox.backlog}`,
      '# HELP converge_outbox_oldest_age_seconds Age of the oldest unpublished event.',
      '# TYPE converge_outbox_oldest_age_seconds gauge',
      `converge_outbox_oldest_age_seconds{${label}} ${s.outbox.oldestAgeSeconds}`,
      '# HELP converge_messages_total Messages received by the consumer, by outcome.',
      '# TYPE converge_messages_total counter',
      ...Object.entries(s.consumer).map(([outcome, n]) => `converge_messages_total{${label},outcome="${outcome}"} ${n}`),
      '# HELP converge_held_messages Early messages waiting for their predecessor.',
      '# TYPE converge_held_messages gauge',
      `converge_held_messages{${label}} ${s.held}`,
      '# HELP converge_dead_letters Messages parked for an operator.',
      '# TYPE converge_dead_letters gauge',
      `converge_dead_letters{${label}} ${s.deadLetters}`,
    ];
    return reply.type('text/plain; version=0.0.4').send(lines.join('\n') + '\n');
  });
}
