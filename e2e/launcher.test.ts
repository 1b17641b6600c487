// The process launcher (system/launcher.ts) on what the cluster tests do not show:
// supervision starting a crashed process again, a process dying while it starts, a
// graceful stop, and what shutting down leaves of a run on the servers. One order
// service process (the compiled bundle) on PostgreSQL and RabbitMQ is enough.
import amqp from 'amqplib';
import { openPostgres } from '@converge/platform';
import { eventually, serverAvailable, servers, uniqueName } from '@converge/platform/testing';
import { afterAll, describe, expect, it } from 'vitest';
import { deploymentIdentities, identityEnv } from '../system/identities.ts';
import { dropRun, launcher, type Launcher, type Run } from '../system/launcher.ts';

const up = (await serverAvailable('postgres')) && (await serverAvailable('rabbitmq'));
const auth = await identityEnv(await deploymentIdentities(), 'order');

const newRun = (): Run => ({ name: uniqueName('launcher'), postgres: servers.postgres, rabbitmq: servers.rabbitmq });
const orderProcess = (run: Run, options: { supervise?: boolean } = {}): { cluster: Launcher; url: string } => {
  const port = 20_000 + Math.floor(Math.random() * 20_000);
  const url = `http://127.0.0.1:${port}`;
  const cluster = launcher({
    runner: 'bundle',
    run,
    env: { LOG_LEVEL: 'warn', ...auth },
    ...options,
    processes: [{ name: 'order', entry: 'service', args: ['order'], env: { PORT: String(port) }, url }],
  });
  return { cluster, url };
};

const processAlive = (pid: number | undefined) => {
  try {
    return pid !== undefined && process.kill(pid, 0);
  } catch {
    return false;
  }
};

describe.skipIf(!up)('process launcher (PostgreSQL + RabbitMQ)', () => {
  const runs: Run[] = [];
  const leftOf = async (run: Run) => {
    const admin = await openPostgres('admin', servers.postgres, { max: 1 });
    const connection = await amqp.connect(servers.rabbitmq);
    try {
      const databases = await admin.query<{ datname: string }>(
        'SELECT datname FROM pg_database WHERE datname LIKE $1 ORDER BY datname',
        [`${run.name}_%`],
      );
      // A failed check closes its channel with an error event, which is the answer here.
      const channel = await connection.createChannel();
      channel.on('error', () => undefined);
      const queue = await channel.checkQueue(`${run.name}.order`).then(
        () => true,
        () => false,
      );
      return { databases: databases.map((d) => d.datname), queue };
    } finally {
      await connection.close().catch(() => undefined);
      await admin.close();
    }
  };

  afterAll(async () => {
    for (const run of runs) await dropRun(run);
  });

  it(
    'given a supervised process killed by something else, when it dies, then it is ' +
      'started again, and shutting down stops it for good and drops the run',
    async () => {
      const run = newRun();
      runs.push(run);
      const { cluster, url } = orderProcess(run, { supervise: true });
      await cluster.startAll();
      const first = cluster.pids().order;
      process.kill(first ?? 0, 'SIGKILL');
      const second = await eventually(
        async () => {
          const pid = cluster.pids().order;
          if (pid === first || !processAlive(pid)) return undefined;
          return (await fetch(`${url}/readyz`).then(
            (r) => r.ok,
            () => false,
          ))
            ? pid
            : undefined;
        },
        30_000,
        'the killed process started again and ready',
      );
      expect(second).not.toBe(first);
      expect(await leftOf(run)).toEqual({ databases: [`${run.name}_order`], queue: true });

      const { forced } = await cluster.shutdown();
      expect(forced).toEqual([]);
      expect(processAlive(second)).toBe(false);
      await new Promise((r) => setTimeout(r, 1_000));
      expect(cluster.pids().order).toBe(second);
      expect(await leftOf(run)).toEqual({ databases: [], queue: false });
    },
  );

  it(
    'given a process that exits while it starts, when it is started, ' + 'then the start fails with its last words',
    async () => {
      const run = newRun();
      runs.push(run);
      const { cluster } = orderProcess(run);
      await expect(cluster.start('order', { PORT: 'not-a-port' })).rejects.toThrow(/order exited with 2:[\s\S]*PORT/);
      await cluster.shutdown();
    },
  );

  it(
    'given a running process, when it is restarted gently and the run shut down keeping ' +
      'its data, then it stopped in time and the databases and queue stay',
    async () => {
      const run = newRun();
      runs.push(run);
      const { cluster } = orderProcess(run);
      await cluster.startAll();
      const first = cluster.pids().order;
      await cluster.restart('order');
      expect(processAlive(first)).toBe(false);
      expect(processAlive(cluster.pids().order)).toBe(true);
      expect(await cluster.stop('order')).toBe(false);
      await cluster.shutdown({ keepData: true });
      expect(await leftOf(run)).toEqual({ databases: [`${run.name}_order`], queue: true });
    },
  );
});
