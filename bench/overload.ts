// Overload: three times the rate the cluster sustains, offered for 30 s straight at the
// order service, by a client that does not retry a refusal. What must hold: the
// placements that are accepted stay fast (admission control refuses the excess before
// queues grow without bound), every refusal is a 503 or 429 that says when to come back
// (Retry-After), no acknowledged order is lost (each is in the order service, final,
// and the invariants hold once the system is quiet), and normal service returns within
// seconds of the overload ending.
import { checkInvariants, waitForQuiet } from '../system/invariants.ts';
import type { Cluster } from './cluster.ts';
import { runLoad, type Fixture } from './load.ts';

export type OverloadResult = {
  sustainableRate: number;
  offeredRate: number;
  durationSec: number;
  scheduled: number;
  accepted: number;
  acceptedP99Ms: number;
  shed: { unavailable: number; limited: number; withRetryAfter: number };
  /** Requests that were neither accepted nor refused with 503/429 (errors, timeouts). */
  otherErrors: Record<string, number>;
  /** Acknowledged orders missing, or not final, once the system was quiet. */
  lost: number;
  invariantViolations: string[];
  /**
   * From the end of the overload until the last refusal at the sustainable rate (0: none was refused); undefined:
   * still refusing at the end of the 10 s.
   */
  recoveredAfterMs: number | undefined;
  /** The sustainable rate for 10 s right after: how normal service is. */
  after: { accepted: number; scheduled: number; placementP99Ms: number; shed: number };
};

export async function overloadStep(
  cluster: Cluster,
  fixture: Fixture,
  sustainableRate: number,
  seconds: number,
  log: (line: string) => void,
): Promise<OverloadResult> {
  const offeredRate = sustainableRate * 3;
  log(`\noverload: ${offeredRate} orders/s (3 × ${sustainableRate}) for ${seconds} s, refusals not retried`);
  const load = await runLoad({
    orderUrl: cluster.urls.order,
    sign: cluster.identities.token,
    fixture,
    rate: offeredRate,
    durationSec: seconds,
    retryUnavailable: false,
    requestTimeoutMs: 10_000,
    progress: (l) => process.stderr.write(`\r  ${l}   `),
  });
  const ended = performance.now();
  process.stderr.write('\n');
  // Normal service: placements at the sustainable rate; the last one refused marks when
  // the system was back (none refused: at once).
  const after = await runLoad({
    orderUrl: cluster.urls.order,
    sign: cluster.identities.token,
    fixture,
    rate: sustainableRate,
    durationSec: 10,
    retryUnavailable: false,
    progress: (l) => process.stderr.write(`\r  after: ${l}   `),
  });
  process.stderr.write('\n');
  const lastShed = after.lastShedAt === undefined ? ended : after.lastShedAt;
  const recoveredAfterMs = lastShed > performance.now() - 1_000 ? undefined : Math.round(lastShed - ended);
  const acknowledged = [...load.acknowledged, ...after.acknowledged];
  await waitForQuiet({ dbs: cluster.dbs, queueDepth: (s) => cluster.queueDepth(s) }, 300_000).catch(() => undefined);
  const report = await checkInvariants({
    dbs: cluster.dbs,
    acknowledged,
    queueDepth: (s) => cluster.queueDepth(s),
    sagaMode: cluster.sagaMode,
  });
  const missing = report.violations.filter((v) => v.invariant === 3).length;
  const result: OverloadResult = {
    sustainableRate,
    offeredRate,
    durationSec: seconds,
    scheduled: load.scheduled,
    accepted: load.acknowledged.length,
    acceptedP99Ms: load.placement.p99,
    shed: load.shed,
    otherErrors: load.errors,
    lost: missing,
    invariantViolations: report.violations.map((v) => `${v.invariant}: ${v.message}`).slice(0, 20),
    recoveredAfterMs,
    after: {
      accepted: after.acknowledged.length,
      scheduled: after.scheduled,
      placementP99Ms: after.placement.p99,
      shed: after.shed.unavailable + after.shed.limited,
    },
  };
  log(
    `  accepted ${result.accepted} of ${result.scheduled} (p99 ${result.acceptedP99Ms} ms), shed ` +
      `${result.shed.unavailable} × 503 + ${result.shed.limited} × 429 ` +
      `(${result.shed.withRetryAfter} with Retry-After), other errors ${JSON.stringify(result.otherErrors)}, ` +
      `lost ${result.lost}, recovered after ${result.recoveredAfterMs ?? '–'} ms; ` +
      `after: ${result.after.accepted}/${result.after.scheduled} accepted, p99 ${result.after.placementP99Ms} ms`,
  );
  return result;
}
