// The system view: how many orders are in each status. It moves with the order
// summaries' status changes, in the same transaction, so it always equals a count over
// them; a status is counted once the order itself (OrderCreated) has been seen. It is a
// view over the summaries: it folds their steps (each status before and after an event)
// into a net move per status, which its save adds to the stored counts.
import type { Sql } from '@converge/platform';
import { viewOf, type SaveTo } from '../read-model.ts';
import { orderSummary, type OrderStatus } from './order-summary.ts';

export type CountChange = { status: OrderStatus; by: 1 | -1 };

/** How the counts move when an order's status goes from `before` to `after`. */
export function countChanges(before: OrderStatus | null, after: OrderStatus | null): CountChange[] {
  if (before === after) return [];
  return [
    ...(before === null ? [] : [{ status: before, by: -1 as const }]),
    ...(after === null ? [] : [{ status: after, by: 1 as const }]),
  ];
}

/** A status's count moving by any amount: the changes of many orders added up. */
export type CountMove = { status: OrderStatus; by: number };

export function addUpCounts(changes: readonly CountMove[]): CountMove[] {
  const by = new Map<OrderStatus, number>();
  for (const change of changes) by.set(change.status, (by.get(change.status) ?? 0) + change.by);
  return [...by].filter(([, n]) => n !== 0).map(([status, n]) => ({ status, by: n }));
}

async function moveCounts(tx: Sql, changes: readonly CountMove[], { table }: SaveTo): Promise<[]> {
  const moves = changes.filter((c) => c.by !== 0);
  if (moves.length === 0) return [];
  await tx.query(
    `INSERT INTO ${table} (status, n)
     SELECT x.status, x.by FROM unnest($1::text[], $2::int[]) AS x(status, by) ORDER BY x.status
     ON CONFLICT (status) DO UPDATE SET n = ${table}.n + excluded.n`,
    [moves.map((m) => m.status), moves.map((m) => m.by)],
  );
  return [];
}

const changesOf = (step: {
  before: { status: OrderStatus | null } | undefined;
  after: { status: OrderStatus | null } | undefined;
}) => countChanges(step.before?.status ?? null, step.after?.status ?? null);

export const orderCounts = viewOf(orderSummary, {
  name: 'order-counts',
  table: 'order_counts',
  keysOf: (step) => changesOf(step).map((c) => c.status),
  evolve: (move: CountMove | undefined, step, status) => ({
    status,
    by:
      addUpCounts([...(move === undefined ? [] : [move]), ...changesOf(step)]).find((m) => m.status === status)?.by ??
      0,
  }),
  save: moveCounts,
});

export async function orderCountsByStatus(db: Sql): Promise<Record<string, number>> {
  const rows = await db.query<{ status: string; n: number }>(
    'SELECT status, n FROM order_counts WHERE n <> 0 ORDER BY status',
  );
  return Object.fromEntries(rows.map((r) => [r.status, r.n]));
}
