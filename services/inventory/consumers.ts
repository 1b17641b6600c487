// How inventory reacts to other services (choreography):
//   OrderCreated       → reserve every line or none → InventoryReserved | InventoryRejected
//   PaymentFailed      → release the reservation (compensation) → InventoryReleased
//   OrderCancelled     → release the reservation → InventoryReleased
//   OrderCompleted     → reserved stock becomes sold → InventoryCommitted
// A release that arrives before its order leaves a tombstone, so the late order
// reserves nothing; every handler is safe to run against any state.
import type { Handler } from '@converge/platform';
import { ConflictError, PermanentError } from '@converge/platform';
import { combineLines, commitMoves, decideRelease, decideReservation, releaseMoves, reserveMoves } from './inventory.ts';
import { applyMoves, insertReservation, lockProducts, lockReservation, recordItems, setReservationStatus } from './store.ts';

export const inventorySources = ['order', 'payment'] as const;

export const handleInventoryMessage: Handler = async (tx, message, { now, emit }) => {
  switch (message.type) {
    case 'OrderCreated': {
      const { orderId, userId, items, totalAmount, currency } = message.data;
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
      return;
    }
    case 'PaymentFailed':
    case 'OrderCancelled': {
      const { orderId } = message.data;
      const reason = message.type === 'PaymentFailed' ? `payment failed: ${message.data.reason}` : 'order cancelled';
      const decision = decideRelease(await lockReservation(tx, orderId));
      if (decision.kind === 'tombstone') {
        await insertReservation(tx, { status: 'RELEASED', orderId, items: [], reason }, null, now);
      } else if (decision.kind === 'release') {
        await lockProducts(tx, decision.lines.map((l) => l.productId));
        await applyMoves(tx, releaseMoves(decision.lines), now);
        await setReservationStatus(tx, orderId, 'RESERVED', 'RELEASED', reason, now);
        await emit([{ type: 'InventoryReleased', subject: orderId, data: { orderId, items: decision.lines, reason } }]);
      }
      return;
    }
    case 'OrderCompleted': {
      const { orderId } = message.data;
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
      return;
    }
    default:
      return;
  }
};
