// The API documents, generated from the schemas the code runs on, never written by hand:
// each service's OpenAPI document is what @fastify/swagger makes of its route schemas
// (the system boots in memory; nothing listens), and the AsyncAPI document is the event
// catalogue plus who publishes and who consumes each type. `npm run docs` writes them;
// e2e/docs.test.ts fails when the committed files are stale.
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import Type from 'typebox';
import {
  EnvelopeSchema,
  boundTypes,
  catalogue,
  eventTypes,
  prevAttribute,
  subscriptions,
  type EventType,
} from '@converge/contracts';
import { defaultDeliveryLimit, parkedQueueOf, sagaModes, type SagaMode } from '@converge/platform';
import { deadLetterExchangeOf } from '@converge/platform/rabbitmq';
import { inventorySources } from '../services/inventory/service.ts';
import { orchestratorSources } from '../services/orchestrator/service.ts';
import { orderSources } from '../services/order/service.ts';
import { querySources } from '../services/query/service.ts';
import { paymentSources } from '../services/payment/service.ts';
import { serviceNames, startSystem } from '../system/system.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

// The RabbitMQ topology (createRabbitBus defaults); the in-process bus has the same shape.
const exchange = 'converge.events';
const queueOf = (service: string): string => `converge.${service}`;
const amqpBinding = { bindingVersion: '0.3.0' } as const;

// Who consumes what depends on the saga mode; the document shows both.
const sourcesIn: Record<string, (mode: SagaMode) => readonly string[]> = {
  order: orderSources,
  inventory: inventorySources,
  payment: paymentSources,
  orchestrator: (mode) => (mode === 'orchestration' ? orchestratorSources : []),
  query: () => querySources,
};
const consumers = Object.entries(sourcesIn).map(([name, sources]) => ({
  name,
  modes: sagaModes.filter((mode) => sources(mode).length > 0),
  sourcesIn: sources,
}));
const modesConsuming = (consumer: (typeof consumers)[number], type: EventType) =>
  consumer.modes.filter((mode) => boundTypes(consumer.name, consumer.sourcesIn(mode)).includes(type));

/** Pretty JSON with a trailing newline; symbol keys (TypeBox's own) are dropped. */
const json = (value: unknown): string => `${JSON.stringify(value, null, 2)}\n`;

async function openApiDocuments(): Promise<Record<string, string>> {
  const system = await startSystem({ storage: { kind: 'pglite' }, bus: { kind: 'local' }, allowFaults: false });
  try {
    return Object.fromEntries(
      serviceNames.map((name) => [`docs/openapi/${name}.json`, json(system.services[name].app.swagger())]),
    );
  } finally {
    await system.stop();
  }
}

const envelopeDescription = `Every message is a CloudEvents 1.0 envelope in structured mode \
(content type \`application/cloudevents+json\`); the event itself is \`data\` (\`application/json\`).

- \`id\`: set once by the producer and stable across retries, redeliveries and replays: consumers deduplicate on it.
- \`source\`: the publishing service; \`type\`: the event type, one channel of this document.
- \`subject\`: the entity id (an order or product id) and the ordering key.
- \`sequence\`: the version of the subject's stream at its source. Per source and subject, a consumer applies \
messages in sequence order: it ignores stale ones and holds early ones until the gap is filled.
- \`prev<consumer>\` (${Object.keys(subscriptions)
  .map((name) => `\`${prevAttribute(name)}\``)
  .join(', ')}): a consumer binds only the types it \
handles, so its events of a subject have holes in \`sequence\`. Each event of a type that such a consumer binds \
carries, for it, the sequence of the subject's previous event among the types it binds (0 when none): the consumer \
applies the event once it has applied that one, and holds it otherwise. A consumer that binds every type of a source \
needs no stamp.
- \`correlationid\`: the id of the request that started the flow, carried by every message it causes; \
\`causationid\`: the id of the message that caused this one; \`traceparent\`: W3C trace context.
- \`dataversion\`: the version of the \`data\` schema.

Transport: RabbitMQ, one durable topic exchange \`${exchange}\` with the event type as routing key, and one \
durable quorum queue per consuming service, \`${queueOf('<service>')}\`, bound to the types it handles. \
A publish of several events of one type is one broker message in CloudEvents batched mode \
(\`application/cloudevents-batch+json\`, a JSON array of envelopes): one confirm, one delivery and one ack for the \
lot; each envelope in it is validated and applied on its own, and a bad one is dead-lettered alone. Messages are \
persistent and published with publisher confirms and the mandatory flag: an event of a type no queue is bound to \
is refused and stays in its producer's outbox until one is. Consumers ack after their transaction commits; a \
message redelivered more than ${defaultDeliveryLimit} times without an ack is dead-lettered through the exchange \
\`${deadLetterExchangeOf(exchange)}\` to the queue's parking queue \`${parkedQueueOf(queueOf('<service>'))}\`. \
Embedded mode uses an in-process bus with the same semantics.`;

function messageOf(type: EventType) {
  const { source, version, schema, summary } = catalogue[type];
  return {
    name: type,
    title: type,
    summary,
    contentType: 'application/cloudevents+json',
    correlationId: { description: 'The request that started the flow.', location: '$message.payload#/correlationid' },
    payload: Type.Object({
      ...EnvelopeSchema.properties,
      source: Type.Literal(source),
      type: Type.Literal(type),
      dataversion: Type.Integer({ const: version }),
      data: schema,
    }),
    bindings: { amqp: { messageType: type, ...amqpBinding } },
  };
}

export function buildAsyncApi(): Record<string, unknown> {
  const consumersOf = (type: EventType) =>
    consumers.flatMap((c) => {
      const modes = modesConsuming(c, type);
      if (modes.length === 0) return [];
      return [{ name: c.name, when: modes.length === sagaModes.length ? '' : ` (SAGA_MODE=${modes.join(', ')} only)` }];
    });
  const channels = Object.fromEntries(
    eventTypes.map((type) => [
      type,
      {
        address: type,
        title: type,
        summary: catalogue[type].summary,
        description: `Published by ${catalogue[type].source}; consumed by ${
          consumersOf(type)
            .map((c) => `${c.name}${c.when}`)
            .join(', ') || 'no service'
        }.`,
        messages: { [type]: { $ref: `#/components/messages/${type}` } },
        bindings: {
          amqp: {
            is: 'routingKey',
            exchange: { name: exchange, type: 'topic', durable: true, autoDelete: false, vhost: '/' },
            ...amqpBinding,
          },
        },
      },
    ]),
  );
  const operations = Object.fromEntries(
    eventTypes.flatMap((type): [string, object][] => {
      const { source } = catalogue[type];
      const refs = {
        channel: { $ref: `#/channels/${type}` },
        messages: [{ $ref: `#/channels/${type}/messages/${type}` }],
      };
      return [
        [
          `${source}.send.${type}`,
          {
            action: 'send',
            ...refs,
            summary: `${source} publishes ${type} from its outbox, in commit order per subject.`,
            tags: [{ name: source }],
            bindings: { amqp: { deliveryMode: 2, ...amqpBinding } },
          },
        ],
        ...consumersOf(type).map(({ name, when }): [string, object] => [
          `${name}.receive.${type}`,
          {
            action: 'receive',
            ...refs,
            summary:
              `${name} consumes ${type} from queue ${queueOf(name)}, ` +
              `once in effect (inbox), in sequence order per subject${when}.`,
            tags: [{ name }],
            bindings: { amqp: { ack: true, ...amqpBinding } },
          },
        ]),
      ];
    }),
  );
  return {
    asyncapi: '3.0.0',
    info: { title: 'Converge events', version: '1.0.0', description: envelopeDescription },
    defaultContentType: 'application/cloudevents+json',
    servers: {
      rabbitmq: {
        host: 'localhost:5672',
        protocol: 'amqp',
        protocolVersion: '0-9-1',
        description: 'Cluster mode: the broker given by AMQP_URL.',
      },
    },
    channels,
    operations,
    components: { messages: Object.fromEntries(eventTypes.map((type) => [type, messageOf(type)])) },
  };
}

const readme = `# API documents

Generated from the schemas the code runs on; do not edit them by hand.

- \`openapi/<service>.json\`: the HTTP API of ${serviceNames.join(', ')} (OpenAPI 3.1), as each service
  serves it at \`GET /openapi.json\`, built from its route schemas.
- \`asyncapi.json\`: every event (AsyncAPI 3.0): its CloudEvents envelope and payload schema, the
  service that publishes it and the services that consume it, built from the catalogue in
  \`packages/contracts\`.

\`npm run docs\` (scripts/docs.ts) writes them. \`e2e/docs.test.ts\` fails when a committed file
differs from what the code generates, so run \`npm run docs\` after changing a schema or a route.
`;

/** Every generated document: path relative to the repository root → content. */
export async function buildDocs(): Promise<Record<string, string>> {
  return {
    ...(await openApiDocuments()),
    'docs/asyncapi.json': json(buildAsyncApi()),
    'docs/README.md': readme,
  };
}

async function writeDocs(): Promise<void> {
  for (const [file, content] of Object.entries(await buildDocs())) {
    const target = path.join(root, file);
    await mkdir(path.dirname(target), { recursive: true });
    await writeFile(target, content);
    console.log(`wrote ${file}`);
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href)
  await writeDocs();
