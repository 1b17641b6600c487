// The one place that runs the system as OS processes. `npm run start:cluster`, the
// benchmark, the chaos suite, the embedded benchmark and the cluster tests all describe
// the processes they want (an entry of the build, its arguments and settings, the URL it
// answers /readyz on) and leave the rest here: spawning each from its compiled bundle or
// through tsx, waiting until it is ready (with its last words if it dies first), stopping
// it (SIGTERM, then SIGKILL after a grace period), killing it with SIGKILL, starting it
// again, and, when asked, supervising: a process that exits by itself is started again
// after a backoff, as a process manager would.
//
// A run on shared servers (tests, benchmark, chaos) has names of its own (`Run`): its
// databases `<name>_<db>`, exchange `<name>.events` and queues `<name>.<service>`.
// `runEnv` gives every process those names, and shutting down drops them unless kept.
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import amqp from 'amqplib';
import { dropDatabase, ensureDatabase, openPostgres, parkedQueueOf, type Db } from '@converge/platform';
import { deadLetterExchangeOf } from '@converge/platform/rabbitmq';
import { builtEntry, entries, type Entry } from '../scripts/build.ts';
import { serviceNames } from './system.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export type ProcessSpec = {
  /** Unique within a launcher: `order`, `order#2`, `gateway`. */
  name: string;
  /** What runs: an entry of the build (scripts/build.ts), e.g. `service` with args `['order']`. */
  entry: Entry;
  args?: readonly string[];
  env?: Record<string, string>;
  /** Where the process answers GET /readyz once it is ready. */
  url: string;
};

export type LaunchOptions = {
  processes: readonly ProcessSpec[];
  /** `bundle`: dist/<entry>.js, built first if a source changed; `tsx`: the TypeScript source. */
  runner: 'bundle' | 'tsx';
  /** Settings every process gets, over this process's environment and under its own. */
  env?: Record<string, string>;
  /** The run's databases, exchange and queues, dropped by shutdown() unless asked to keep them. */
  run?: Run;
  /** Start a process that exited by itself again, after a backoff (250 ms doubling, at most 5 s). */
  supervise?: boolean;
  /**
   * Where the processes' stderr goes, a chunk at a time with the name in front; passed through unchanged without
   * it.
   */
  log?: (line: string) => void;
  stdout?: 'inherit' | 'ignore';
  /** Every process writes a V8 CPU profile into this directory when it exits. */
  cpuProfileDir?: string;
  readyTimeoutMs?: number;
  /** How long a SIGTERM is given before SIGKILL. */
  stopGraceMs?: number;
};

export type Launcher = {
  readonly names: readonly string[];
  /** Starts every process and resolves once each is ready; if one fails, the others are stopped too. */
  startAll(): Promise<void>;
  /** Starts one (settings in `env` for this start only) and resolves once it is ready. */
  start(name: string, env?: Record<string, string>): Promise<void>;
  /** SIGTERM, SIGKILL after the grace period; resolves true if it had to be killed. */
  stop(name: string): Promise<boolean>;
  /** kill -9: no chance to finish anything, as a crash. */
  kill(name: string): Promise<void>;
  restart(name: string, options?: { env?: Record<string, string>; kill?: boolean }): Promise<void>;
  /** The pid of each process's latest child, alive or not. */
  pids(): Record<string, number | undefined>;
  /**
   * Stops every process (in parallel) and drops the run's data unless `keepData`; names those that had to be
   * killed.
   */
  shutdown(options?: { keepData?: boolean }): Promise<{ forced: string[] }>;
};

type Member = {
  spec: ProcessSpec;
  child?: ChildProcess;
  /** Settings of the latest start(), which a supervised restart repeats. */
  extra: Record<string, string>;
  restarts: number;
  restartTimer?: NodeJS.Timeout;
  /** The tail of stderr, for the error of a process that dies while starting. */
  stderr: string;
};

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const alive = (child: ChildProcess | undefined): boolean =>
  child !== undefined && child.exitCode === null && child.signalCode === null;
const exited = (child: ChildProcess): Promise<void> =>
  alive(child) ? new Promise((resolve) => child.once('exit', () => resolve())) : Promise.resolve();

export function launcher(options: LaunchOptions): Launcher {
  const members = new Map<string, Member>(
    options.processes.map((spec) => [spec.name, { spec, extra: {}, restarts: 0, stderr: '' }]),
  );
  const readyTimeoutMs = options.readyTimeoutMs ?? 60_000;
  const graceMs = options.stopGraceMs ?? 10_000;
  const shared = { ...(options.run === undefined ? {} : runEnv(options.run)), ...options.env };
  const profile = options.cpuProfileDir === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${options.cpuProfileDir}`];
  /** Children stopped on purpose: their exit is not a crash to supervise. */
  const deliberate = new WeakSet<ChildProcess>();
  let closing = false;
  const note = (line: string) => (options.log === undefined ? console.error(line) : options.log(line));

  const member = (name: string): Member => {
    const found = members.get(name);
    if (found === undefined) throw new Error(`no process named ${name} (known: ${[...members.keys()].join(', ')})`);
    return found;
  };

  const program = async (entry: Entry): Promise<string[]> =>
    options.runner === 'bundle'
      ? ['--enable-source-maps', ...profile, await builtEntry(entry)]
      : [...profile, '--import', 'tsx', entries[entry]];

  const spawnMember = async (m: Member): Promise<ChildProcess> => {
    const child = spawn(process.execPath, [...(await program(m.spec.entry)), ...(m.spec.args ?? [])], {
      cwd: root,
      env: { ...process.env, ...shared, ...m.spec.env, ...m.extra },
      stdio: ['ignore', options.stdout ?? 'ignore', 'pipe'],
    });
    m.child = child;
    m.stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      const text = chunk.toString();
      m.stderr = (m.stderr + text).slice(-4000);
      if (options.log === undefined) process.stderr.write(text);
      else options.log(`[${m.spec.name}] ${text.trimEnd()}`);
    });
    child.on('exit', (code, signal) => {
      if (closing || deliberate.has(child) || options.supervise !== true) return;
      m.restarts += 1;
      const delay = Math.min(5000, 250 * 2 ** Math.min(m.restarts, 5));
      note(
        `[launcher] ${m.spec.name} (pid ${child.pid ?? '?'}) exited (${signal ?? String(code)}); ` +
          `restarting in ${delay} ms`,
      );
      m.restartTimer = setTimeout(() => {
        m.restartTimer = undefined;
        if (!closing && !alive(m.child))
          spawnMember(m).catch((error: unknown) =>
            console.error(`[launcher] ${m.spec.name} did not start again:`, error),
          );
      }, delay);
    });
    return child;
  };

  const waitReady = async (m: Member, child: ChildProcess): Promise<void> => {
    const deadline = Date.now() + readyTimeoutMs;
    while (
      !(await fetch(`${m.spec.url}/readyz`).then(
        (r) => r.ok,
        () => false,
      ))
    ) {
      if (Date.now() > deadline)
        throw new Error(`${m.spec.name} not ready after ${readyTimeoutMs / 1000} s:\n${m.stderr}`);
      // Supervised, a process that dies while starting is started again: keep waiting.
      if (options.supervise !== true && !alive(child))
        throw new Error(`${m.spec.name} exited with ${child.exitCode ?? child.signalCode ?? '?'}:\n${m.stderr}`);
      await sleep(100);
    }
  };

  const start = async (name: string, env: Record<string, string> = {}): Promise<void> => {
    const m = member(name);
    if (alive(m.child)) throw new Error(`${name} is already running (pid ${m.child?.pid ?? '?'})`);
    clearTimeout(m.restartTimer);
    m.extra = env;
    await waitReady(m, await spawnMember(m));
  };

  const stopChild = async (m: Member, signal: 'SIGTERM' | 'SIGKILL'): Promise<boolean> => {
    clearTimeout(m.restartTimer);
    const child = m.child;
    if (child === undefined || !alive(child)) return false;
    deliberate.add(child);
    const gone = exited(child);
    child.kill(signal);
    if (signal === 'SIGKILL') {
      await gone;
      return true;
    }
    const inTime = await Promise.race([gone.then(() => true), sleep(graceMs).then(() => false)]);
    if (inTime) return false;
    child.kill('SIGKILL');
    await gone;
    return true;
  };

  const stop = (name: string) => stopChild(member(name), 'SIGTERM');
  const kill = async (name: string) => {
    await stopChild(member(name), 'SIGKILL');
  };

  const shutdown = async ({ keepData = false } = {}) => {
    closing = true;
    const forced = await Promise.all(
      [...members.values()].map(async (m) => ((await stopChild(m, 'SIGTERM')) ? [m.spec.name] : [])),
    );
    if (options.run !== undefined && !keepData) await dropRun(options.run);
    return { forced: forced.flat() };
  };

  return {
    names: [...members.keys()],
    startAll: async () => {
      const started = await Promise.allSettled([...members.keys()].map((name) => start(name)));
      const failed = started.find((s): s is PromiseRejectedResult => s.status === 'rejected');
      if (failed === undefined) return;
      await Promise.all([...members.values()].map((m) => stopChild(m, 'SIGKILL')));
      throw failed.reason;
    },
    start,
    stop,
    kill,
    restart: async (name, { env, kill: hard = false } = {}) => {
      await stopChild(member(name), hard ? 'SIGKILL' : 'SIGTERM');
      await start(name, env);
    },
    pids: () => Object.fromEntries([...members.values()].map((m) => [m.spec.name, m.child?.pid])),
    shutdown,
  };
}

/**
 * A run's own names on shared PostgreSQL and RabbitMQ servers, so that nothing collides with another run or a
 * deployment.
 */
export type Run = { name: string; postgres: string; rabbitmq: string };

/** The settings (system/service.ts) that put a service process in the run's databases, exchange and queues. */
export const runEnv = (run: Run): Record<string, string> => ({
  PG_URL: run.postgres,
  DATABASE_PREFIX: `${run.name}_`,
  AMQP_URL: run.rabbitmq,
  AMQP_EXCHANGE: `${run.name}.events`,
  AMQP_QUEUE_PREFIX: `${run.name}.`,
});

/** One of the run's databases (`order`, `provider`, …), created if missing, for a checker outside the processes. */
export async function openRunDatabase(run: Run, db: string, options: { max?: number } = {}): Promise<Db> {
  return openPostgres(db, await ensureDatabase(run.postgres, `${run.name}_${db}`), options);
}

/** Drops every database, queue, parking queue and exchange the run may have made; what is missing is no error. */
export async function dropRun(run: Run): Promise<void> {
  for (const db of [...serviceNames, 'provider'])
    await dropDatabase(run.postgres, `${run.name}_${db}`).catch(() => undefined);
  const connection = await amqp.connect(run.rabbitmq);
  try {
    const channel = await connection.createChannel();
    for (const queue of serviceNames.map((service) => `${run.name}.${service}`)) {
      await channel.deleteQueue(queue).catch(() => undefined);
      await channel.deleteQueue(parkedQueueOf(queue)).catch(() => undefined);
    }
    await channel.deleteExchange(`${run.name}.events`).catch(() => undefined);
    await channel.deleteExchange(deadLetterExchangeOf(`${run.name}.events`)).catch(() => undefined);
  } finally {
    await connection.close().catch(() => undefined);
  }
}
