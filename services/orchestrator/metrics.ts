// Saga figures for /metrics, read from the database at scrape time so every instance
// reports the same truth and a restart loses nothing: sagas per state, sagas stuck
// (not final, unchanged for longer than the threshold: alert on > 0), and how long each
// step took, over the sagas that changed in the last minute.
import { literalsOf, SagaStatus } from '@converge/contracts';
import type { Db, SagaStatus as SagaState } from '@converge/platform';
import { sagaCounts } from './store.ts';

// Typed as the platform's saga states: a status the schema has and the sagas cannot reach fails to compile.
const statuses: readonly SagaState[] = literalsOf(SagaStatus);
const quantiles = [0.5, 0.9, 0.99];

export function sagaMetrics(db: Db, stuckBefore: () => Date): () => Promise<string[]> {
  return async () => {
    const counts = await sagaCounts(db, stuckBefore());
    const durations = await db.query<{ step: string; n: number; q: number[] | null }>(
      `SELECT step->>'name' AS step, count(*)::int AS n,
              percentile_cont($1::float8[]) WITHIN GROUP (
                ORDER BY extract(epoch FROM (step->>'endedAt')::timestamptz - (step->>'startedAt')::timestamptz)) AS q
         FROM sagas, jsonb_array_elements(state->'steps') AS step
        WHERE updated_at > now() - interval '1 minute' AND step ? 'endedAt' AND step ? 'startedAt'
        GROUP BY 1`,
      [quantiles],
    );
    return [
      '# HELP converge_sagas Sagas by state.',
      '# TYPE converge_sagas gauge',
      ...statuses.map((s) => `converge_sagas{state="${s}"} ${counts.byStatus[s] ?? 0}`),
      '# HELP converge_sagas_stuck Sagas not final and unchanged for longer than the stuck threshold (alert on > 0).',
      '# TYPE converge_sagas_stuck gauge',
      `converge_sagas_stuck ${counts.stuck}`,
      "# HELP converge_saga_step_duration_seconds Time from a step's first " +
        'command to its reply, over sagas changed in the last minute.',
      '# TYPE converge_saga_step_duration_seconds summary',
      ...durations.flatMap((d) => [
        ...quantiles.map(
          (q, i) =>
            `converge_saga_step_duration_seconds{step="${d.step}",quantile="${q}"} ${(d.q?.[i] ?? 0).toFixed(6)}`,
        ),
        `converge_saga_step_duration_seconds_count{step="${d.step}"} ${d.n}`,
      ]),
    ];
  };
}
