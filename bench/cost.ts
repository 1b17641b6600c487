// The cost model of a benchmark step: what the machine spent per completed order.
// CPU comes from /proc: each service process (and any child it spawns), PostgreSQL
// (the postmaster, its background processes and the backends of this run's databases;
// backends of other databases on a shared server are left out), RabbitMQ (beam.smp
// and its children), Redis, and the whole machine from /proc/stat. The load generator
// (this process: load, reads, sampling, scraping) is measured apart and subtracted.
// /proc is scanned each second, so a process that starts or ends during the step
// counts too (all but its last second, if it ends). The database and broker figures are
// the services' own counters (converge_db_*, converge_bus_*), scraped from /metrics at
// the start and the end of the step.
import fs from 'node:fs';
import type { Cluster, ClusterService } from './cluster.ts';
import { parseSamples } from './prometheus.ts';

/** Per service, what its counters moved by during the step. */
export const counterNames = {
  statements: 'converge_db_statements_total',
  transactions: 'converge_db_transactions_total',
  publishes: 'converge_bus_publishes_total',
  publishedEvents: 'converge_bus_published_events_total',
  publishedBytes: 'converge_bus_published_bytes_total',
  deliveries: 'converge_bus_deliveries_total',
  deliveredEvents: 'converge_bus_delivered_events_total',
  deliveredBytes: 'converge_bus_delivered_bytes_total',
} as const;
export type Counter = keyof typeof counterNames;

export type CostModel = {
  windowSec: number;
  /** Orders of the step that reached COMPLETED: the denominator of every per-order figure. */
  completed: number;
  /** CPU in ms over the window, by process group (services by name, postgres, rabbitmq, redis). */
  cpuMs: Record<string, number>;
  /** Non-idle CPU of the whole machine in ms (all cores; /proc/stat minus idle and iowait), steal included. */
  machineMs?: number;
  stealMs?: number;
  /**
   * Context switches of the whole machine (/proc/stat ctxt), the load generator's too: each
   * message between two processes wakes one, so this counts the round trips the CPU pays for.
   */
  contextSwitches?: number;
  /** This process: the load generator, the reads, the sampling and scraping. */
  generatorMs: number;
  /** Per service, what its counters moved by; a counter the service does not expose is absent. */
  counters: Record<string, Partial<Record<Counter, number>>>;
};

const msPerTick = 1000 / 100; // USER_HZ

type ProcStat = { pid: number; comm: string; ppid: number; ticks: number; rssPages: number; key: string };

function readProcs(): ProcStat[] {
  const procs: ProcStat[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const close = stat.lastIndexOf(')');
      const fields = stat.slice(close + 2).split(' ');
      procs.push({
        pid: Number(entry),
        comm: stat.slice(stat.indexOf('(') + 1, close),
        ppid: Number(fields[1]),
        ticks: Number(fields[11]) + Number(fields[12]),
        rssPages: Number(fields[21]),
        key: `${entry}:${fields[19] ?? ''}`,
      });
    } catch {
      // The process ended while we looked.
    }
  }
  return procs;
}

function machineStat(): { busy: number; steal: number; switches: number } | undefined {
  try {
    const lines = fs.readFileSync('/proc/stat', 'utf8').split('\n');
    const switches = Number(lines.find((line) => line.startsWith('ctxt '))?.split(' ')[1] ?? Number.NaN);
    // user nice system idle iowait irq softirq steal (guest time is already in user and nice)
    const fields = (lines[0] ?? '').trim().split(/\s+/).slice(1, 9).map(Number);
    const total = fields.reduce((a, b) => a + b, 0);
    return { busy: total - (fields[3] ?? 0) - (fields[4] ?? 0), steal: fields[7] ?? 0, switches };
  } catch {
    return undefined;
  }
}

/** Which group a process belongs to: a service (or its child), a server, or none. */
function classify(procs: ProcStat[], services: Map<number, string>, foreignBackends: Set<number>): Map<string, string> {
  const byPid = new Map(procs.map((p) => [p.pid, p]));
  const groupOf = (p: ProcStat): string | undefined => {
    for (
      let at: ProcStat | undefined = p, depth = 0;
      at !== undefined && depth < 20;
      at = byPid.get(at.ppid), depth++
    ) {
      const service = services.get(at.pid);
      if (service !== undefined) return service;
      if (at.comm === 'beam.smp') return 'rabbitmq';
      if (at.comm === 'redis-server') return 'redis';
    }
    if (p.comm === 'postgres' && !foreignBackends.has(p.pid)) return 'postgres';
    return undefined;
  };
  const groups = new Map<string, string>();
  for (const p of procs) {
    const group = groupOf(p);
    if (group !== undefined) groups.set(p.key, group);
  }
  return groups;
}

async function scrapeCounters(cluster: Cluster): Promise<Record<string, Partial<Record<Counter, number>>>> {
  const scraped = await Promise.all(
    cluster.services.map(async (service) => {
      const response = await fetch(`${cluster.urls[service]}/metrics`, { headers: await cluster.auth() });
      if (!response.ok) throw new Error(`${service} /metrics answered ${response.status}`);
      const samples = parseSamples(await response.text());
      return [
        service,
        Object.fromEntries(
          Object.entries(counterNames).flatMap(([key, name]) => {
            const value = samples.get(name);
            return value === undefined ? [] : [[key, value]];
          }),
        ),
      ] as const;
    }),
  );
  return Object.fromEntries(scraped);
}

/** Backends of the PostgreSQL server connected to databases that are not this run's. */
async function foreignBackends(cluster: Cluster): Promise<Set<number>> {
  const rows = await cluster.dbs.order
    .query<{ pid: number }>(
      'SELECT pid FROM pg_stat_activity WHERE datname IS NOT NULL AND left(datname, length($1)) <> $1',
      [`${cluster.name}_`],
    )
    .catch(() => []);
  return new Set(rows.map((r) => r.pid));
}

export type CostMeter = {
  /** Scans /proc again (once a second during the step): processes born or ended in between count. */
  sample(): Promise<void>;
  /** Peak resident memory in MB per group so far (PostgreSQL: summed over its processes). */
  peakRssMb(): Record<string, number>;
  finish(completed: number): Promise<CostModel>;
};

export async function startCostMeter(cluster: Cluster): Promise<CostMeter> {
  const services = new Map<number, string>();
  for (const [service, pid] of Object.entries(cluster.pids()) as [ClusterService, number | undefined][])
    if (pid !== undefined) services.set(pid, service);
  const base = new Map<string, number>();
  const last = new Map<string, { group: string; ticks: number }>();
  const peak: Record<string, number> = {};
  let foreign = await foreignBackends(cluster);
  const counters = await scrapeCounters(cluster);
  const scan = (first: boolean) => {
    const procs = readProcs();
    const groups = classify(procs, services, foreign);
    const rss: Record<string, number> = {};
    for (const p of procs) {
      const group = groups.get(p.key);
      if (group === undefined) continue;
      if (first) base.set(p.key, p.ticks);
      last.set(p.key, { group, ticks: p.ticks });
      rss[group] = (rss[group] ?? 0) + (p.rssPages * 4096) / 1024 / 1024;
    }
    for (const [group, mb] of Object.entries(rss)) peak[group] = Math.max(peak[group] ?? 0, Math.round(mb));
  };
  scan(true);
  const machine = machineStat();
  const generator = process.cpuUsage();
  const started = Date.now();
  return {
    sample: async () => {
      foreign = await foreignBackends(cluster);
      scan(false);
    },
    peakRssMb: () => ({ ...peak }),
    finish: async (completed) => {
      const generatorUsage = process.cpuUsage(generator);
      const machineEnd = machineStat();
      foreign = await foreignBackends(cluster);
      scan(false);
      const windowSec = (Date.now() - started) / 1000;
      const after = await scrapeCounters(cluster);
      const cpuMs: Record<string, number> = {};
      // A process seen first after the start was born during the step: all its CPU counts.
      for (const [key, { group, ticks }] of last)
        cpuMs[group] = (cpuMs[group] ?? 0) + (ticks - (base.get(key) ?? 0)) * msPerTick;
      const moved = Object.fromEntries(
        Object.entries(after).map(([service, values]) => [
          service,
          Object.fromEntries(
            Object.entries(values).map(([key, value]) => [key, value - (counters[service]?.[key as Counter] ?? 0)]),
          ),
        ]),
      );
      return {
        windowSec,
        completed,
        cpuMs,
        ...(machine === undefined || machineEnd === undefined
          ? {}
          : {
              machineMs: (machineEnd.busy - machine.busy) * msPerTick,
              stealMs: (machineEnd.steal - machine.steal) * msPerTick,
              ...(Number.isFinite(machineEnd.switches - machine.switches)
                ? { contextSwitches: machineEnd.switches - machine.switches }
                : {}),
            }),
        generatorMs: (generatorUsage.user + generatorUsage.system) / 1000,
        counters: moved,
      };
    },
  };
}

export type CostPerOrder = {
  completed: number;
  /** CPU ms per completed order by group, and their sum. */
  cpu: Record<string, number>;
  attributed: number;
  machine?: number;
  generator: number;
  /** The machine less the load generator: the figure the budget is about. */
  machineLessGenerator?: number;
  /**
   * Machine less generator less the groups: processes that are none of them (other users of a shared machine, the
   * kernel's own threads).
   */
  other?: number;
  steal?: number;
  /** Context switches of the whole machine per completed order. */
  contextSwitches?: number;
  /** Counters per completed order: per service, and their total over services. */
  counters: Record<string, Partial<Record<Counter, number>>>;
  totals: Partial<Record<Counter, number>>;
};

export function perOrder(cost: CostModel): CostPerOrder | undefined {
  if (cost.completed === 0) return undefined;
  const per = (value: number) => value / cost.completed;
  const cpu = Object.fromEntries(Object.entries(cost.cpuMs).map(([group, ms]) => [group, per(ms)]));
  const attributed = Object.values(cpu).reduce((a, b) => a + b, 0);
  const generator = per(cost.generatorMs);
  const machine = cost.machineMs === undefined ? undefined : per(cost.machineMs);
  const totals: Partial<Record<Counter, number>> = {};
  const counters = Object.fromEntries(
    Object.entries(cost.counters).map(([service, values]) => [
      service,
      Object.fromEntries(
        Object.entries(values).map(([key, value]) => {
          totals[key as Counter] = (totals[key as Counter] ?? 0) + per(value);
          return [key, per(value)];
        }),
      ),
    ]),
  );
  return {
    completed: cost.completed,
    cpu,
    attributed,
    generator,
    counters,
    totals,
    ...(machine === undefined
      ? {}
      : { machine, machineLessGenerator: machine - generator, other: machine - generator - attributed }),
    ...(cost.stealMs === undefined ? {} : { steal: per(cost.stealMs) }),
    ...(cost.contextSwitches === undefined ? {} : { contextSwitches: per(cost.contextSwitches) }),
  };
}
