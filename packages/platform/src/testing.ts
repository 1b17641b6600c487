// Test helpers shared by every suite. Tests that need a server probe it once: under
// CI=true a missing server fails the run loudly; elsewhere the suite is skipped with a
// visible notice, never silently.
import net from 'node:net';

export const servers = {
  postgres: process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres',
  rabbitmq: process.env.TEST_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672',
  redis: process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379',
} as const;

export type ServerName = keyof typeof servers;

const probes = new Map<ServerName, Promise<boolean>>();

function reachable(url: string): Promise<boolean> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = net.connect({ host: hostname, port: Number(port) }, () => {
      socket.destroy();
      resolve(true);
    });
    socket.setTimeout(2000, () => {
      socket.destroy();
      resolve(false);
    });
    socket.on('error', () => resolve(false));
  });
}

/**
 * Resolves true when the server is reachable. When it is not: throws under CI=true,
 * otherwise prints a notice and resolves false so the caller can skip.
 */
export async function serverAvailable(name: ServerName): Promise<boolean> {
  let probe = probes.get(name);
  if (probe === undefined) {
    probe = reachable(servers[name]);
    probes.set(name, probe);
  }
  const up = await probe;
  if (up) return true;
  if (process.env.CI === 'true')
    throw new Error(`${name} is required under CI=true but ${servers[name]} is unreachable`);
  console.warn(`\n*** NOTICE: ${name} not reachable at ${servers[name]}: its tests are SKIPPED ***\n`);
  return false;
}

/** A short unique suffix for databases, exchanges and queues created by one test run. */
export function uniqueName(prefix: string): string {
  return `${prefix}_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`;
}

/** Polls `probe` until it returns a value other than undefined, or fails after `timeoutMs`. */
export async function eventually<T>(
  probe: () => Promise<T | undefined>,
  timeoutMs = 15_000,
  what = 'condition',
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      const cause = lastError instanceof Error ? `: ${lastError.message}` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${cause}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}
