// What a service can say about its own consistency: outbox backlog and age, what its
// consumer did with the messages it received, early messages held, dead letters.
// As JSON for the dashboard (/status) and as Prometheus text (/metrics). Under the
// test-only bus fault switch, also how many deliveries it duplicated and delayed. On
// /metrics besides: events the broker refused for want of a bound queue, the depth of
// the service's parking queue at the broker (when given the bus), and the process's
// cost counters (cost.ts) for the benchmark.
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import Type, { type Static } from 'typebox';
import { parkedQueueOf, type Bus } from './bus.ts';
import type { Consumer } from './consumer.ts';
import { costMetricLines } from './cost.ts';
import type { Db } from './db.ts';
import type { FaultStats } from './faulty-bus.ts';
import type { HttpApp } from './http.ts';
import { allow } from './identity.ts';
import { outboxStatus, unroutableEvents } from './relay.ts';

export const StatusSchema = Type.Object({
  service: Type.String(),
  outbox: Type.Object({ backlog: Type.Integer(), oldestAgeSeconds: Type.Number(), published: Type.Integer() }),
  consumer: Type.Record(Type.String(), Type.Integer()),
  held: Type.Integer(),
  deadLetters: Type.Integer(),
  busFaults: Type.Optional(
    Type.Object(
      { duplicated: Type.Integer(), delayed: Type.Integer() },
      {
        description:
          'Deliveries the test-only bus fault switch (BUS_FAULTS) duplicated and delayed; absent when it is off.',
      },
    ),
  ),
});

export async function serviceStatus(
  service: string,
  db: Db,
  consumer: Consumer,
  faults?: FaultStats,
): Promise<Static<typeof StatusSchema>> {
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
    ...(faults === undefined ? {} : { busFaults: { ...faults } }),
  };
}

// How long callbacks wait for the event loop: a request's latency is its own work plus
// this, once per await. Quantiles over the last minute (at least), in seconds.
const loopResolutionMs = 10;
let loopDelay: { histogram: IntervalHistogram; since: number } | undefined;
function watchEventLoop(): { histogram: IntervalHistogram; since: number } {
  if (loopDelay === undefined) {
    const histogram = monitorEventLoopDelay({ resolution: loopResolutionMs });
    histogram.enable();
    loopDelay = { histogram, since: Date.now() };
  }
  return loopDelay;
}

function eventLoopDelayLines(label: string): string[] {
  const watch = watchEventLoop();
  const { histogram } = watch;
  // The histogram records whole timer intervals; the delay is what exceeds the interval.
  const seconds = (ns: number) => (Number.isFinite(ns) ? Math.max(0, ns / 1e6 - loopResolutionMs) / 1e3 : 0).toFixed(6);
  const lines = [
    '# HELP converge_event_loop_delay_seconds Event loop delay over the last minute or more.',
    '# TYPE converge_event_loop_delay_seconds summary',
    ...[0.5, 0.9, 0.99].map(
      (q) => `converge_event_loop_delay_seconds{${label},quantile="${q}"} ${seconds(histogram.percentile(q * 100))}`,
    ),
    `converge_event_loop_delay_seconds_max{${label}} ${seconds(histogram.max)}`,
  ];
  if (Date.now() - watch.since > 60_000) {
    histogram.reset();
    watch.since = Date.now();
  }
  return lines;
}

// The parking queue at the broker: messages that exceeded the delivery limit. Without
// a broker to ask (it is down) the sample is left out rather than failing the scrape.
async function parkedLines(bus: Bus | undefined, queue: string, label: string): Promise<string[]> {
  const depth = bus === undefined ? undefined : await bus.depth(parkedQueueOf(queue)).catch(() => undefined);
  return [
    '# HELP converge_bus_parked_messages Messages past the delivery limit, waiting in the parking queue at the broker.',
    '# TYPE converge_bus_parked_messages gauge',
    ...(depth === undefined ? [] : [`converge_bus_parked_messages{${label}} ${depth}`]),
  ];
}

export function registerStatusRoutes(
  app: HttpApp,
  service: string,
  db: Db,
  consumer: Consumer,
  faults?: FaultStats,
  more?: () => Promise<string[]>,
  bus?: Bus,
): void {
  watchEventLoop();
  app.get(
    '/status',
    {
      config: { access: allow('operator', 'service') },
      schema: {
        tags: ['operations'],
        summary: 'Outbox, consumer and dead-letter figures',
        response: { 200: StatusSchema },
      },
    },
    () => serviceStatus(service, db, consumer, faults),
  );
  app.get(
    '/metrics',
    { config: { access: allow('operator', 'service') }, schema: { hide: true } },
    async (_request, reply) => {
      const s = await serviceStatus(service, db, consumer, faults);
      const label = `service="${service}"`;
      const { batches, fallbacks, ...messages } = s.consumer;
      const lines = [
        '# HELP converge_outbox_backlog Events committed and not yet published.',
        '# TYPE converge_outbox_backlog gauge',
        `converge_outbox_backlog{${label}} ${s.outbox.backlog}`,
        '# HELP converge_outbox_oldest_age_seconds Age of the oldest unpublished event.',
        '# TYPE converge_outbox_oldest_age_seconds gauge',
        `converge_outbox_oldest_age_seconds{${label}} ${s.outbox.oldestAgeSeconds}`,
        '# HELP converge_outbox_unroutable_total Events refused as no queue is bound to their type (each attempt).',
        '# TYPE converge_outbox_unroutable_total counter',
        ...[...unroutableEvents(db)].map(
          ([type, n]) => `converge_outbox_unroutable_total{${label},type="${type}"} ${n}`,
        ),
        '# HELP converge_messages_total Messages received by the consumer, by outcome.',
        '# TYPE converge_messages_total counter',
        ...Object.entries(messages).map(
          ([outcome, n]) => `converge_messages_total{${label},outcome="${outcome}"} ${n}`,
        ),
        '# HELP converge_consumer_batches_total Transactions that applied several messages at once.',
        '# TYPE converge_consumer_batches_total counter',
        `converge_consumer_batches_total{${label}} ${batches}`,
        '# HELP converge_consumer_batch_fallbacks_total Batches rolled back and applied message by message.',
        '# TYPE converge_consumer_batch_fallbacks_total counter',
        `converge_consumer_batch_fallbacks_total{${label}} ${fallbacks}`,
        '# HELP converge_held_messages Early messages waiting for their predecessor.',
        '# TYPE converge_held_messages gauge',
        `converge_held_messages{${label}} ${s.held}`,
        '# HELP converge_dead_letters Messages parked for an operator.',
        '# TYPE converge_dead_letters gauge',
        `converge_dead_letters{${label}} ${s.deadLetters}`,
        ...(s.busFaults === undefined
          ? []
          : [
              '# HELP converge_bus_faults_total Deliveries the test-only fault switch duplicated or delayed.',
              '# TYPE converge_bus_faults_total counter',
              ...Object.entries(s.busFaults).map(
                ([fault, n]) => `converge_bus_faults_total{${label},fault="${fault}"} ${n}`,
              ),
            ]),
      ];
      lines.push(
        ...(await parkedLines(bus, consumer.name, label)),
        ...eventLoopDelayLines(label),
        ...costMetricLines(label),
        ...(more === undefined ? [] : await more()),
      );
      return reply.type('text/plain; version=0.0.4').send(lines.join('\n') + '\n');
    },
  );
}
