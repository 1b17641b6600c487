// What this process spent on the database and the broker, counted where it happens:
// statements and transactions in db.ts, publishes and deliveries in the buses. The
// benchmark scrapes them from /metrics before and after a step and divides by the
// orders the step completed: the cost model per order. Counters are process-wide, so
// in embedded mode (every service in one process) each service reports the same
// totals; in cluster mode a process is one service.

export type CostCounters = {
  /** Statements sent to the database, each one round trip (BEGIN and COMMIT not included). */
  statements: number;
  /** Explicit transactions (BEGIN … COMMIT or ROLLBACK); a statement outside one is its own. */
  transactions: number;
  /** Broker messages published (one confirm each). */
  busPublishes: number;
  busPublishedEvents: number;
  busPublishedBytes: number;
  /** Broker messages received (one ack each). */
  busDeliveries: number;
  busDeliveredEvents: number;
  busDeliveredBytes: number;
};

const counters: CostCounters = {
  statements: 0,
  transactions: 0,
  busPublishes: 0,
  busPublishedEvents: 0,
  busPublishedBytes: 0,
  busDeliveries: 0,
  busDeliveredEvents: 0,
  busDeliveredBytes: 0,
};

export function countStatement(): void {
  counters.statements += 1;
}

export function countTransaction(): void {
  counters.transactions += 1;
}

/** One broker message published, carrying `events` events in `bytes` bytes of body. */
export function countPublish(events: number, bytes: number): void {
  counters.busPublishes += 1;
  counters.busPublishedEvents += events;
  counters.busPublishedBytes += bytes;
}

/** One broker message delivered to this process, carrying `events` events in `bytes` bytes of body. */
export function countDelivery(events: number, bytes: number): void {
  counters.busDeliveries += 1;
  counters.busDeliveredEvents += events;
  counters.busDeliveredBytes += bytes;
}

export function costCounters(): Readonly<CostCounters> {
  return { ...counters };
}

const metrics: [keyof CostCounters, string, string][] = [
  [
    'statements',
    'converge_db_statements_total',
    'Database statements sent by this process (BEGIN and COMMIT not included).',
  ],
  ['transactions', 'converge_db_transactions_total', 'Explicit database transactions run by this process.'],
  ['busPublishes', 'converge_bus_publishes_total', 'Broker messages published by this process.'],
  [
    'busPublishedEvents',
    'converge_bus_published_events_total',
    'Events in the broker messages this process published.',
  ],
  [
    'busPublishedBytes',
    'converge_bus_published_bytes_total',
    'Body bytes of the broker messages this process published.',
  ],
  ['busDeliveries', 'converge_bus_deliveries_total', 'Broker messages delivered to this process.'],
  [
    'busDeliveredEvents',
    'converge_bus_delivered_events_total',
    'Events in the broker messages delivered to this process.',
  ],
  [
    'busDeliveredBytes',
    'converge_bus_delivered_bytes_total',
    'Body bytes of the broker messages delivered to this process.',
  ],
];

/** The counters as Prometheus text lines, each series labelled with `label` (`service="order"`). */
export function costMetricLines(label: string): string[] {
  return metrics.flatMap(([key, name, help]) => [
    `# HELP ${name} ${help}`,
    `# TYPE ${name} counter`,
    `${name}{${label}} ${counters[key]}`,
  ]);
}
