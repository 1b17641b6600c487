// How inventory reacts to other services. Choreography (events):
//   OrderCreated       → reserve every line or none → InventoryReserved | InventoryRejected
//   PaymentFailed      → release the reservation (compensation) → InventoryReleased
//   OrderCancelled     → release the reservation → InventoryReleased
//   OrderCompleted     → reserved stock becomes sold → InventoryCommitted
// Orchestration (the saga's commands, the same three rules):
//   ReserveInventory → reserve    ReleaseInventory → release    CommitInventory → commit
// A command gets one reply, even when there was nothing to release (an empty
// InventoryReleased), because the saga waits for it; a retried command finds the work
// done and says nothing more. A release that arrives before its
// order leaves a tombstone, so the late order reserves nothing; every rule is safe to
// run against any state, so a retried command does nothing twice.
import type { StockLine } from '@converge/contracts';
import type { HandlerContext, SagaMode, Sql } from '@converge/platform';
import { ConflictError, PermanentError, type Handler } from '@converge/platform';
import { combineLines, commitMoves, decideRelease, decideReservation, releaseMoves, reserveMoves } from './inventory.ts';
import { applyMoves, hasEmitted, insertReservation, lockProducts, lockReservation, recordItems, setReservationStatus } from './store.ts';

export const inventorySources = (mode: SagaMode): readonly string[] => (mode === 'choreography' ? ['order', 'payment'] : ['orchestrator']);

type ReserveRequest = { orderId: string; userId: string; items: readonly StockLine[]; totalAmount: number; currency: string };

async function reserve(tx: Sql, request: ReserveRequest, { now, emit }: HandlerContext): Promise<void> {
  const { orderId, userId, items, totalAmount, currency } = request;
  const existing = await lockReservation(tx, orderId);
  if (existing !== undefined) {
    // Released before we saw the order (a tombstone): keep what was ordered for the
    // record, move no stock.
    if (existing.status === 'RELEASED' && existing.items.length === 0) await recordItems(tx, orderId, combineLines(items));
    return;
  }
  const products = await lockProducts(tx, items.map((i) => i.productId));
  const decision = decideReservation(products, items);
  if (decision.ok) {
    await applyMoves(tx, reserveMoves(decision.lines), now);
    if (!(await insertReservation(tx, { status: 'RESERVED', orderId, items: decision.lines }, userId, now))) {
      throw new ConflictError(`reservation for ${orderId} was written concurrently`);
    }
    await emit([{ type: 'InventoryReserved', subject: orderId, data: { orderId, userId, items: decision.lines, totalAmount, currency } }]);
  } else {
    await insertReservation(tx, { status: 'REJECTED', orderId, items: [], reason: decision.reason }, userId, now);
    await emit([{ type: 'InventoryRejected', subject: orderId, data: { orderId, userId, reason: decision.reason, shortages: decision.shortages } }]);
  }
}

async function release(tx: Sql, orderId: string, reason: string, replyAlways: boolean, { now, emit }: HandlerContext): Promise<void> {
  const reservation = await lockReservation(tx, orderId);
  if (replyAlways && reservation?.status === 'COMMITTED') {
    throw new PermanentError(`order ${orderId}: release asked for stock already sold`, 'invariant violation');
  }
  const decision = decideRelease(reservation);
  if (decision.kind === 'release') {
    await lockProducts(tx, decision.lines.map((l) => l.productId));
    await applyMoves(tx, releaseMoves(decision.lines), now);
    await setReservationStatus(tx, orderId, 'RESERVED', 'RELEASED', reason, now);
    await emit([{ type: 'InventoryReleased', subject: orderId, data: { orderId, items: decision.lines, reason } }]);
    return;
  }
  if (decision.kind === 'tombstone') await insertReservation(tx, { status: 'RELEASED', orderId, items: [], reason }, null, now);
  if (!replyAlways) return;
  // Nothing was reserved: the saga still needs its answer, once. (A RELEASED
  // reservation was answered when it was released.)
  const answer = decision.kind === 'tombstone' || (reservation?.status === 'REJECTED' && !(await hasEmitted(tx, orderId, 'InventoryReleased')));
  if (answer) await emit([{ type: 'InventoryReleased', subject: orderId, data: { orderId, items: [], reason } }]);
}

async function commit(tx: Sql, orderId: string, { now, emit }: HandlerContext): Promise<void> {
  const reservation = await lockReservation(tx, orderId);
  if (reservation?.status === 'COMMITTED') return;
  if (reservation?.status !== 'RESERVED') {
    // An order can only complete after its stock was reserved and paid for; anything
    // else is a divergence an operator must see, not something to paper over.
    throw new PermanentError(`order ${orderId} completed but its reservation is ${reservation?.status ?? 'missing'}`, 'invariant violation');
  }
  await lockProducts(tx, reservation.items.map((l) => l.productId));
  await applyMoves(tx, commitMoves(reservation.items), now);
  await setReservationStatus(tx, orderId, 'RESERVED', 'COMMITTED', null, now);
  await emit([{ type: 'InventoryCommitted', subject: orderId, data: { orderId, items: reservation.items } }]);
}

export function inventoryHandler(mode: SagaMode): Handler {
  const choreography = mode === 'choreography';
  return async (tx, message, context) => {
    switch (message.type) {
      case 'OrderCreated':
        return choreography ? reserve(tx, message.data, context) : undefined;
      case 'PaymentFailed':
        return choreography ? release(tx, message.data.orderId, `payment failed: ${message.data.reason}`, false, context) : undefined;
      case 'OrderCancelled':
        return choreography ? release(tx, message.data.orderId, 'order cancelled', false, context) : undefined;
      case 'OrderCompleted':
        return choreography ? commit(tx, message.data.orderId, context) : undefined;
      case 'ReserveInventory':
        return reserve(tx, message.data, context);
      case 'ReleaseInventory':
        return release(tx, message.data.orderId, message.data.reason, true, context);
      case 'CommitInventory':
        return commit(tx, message.data.orderId, context);
      default:
        return undefined;
    }
  };
}
