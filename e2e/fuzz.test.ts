// Every route of every service, fuzzed from the OpenAPI document the service serves
// itself. Each path and query parameter gets hostile values (numbers past every integer
// type, control characters, broken percent-encoding, long and odd unicode strings, dates
// out of range or with a suffix, empty, repeated), one parameter at a time and in random
// mixes, beside values of the right type so that the handlers run against their
// database; unknown parameters ride along. No answer may be a 5xx, every 4xx is
// problem+json, and a value of a parameter's own type is never refused by its schema (a
// bound must not shut out what it bounds). The generator is seeded (FUZZ_SEED), so a
// failure reproduces, and each failure names its request.
import { beforeAll, expect, it } from 'vitest';
import { serviceNames, type ServiceName } from '../system/system.ts';
import { describeSystem, type Harness } from './harness.ts';

type Schema = {
  type?: string;
  format?: string;
  pattern?: string;
  minimum?: number;
  maximum?: number;
  minLength?: number;
  maxLength?: number;
  enum?: unknown[];
  const?: unknown;
  anyOf?: Schema[];
};
type Parameter = { in: string; name: string; required?: boolean; schema?: Schema };
type OpenApi = { paths: Record<string, Record<string, { parameters?: Parameter[] }>> };
type Method = 'GET' | 'POST';
/** A parameter's value as it goes into the URL: already percent-encoded (or deliberately not). */
type Raw = string;
/** A query string entry: a name and its raw value; null sends the name alone (`?limit`). */
type Entry = [string, Raw | null];
type Request = {
  service: ServiceName;
  method: Method;
  url: string;
  headers: Record<string, string>;
  /** Every parameter has a value of its type: the schema must let it through. */
  valid: boolean;
};
type Answer = { status: number; contentType: string; body: string };

const seed = Number(process.env.FUZZ_SEED ?? 13);
const mixesPerOperation = 40;

/** Every request of the fuzz leaves through here, as an operator: the headers every request needs live in one place. */
async function send(h: Harness, { service, method, url, headers }: Request): Promise<Answer> {
  const common: Record<string, string> = { ...(await h.auth()) };
  const response = await h.system.services[service].app.inject({
    method,
    url,
    headers: { ...common, ...(method === 'POST' ? { 'content-type': 'application/json' } : {}), ...headers },
    ...(method === 'POST' ? { payload: '{}' } : {}),
  });
  return {
    status: response.statusCode,
    contentType: String(response.headers['content-type'] ?? ''),
    body: response.body,
  };
}

/** mulberry32: a small seeded generator, so that the same seed sends the same requests. */
function generator(start: number) {
  let state = start >>> 0;
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  const pick = <T>(items: readonly T[]): T => items[int(items.length)] as T;
  const hex = (n: number) => Array.from({ length: n }, () => int(16).toString(16)).join('');
  const uuid = () => `${hex(8)}-${hex(4)}-4${hex(3)}-${pick(['8', '9', 'a', 'b'])}${hex(3)}-${hex(12)}`;
  return { next, int, pick, hex, uuid };
}
type Generator = ReturnType<typeof generator>;

const enc = encodeURIComponent;
const base64url = (text: string) => Buffer.from(text).toString('base64url');
const someUuid = 'c0ffee00-1234-4abc-8def-0123456789ab';

const numbers = [
  '1e308',
  '-1e308',
  String(2 ** 53 + 1),
  '9223372036854775807',
  '9223372036854775808',
  '-9223372036854775809',
  '2147483648',
  '99999999999999999999999999',
  '9'.repeat(400),
  '-1',
  '0',
  '-0',
  '1.5',
  '1e3',
  '0x10',
  '+1',
  ' 1',
  '00000000000000000001',
  'NaN',
  'Infinity',
  '-Infinity',
];
const dates = [
  '2026-01-01T00:00:00Zjunk',
  '2026-01-01T00:00:00Z junk',
  '99999-01-01T00:00:00Z',
  '+275760-09-13T00:00:00Z',
  '-000001-01-01T00:00:00Z',
  '0000-00-00',
  '0000-01-01T00:00:00Z',
  '0001-01-01T00:00:00Z',
  '1969-12-31T23:59:59Z',
  '9999-12-31T23:59:59Z',
  '9999-12-31T23:59:59-14:00',
  '2026-02-30T00:00:00Z',
  '2026-02-29T00:00:00Z',
  '2026-13-01T00:00:00Z',
  '2026-01-01T24:00:00Z',
  '2026-01-01T23:59:60Z',
  '2026-12-31T23:59:60Z',
  '2026-01-01T00:00:00+23:59',
  '2026-01-01T00:00:00-16:00',
  '2026-01-01T00:00:00+24:00',
  '2026-01-01T00:00:00.12345678901234567890123Z',
  '2026-01-01T00:00:00Z[Europe/Paris]',
  '2026-01-01T00:00:00Z[!u-ca=hebrew]',
  '2026-01-01t00:00:00z',
  '2026-01-01T00:00:00',
  '2026-01-01',
  '2026-01-01 00:00:00Z',
  'infinity',
  '-infinity',
  'epoch',
  'now',
];
const strings = [
  '\u0000',
  'a\u0000b',
  '\u0001',
  '\n',
  'a\r\nb: c',
  '\t',
  '\u007f',
  '\u0085',
  '\u200b',
  '\ufeff',
  '\uffff',
  'a'.repeat(101),
  'a'.repeat(201),
  'a'.repeat(1001),
  'a'.repeat(10_000),
  '😀',
  '\u202eabc',
  'مرحبا',
  'u\u0308',
  "' OR '1'='1",
  '1; DROP TABLE orders',
  '$1',
  '\\',
  '../../etc/passwd',
  '<script>alert(1)</script>',
  '__proto__',
  'constructor',
  'null',
  'undefined',
  'true',
  '[]',
  '{}',
  '*',
  someUuid.toUpperCase(),
  `${someUuid}x`,
  `{${someUuid}}`,
  someUuid.replaceAll('-', ''),
  `${someUuid}\u0000`,
  '00000000-0000-0000-0000-000000000000',
  'ffffffff-ffff-ffff-ffff-ffffffffffff',
];
/** Left as they are: broken or unusual percent-encoding, lone surrogates (CESU-8) among them. */
const rawOnly: Raw[] = ['%ED%A0%80', '%ED%B0%80', '%F0%9F', '%C0%AF', '%FF', '%', '%zz', '%00', '%2F', '%2e%2e', '%25'];
/** Opaque tokens (page cursors) often carry an instant and an id: the same hostile dates, encoded so. */
const tokens = [
  ...dates.map((d) => base64url(`${d}|${someUuid}`)),
  base64url('|'),
  base64url(`\u0000|\u0000`),
  base64url(`2026-01-01T00:00:00Z|${someUuid}|x`),
  base64url(`2026-01-01T00:00:00Z|${someUuid}\u0000`),
];
const hostile: Raw[] = [...[...numbers, ...dates, ...strings, ...tokens].map(enc), ...rawOnly];
const unknownParameters: Entry[] = [
  ['zz', '1'],
  ['__proto__', '1'],
  ['constructor', 'x'],
  ['__proto__[polluted]', '1'],
  ['a[b]', '1'],
  [enc('a\u0000'), '1'],
  ['a'.repeat(1000), '1'],
];

/** Values of the parameter's own type, so that requests get past validation and into the handler. */
function validValues(schema: Schema | undefined, g: Generator, fixtures: string[]): Raw[] {
  if (schema === undefined) return ['x'];
  const literals = [...(schema.anyOf ?? []).flatMap((s) => s.enum ?? (s.const === undefined ? [] : [s.const]))];
  if (schema.enum !== undefined) literals.push(...schema.enum);
  if (literals.length > 0) return literals.map((l) => enc(String(l)));
  if (schema.type === 'integer' || schema.type === 'number') {
    const min = schema.minimum ?? 0;
    const max = schema.maximum ?? min + 1000;
    return [min, max, min + g.int(max - min + 1)].map(String);
  }
  if (schema.format === 'uuid') return [g.uuid(), ...fixtures.filter((f) => /^[0-9a-f-]{36}$/.test(f))];
  if (schema.format === 'date-time') {
    const instant = Date.UTC(2020, 0, 1) + g.int(20 * 365) * 86_400_000 + g.int(86_400_000);
    return [new Date(instant).toISOString(), '2026-01-01T00:00:00+02:00', '2026-01-01T00:00:00.123456Z'].map(enc);
  }
  const length = Math.max(schema.minLength ?? 1, 1);
  return [`user-${g.hex(8)}`.padEnd(length, 'x'), ...fixtures.filter((f) => f.startsWith('user-'))].map(enc);
}

type Operation = { method: Method; path: string; parameters: Parameter[] };

function operationsOf(document: OpenApi): Operation[] {
  return Object.entries(document.paths).flatMap(([path, operations]) =>
    Object.entries(operations)
      .filter(([method]) => method === 'get' || method === 'post')
      .map(([method, operation]) => ({
        method: method.toUpperCase() as Method,
        path,
        parameters: operation.parameters ?? [],
      })),
  );
}

/** The requests for one operation: each parameter hostile in turn, query-string oddities, then random mixes. */
function requestsFor(service: ServiceName, op: Operation, g: Generator, fixtures: string[]): Request[] {
  const inPath = op.parameters.filter((p) => p.in === 'path');
  const inQuery = op.parameters.filter((p) => p.in === 'query');
  const headers = Object.fromEntries(
    op.parameters.filter((p) => p.in === 'header' && p.required === true).map((p) => [p.name, g.uuid()]),
  );
  const valid = new Map(op.parameters.map((p) => [p.name, validValues(p.schema, g, fixtures)]));
  const validOf = (p: Parameter) => g.pick(valid.get(p.name) ?? ['x']);
  const build = (path: Record<string, Raw>, query: Entry[], valid = false): Request => {
    const url = op.path.replace(/\{([^}]+)\}/g, (_, name: string) => path[name] ?? '');
    const search = query.map(([k, v]) => (v === null ? k : `${k}=${v}`)).join('&');
    return { service, method: op.method, url: search === '' ? url : `${url}?${search}`, headers, valid };
  };
  const basePath = () => Object.fromEntries(inPath.map((p) => [p.name, validOf(p)]));
  const baseQuery = (all: boolean): Entry[] =>
    inQuery.filter((p) => all || p.required === true).map((p) => [p.name, validOf(p)]);
  const withQuery = (query: Entry[], name: string, ...values: (Raw | null)[]): Entry[] => [
    ...query.filter(([k]) => k !== name),
    ...values.map((v): Entry => [name, v]),
  ];

  const requests: Request[] = [build(basePath(), baseQuery(false), true), build(basePath(), baseQuery(true), true)];
  for (const p of inPath) {
    for (const value of [...hostile, '']) requests.push(build({ ...basePath(), [p.name]: value }, baseQuery(true)));
    for (const value of valid.get(p.name) ?? [])
      requests.push(build({ ...basePath(), [p.name]: value }, baseQuery(true), true));
  }
  for (const p of inQuery) {
    const base = baseQuery(g.next() < 0.5);
    for (const value of hostile) requests.push(build(basePath(), withQuery(base, p.name, value)));
    for (const value of valid.get(p.name) ?? []) requests.push(build(basePath(), withQuery(base, p.name, value), true));
    for (const values of [[''], [null], [validOf(p), validOf(p)], [validOf(p), g.pick(hostile)], [null, validOf(p)]])
      requests.push(build(basePath(), withQuery(base, p.name, ...values)));
    requests.push(build(basePath(), [...base.filter(([k]) => k !== p.name), [`${p.name}[]`, validOf(p)]]));
    requests.push(build(basePath(), [...base.filter(([k]) => k !== p.name), [`${p.name}[x]`, validOf(p)]]));
  }
  for (const unknown of unknownParameters) requests.push(build(basePath(), [...baseQuery(true), unknown]));
  for (let i = 0; i < mixesPerOperation; i++) {
    const choose = (p: Parameter) => (g.next() < 0.5 ? g.pick(hostile) : validOf(p));
    const path = Object.fromEntries(inPath.map((p) => [p.name, choose(p)]));
    const query = inQuery.flatMap((p): Entry[] => (g.next() < 0.25 ? [] : [[p.name, choose(p)]]));
    if (query.length > 0 && g.next() < 0.2) query.push(g.pick(query));
    if (g.next() < 0.3) query.push(g.pick(unknownParameters));
    requests.push(build(path, query));
  }
  return requests;
}

/** A 400 that blames a path or query parameter (a body or header problem names its own part). */
function refusedParameters(answer: Answer): boolean {
  if (answer.status !== 400) return false;
  const { errors = [] } = JSON.parse(answer.body) as { errors?: string[] };
  return errors.some((e) => e.startsWith('querystring') || e.startsWith('params'));
}

const shown = (url: string) => (url.length > 300 ? `${url.slice(0, 300)}… (${url.length} characters)` : url);
const shownAnswer = (a: Answer) => `${a.status} ${a.contentType} ${a.body.slice(0, 300)}`;

describeSystem('fuzzing every parameter of every route', ['embedded', 'postgres+rabbitmq'], (h) => {
  const fixtures: string[] = [];
  beforeAll(async () => {
    const product = await h.product(10);
    const user = await h.user(100_000);
    const { orderId } = await h.place(user, [{ productId: product, quantity: 1 }]);
    await h.waitFinal(orderId);
    fixtures.push(product, user, orderId);
  });

  it.each(serviceNames.map((name) => ({ name })))(
    '$name never answers 5xx, and every 4xx is problem+json',
    async ({ name }) => {
      const served = await send(h, { service: name, method: 'GET', url: '/openapi.json', headers: {}, valid: true });
      expect(served.status).toBe(200);
      const operations = operationsOf(JSON.parse(served.body) as OpenApi);
      expect(operations.length).toBeGreaterThan(0);

      const g = generator(seed + serviceNames.indexOf(name));
      const failures: string[] = [];
      const handled = new Set<string>();
      let sent = 0;
      for (const op of operations) {
        for (const request of requestsFor(name, op, g, fixtures)) {
          const answer = await send(h, request);
          sent += 1;
          const problem = answer.contentType.startsWith('application/problem+json');
          const wrong =
            answer.status >= 500 ||
            (answer.status >= 400 && !problem) ||
            (request.valid && request.method === 'GET' && refusedParameters(answer));
          if (wrong) failures.push(`${request.method} ${shown(request.url)} → ${shownAnswer(answer)}`);
          if (answer.status < 300 || answer.status === 404) handled.add(`${op.method} ${op.path}`);
        }
      }
      expect(failures, `FUZZ_SEED=${seed}, ${failures.length} of ${sent} requests:\n${failures.join('\n')}`).toEqual(
        [],
      );
      // Every GET handler ran and answered (found or not found) at least once.
      const gets = operations.filter((op) => op.method === 'GET').map((op) => `${op.method} ${op.path}`);
      expect(gets.filter((op) => !handled.has(op))).toEqual([]);
    },
  );
});
