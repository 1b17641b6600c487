// The committed API documents are what the code generates today: a schema or route that
// changed without `npm run docs` fails here. The documents are also checked for the
// shape and content a reader relies on: every event, every documented route, problem
// details on every 4xx.
import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { catalogue, eventTypes } from '@converge/contracts';
import { Problem } from '@converge/platform';
import { buildDocs } from '../scripts/docs.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

type Schema = Record<string, unknown>;
type Response = { description?: string; content?: Record<string, { schema?: Schema }> };
type Operation = {
  summary?: string;
  parameters?: { in: string; name: string; required?: boolean }[];
  requestBody?: unknown;
  responses?: Record<string, Response>;
};
type OpenApi = {
  openapi: string;
  info: { title: string; version: string };
  paths: Record<string, Record<string, Operation>>;
};
type AsyncApi = {
  asyncapi: string;
  info: { title: string; version: string; description: string };
  channels: Record<string, { address: string; messages: Record<string, { $ref: string }> }>;
  operations: Record<string, { action: 'send' | 'receive'; channel: { $ref: string }; messages: { $ref: string }[] }>;
};

const documented = {
  order: ['POST /orders', 'GET /orders/{id}', 'POST /orders/{id}/cancel', 'GET /orders'],
  inventory: ['GET /products', 'POST /products', 'POST /products/{id}/restock', 'GET /products/{id}'],
  payment: ['GET /payments', 'GET /users/{id}/credit', 'POST /users/{id}/credit'],
  orchestrator: ['GET /sagas', 'GET /sagas/{id}', 'POST /sagas/{id}/retry', 'POST /sagas/{id}/resolve'],
  query: ['GET /orders/{id}', 'GET /users/{id}/orders', 'GET /products/{id}', 'GET /products', 'GET /system'],
};
const everyService = [
  'GET /dead-letters',
  'POST /dead-letters/{id}/replay',
  'POST /dead-letters/replay',
  'GET /events',
  'GET /events/marks',
];
const methods = new Set(['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace']);

/** Resolves a local JSON pointer (`#/a/b`) in a document. */
function resolve(document: unknown, ref: string): unknown {
  if (!ref.startsWith('#/')) throw new Error(`not a local reference: ${ref}`);
  return ref
    .slice(2)
    .split('/')
    .map((part) => part.replaceAll('~1', '/').replaceAll('~0', '~'))
    .reduce<unknown>(
      (node, key) => (typeof node === 'object' && node !== null ? (node as Record<string, unknown>)[key] : undefined),
      document,
    );
}

const readCommitted = (file: string): Promise<string | undefined> =>
  readFile(path.join(root, file), 'utf8').catch(() => undefined);

let docs: Record<string, string>;
const openApi = (service: string): OpenApi => JSON.parse(docs[`docs/openapi/${service}.json`] ?? 'null') as OpenApi;
const asyncApi = (): AsyncApi => JSON.parse(docs['docs/asyncapi.json'] ?? 'null') as AsyncApi;
const operationsOf = (doc: OpenApi) =>
  Object.entries(doc.paths).flatMap(([route, item]) =>
    Object.entries(item)
      .filter(([method]) => methods.has(method))
      .map(([method, operation]) => ({ route, method, operation })),
  );

// Booting five in-memory databases takes a while on a busy machine.
beforeAll(async () => {
  docs = await buildDocs();
}, 120_000);

describe('generated API documents', () => {
  it('are committed as generated (run npm run docs)', async () => {
    expect(Object.keys(docs).sort()).toEqual([
      'docs/README.md',
      'docs/asyncapi.json',
      'docs/openapi/inventory.json',
      'docs/openapi/orchestrator.json',
      'docs/openapi/order.json',
      'docs/openapi/payment.json',
      'docs/openapi/query.json',
    ]);
    for (const [file, content] of Object.entries(docs)) {
      expect(await readCommitted(file), `${file} is stale: run npm run docs`).toBe(content);
    }
    const onDisk = await readdir(path.join(root, 'docs/openapi')).catch(() => []);
    expect(
      onDisk.map((f) => `docs/openapi/${f}`).sort(),
      'docs/openapi holds a file nothing generates: run npm run docs',
    ).toEqual(
      Object.keys(docs)
        .filter((f) => f.startsWith('docs/openapi/'))
        .sort(),
    );
  });
});

describe('OpenAPI documents', () => {
  it.each(Object.keys(documented))('%s is OpenAPI 3.1 with every documented route', (service) => {
    const doc = openApi(service);
    expect(doc.openapi).toMatch(/^3\.1\.\d+$/);
    expect(doc.info.title).toBe(`Converge ${service} service`);
    expect(typeof doc.info.version).toBe('string');
    expect(typeof doc.paths).toBe('object');
    const routes = operationsOf(doc).map(({ route, method }) => `${method.toUpperCase()} ${route}`);
    expect(routes).toEqual(
      expect.arrayContaining([...documented[service as keyof typeof documented], ...everyService]),
    );
  });

  it.each(Object.keys(documented))('%s describes every operation: summary, path parameters, responses', (service) => {
    for (const { route, method, operation } of operationsOf(openApi(service))) {
      const where = `${method.toUpperCase()} ${route}`;
      expect(route, where).toMatch(/^\//);
      expect(operation.summary, `${where} has no summary`).toEqual(expect.any(String));
      const declared = (operation.parameters ?? [])
        .filter((p) => p.in === 'path' && p.required === true)
        .map((p) => p.name)
        .sort();
      const inPath = [...route.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]).sort();
      expect(declared, `${where} path parameters`).toEqual(inPath);
      const responses = Object.entries(operation.responses ?? {});
      expect(
        responses.some(([status, r]) => /^2\d\d$/.test(status) && r.content !== undefined),
        `${where} has no 2xx body`,
      ).toBe(true);
      if ((operation.parameters ?? []).length > 0 || operation.requestBody !== undefined) {
        expect(Object.keys(operation.responses ?? {}), `${where} takes input but documents no 400`).toContain('400');
      }
    }
  });

  it.each(Object.keys(documented))('%s answers every 4xx with problem details', (service) => {
    const doc = openApi(service);
    const problem = JSON.parse(JSON.stringify(Problem)) as Schema;
    let checked = 0;
    for (const { route, method, operation } of operationsOf(doc)) {
      for (const [status, response] of Object.entries(operation.responses ?? {})) {
        if (!/^4\d\d$/.test(status)) continue;
        const where = `${method.toUpperCase()} ${route} ${status}`;
        const media = response.content?.['application/problem+json'] ?? response.content?.['application/json'];
        expect(media?.schema, `${where} has no schema`).toBeDefined();
        const schema = typeof media?.schema?.$ref === 'string' ? resolve(doc, media.schema.$ref) : media?.schema;
        expect(schema, `${where} is not the problem schema`).toMatchObject(problem);
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(0);
  });
});

describe('AsyncAPI document', () => {
  it('is AsyncAPI 3.0 describing the envelope', () => {
    const doc = asyncApi();
    expect(doc.asyncapi).toBe('3.0.0');
    expect(doc.info).toMatchObject({ title: 'Converge events', version: '1.0.0' });
    for (const term of [
      'CloudEvents 1.0',
      'subject',
      'sequence',
      'correlationid',
      'causationid',
      'dataversion',
      'converge.events',
      'quorum',
    ]) {
      expect(doc.info.description).toContain(term);
    }
  });

  it('has a channel for every catalogued event, with its payload schema as data', () => {
    const doc = asyncApi();
    expect(Object.keys(doc.channels).sort()).toEqual([...eventTypes].sort());
    for (const type of eventTypes) {
      const channel = doc.channels[type];
      expect(channel?.address, type).toBe(type);
      const ref = channel?.messages[type]?.$ref ?? '';
      const message = resolve(doc, ref) as { payload: { properties: Record<string, Schema> } } | undefined;
      expect(message, `${type} message ${ref}`).toBeDefined();
      expect(message?.payload.properties.data).toEqual(JSON.parse(JSON.stringify(catalogue[type].schema)));
      expect(message?.payload.properties.type).toMatchObject({ const: type });
      expect(message?.payload.properties.source).toMatchObject({ const: catalogue[type].source });
    }
  });

  it('says who sends and who receives each event, with references that resolve', () => {
    const doc = asyncApi();
    for (const [id, operation] of Object.entries(doc.operations)) {
      expect(resolve(doc, operation.channel.$ref), `${id} channel`).toBeDefined();
      for (const message of operation.messages) {
        expect(message.$ref.startsWith(`${operation.channel.$ref}/messages/`), `${id} message of its channel`).toBe(
          true,
        );
        expect(resolve(doc, message.$ref), `${id} message`).toBeDefined();
      }
    }
    for (const type of eventTypes) {
      const sent = Object.entries(doc.operations).filter(
        ([, o]) => o.action === 'send' && o.channel.$ref === `#/channels/${type}`,
      );
      expect(
        sent.map(([id]) => id),
        type,
      ).toEqual([`${catalogue[type].source}.send.${type}`]);
    }
    const received = Object.entries(doc.operations)
      .filter(([, o]) => o.action === 'receive')
      .map(([id]) => id);
    expect(received).toEqual(
      expect.arrayContaining([
        'inventory.receive.OrderCreated',
        'payment.receive.InventoryReserved',
        'order.receive.InventoryRejected',
        'order.receive.PaymentProcessed',
        'order.receive.PaymentFailed',
        'inventory.receive.PaymentFailed',
        'inventory.receive.OrderCancelled',
        'payment.receive.OrderCancelled',
        'inventory.receive.OrderCompleted',
        'order.receive.ProductAdded',
        // Orchestration: the saga's commands go to the services, every reply to the orchestrator.
        'inventory.receive.ReserveInventory',
        'inventory.receive.ReleaseInventory',
        'inventory.receive.CommitInventory',
        'payment.receive.ProcessPayment',
        'payment.receive.RefundPayment',
        'order.receive.CompleteOrder',
        'order.receive.FailOrder',
        'orchestrator.receive.OrderCreated',
        'orchestrator.receive.OrderCancelled',
        'orchestrator.receive.InventoryReserved',
        'orchestrator.receive.PaymentProcessed',
        'orchestrator.receive.PaymentRefunded',
      ]),
    );
    expect(received.filter((id) => id.startsWith('order.receive.Order'))).toEqual([]);
  });
});
