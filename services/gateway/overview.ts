// What the dashboard's first panel shows: for every service, whether it answers and is
// ready, its /status figures (outbox, consumer, dead letters) and how the gateway sees
// each of its instances. The figures come from one instance, a healthy one when there is
// one; a service that is down shows as down, with why.
import { StatusSchema } from '@converge/platform';
import Type, { type Static } from 'typebox';
import { Compile } from 'typebox/compile';
import { describeFailure, pick, type Pool } from './upstreams.ts';

const ServiceOverview = Type.Object({
  name: Type.String(),
  up: Type.Boolean({ description: 'the service answered' }),
  ready: Type.Boolean({ description: '/readyz said ready' }),
  checks: Type.Record(Type.String(), Type.Boolean()),
  status: Type.Union([StatusSchema, Type.Null()]),
  error: Type.Union([Type.String(), Type.Null()]),
  latencyMs: Type.Number(),
  instances: Type.Array(
    Type.Object({ url: Type.String(), healthy: Type.Boolean({ description: 'as the gateway last saw it' }) }),
  ),
});
export const OverviewSchema = Type.Object({
  at: Type.String({ format: 'date-time' }),
  ready: Type.Boolean({ description: 'every service is ready' }),
  services: Type.Array(ServiceOverview),
});
export type Overview = Static<typeof OverviewSchema>;
type ServiceOverview = Static<typeof ServiceOverview>;

const statusCheck = Compile(StatusSchema);

async function getJson(
  url: string,
  timeoutMs: number,
  authorization?: string,
): Promise<{ status: number; body: unknown }> {
  const response = await fetch(url, {
    headers: { accept: 'application/json', ...(authorization === undefined ? {} : { authorization }) },
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await response.text();
  try {
    return { status: response.status, body: JSON.parse(text) as unknown };
  } catch {
    return { status: response.status, body: null };
  }
}

/** One instance's figures (a healthy one when there is one) and how the gateway sees each instance. */
/** `authorization`: the gateway's own (service) credentials, which /status asks for. */
export async function probeService(
  name: string,
  pool: Pool,
  timeoutMs: number,
  authorization?: string,
): Promise<ServiceOverview> {
  const base = (pick(pool) ?? pool.instances[0])?.base ?? '';
  const instances = pool.instances.map((i) => ({ url: i.base, healthy: i.healthy }));
  const started = performance.now();
  const [status, ready] = await Promise.allSettled([
    getJson(`${base}/status`, timeoutMs, authorization),
    getJson(`${base}/readyz`, timeoutMs),
  ]);
  const latencyMs = Math.round((performance.now() - started) * 10) / 10;
  const failure = [status, ready].find((r) => r.status === 'rejected');
  if (status.status === 'rejected' && ready.status === 'rejected') {
    return {
      name,
      up: false,
      ready: false,
      checks: {},
      status: null,
      error: describeFailure(failure?.reason, timeoutMs),
      latencyMs,
      instances,
    };
  }
  const readyBody = ready.status === 'fulfilled' ? ready.value.body : null;
  const checksValue =
    typeof readyBody === 'object' && readyBody !== null ? (readyBody as { checks?: unknown }).checks : undefined;
  const checks =
    typeof checksValue === 'object' && checksValue !== null
      ? Object.fromEntries(Object.entries(checksValue).map(([k, v]) => [k, v === true]))
      : {};
  const statusBody =
    status.status === 'fulfilled' && status.value.status === 200 && statusCheck.Check(status.value.body)
      ? status.value.body
      : null;
  const error =
    failure !== undefined
      ? describeFailure(failure.reason, timeoutMs)
      : statusBody === null
        ? 'unexpected answer from /status'
        : null;
  return {
    name,
    up: true,
    ready: ready.status === 'fulfilled' && ready.value.status === 200,
    checks,
    status: statusBody,
    error,
    latencyMs,
    instances,
  };
}
