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

export type StallingProxy = {
  /** The target's URL with the proxy's host and port in it. */
  url: string;
  /** Stops forwarding bytes either way, closing nothing: the server looks hung. */
  stall(): void;
  /** Forwards again, what was held first. */
  resume(): void;
  /** Stops listening and drops every connection (the server looks gone). */
  close(): Promise<void>;
};

/**
 * A TCP proxy in front of a real server (its URL's host and port) that a test can stall:
 * a hung server, or a network path that drops everything, without a closed socket to
 * tell the client. New connections during a stall are accepted and held too.
 */
export async function stallingProxy(target: string): Promise<StallingProxy> {
  const to = new URL(target);
  const sockets = new Set<net.Socket>();
  let stalled = false;
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(to.port || 5432), to.hostname);
    for (const [from, onto] of [
      [client, upstream],
      [upstream, client],
    ] as const) {
      sockets.add(from);
      from.on('data', (chunk) => onto.write(chunk));
      from.on('error', () => undefined);
      from.on('close', () => {
        sockets.delete(from);
        onto.destroy();
      });
      if (stalled) from.pause();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = new URL(target);
  url.hostname = '127.0.0.1';
  url.port = String((server.address() as net.AddressInfo).port);
  return {
    url: url.toString(),
    stall: () => {
      stalled = true;
      for (const socket of sockets) socket.pause();
    },
    resume: () => {
      stalled = false;
      for (const socket of sockets) socket.resume();
    },
    close: async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const socket of sockets) socket.destroy();
      await closed;
    },
  };
}
