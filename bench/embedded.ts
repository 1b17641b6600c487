// The embedded mode under load: `scripts/start.ts` in its own process (launched by
// system/launcher.ts) on a temporary data directory, the same open-loop sweep,
// placement latency and the outbox backlog (from /status) to judge whether the rate is
// sustained.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { prepareFixture, runLoad } from './load.ts';
import type { EmbeddedStep } from './report.ts';
import { existingIdentities } from '../system/identities.ts';
import { launcher } from '../system/launcher.ts';

export async function embeddedSweep(
  rates: number[],
  stepSec: number,
  log: (line: string) => void,
): Promise<EmbeddedStep[]> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'converge-bench-'));
  const base = 41_000 + Math.floor(Math.random() * 10_000);
  const urls = {
    order: `http://127.0.0.1:${base + 1}`,
    inventory: `http://127.0.0.1:${base + 2}`,
    payment: `http://127.0.0.1:${base + 3}`,
  };
  const embedded = launcher({
    runner: 'tsx',
    processes: [
      {
        name: 'embedded',
        entry: 'start',
        url: `http://127.0.0.1:${base}`,
        env: {
          DATA_DIR: dataDir,
          GATEWAY_PORT: String(base),
          ORDER_PORT: String(base + 1),
          INVENTORY_PORT: String(base + 2),
          PAYMENT_PORT: String(base + 3),
          ORCHESTRATOR_PORT: String(base + 4),
          QUERY_PORT: String(base + 5),
          LOG_LEVEL: 'error',
        },
      },
    ],
    readyTimeoutMs: 120_000,
    stopGraceMs: 3_000,
  });
  const steps: EmbeddedStep[] = [];
  try {
    await embedded.startAll();
    // The embedded system keeps its signing key in its data directory: the load signs its callers' tokens with it.
    const identities = await existingIdentities(dataDir);
    const sign = identities.token;
    const status = { authorization: `Bearer ${await sign({ subject: 'bench', roles: ['service'] })}` };
    const fixture = await prepareFixture({
      inventoryUrl: urls.inventory,
      sign,
      paymentUrl: urls.payment,
      catalogue: 'spread',
      users: 20,
    });
    const backlog = async () => {
      let total = 0;
      for (const url of Object.values(urls))
        total += ((await (await fetch(`${url}/status`, { headers: status })).json()) as { outbox: { backlog: number } })
          .outbox.backlog;
      return total;
    };
    for (const rate of rates) {
      log(`\nembedded: ${rate} orders/s for ${stepSec} s`);
      const report = await runLoad({
        orderUrl: urls.order,
        sign,
        fixture,
        rate,
        durationSec: stepSec,
        progress: (l) => process.stderr.write(`\r  ${l}   `),
      });
      process.stderr.write('\n');
      const backlogEnd = await backlog();
      const keepsUp =
        report.achievedRate >= rate * 0.97 &&
        backlogEnd <= Math.max(50, rate * 0.5) &&
        Object.keys(report.errors).length === 0;
      const sustainable = keepsUp && report.placement.p99 < 50;
      steps.push({
        rate,
        achievedRate: report.achievedRate,
        placement: report.placement,
        backlogEnd,
        keepsUp,
        sustainable,
      });
      log(
        `  achieved ${report.achievedRate.toFixed(0)}/s placement p99 ${report.placement.p99} ms ` +
          `backlog ${backlogEnd} → ${sustainable ? 'sustainable' : keepsUp ? 'keeps up' : 'falls behind'}`,
      );
      if (!keepsUp) break;
      // Let the backlog drain before the next step.
      const drainBy = Date.now() + 60_000;
      while ((await backlog()) > 0 && Date.now() < drainBy) await new Promise((r) => setTimeout(r, 500));
    }
  } finally {
    await embedded.shutdown();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
  return steps;
}
