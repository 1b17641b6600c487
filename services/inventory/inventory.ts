// Inventory rules, pure. The state is the products and reservations a batch touches;
// `decide` turns one message into events, stock moves and the order's new reservation,
// and `evolve` applies them, so the next message of the batch sees the stock this one
// left (two orders for the last item: the first gets it). No I/O, no clock.
//   reserve: every line or none → InventoryReserved | InventoryRejected. An order seen
//     after its release (a tombstone) reserves nothing but records what it ordered.
//   release (compensation): RESERVED → RELEASED, stock back → InventoryReleased. Nothing
//     reserved yet leaves a tombstone. A command (ReleaseInventory) is answered exactly
//     once, even when there was nothing to give back, because the saga waits for it.
//   commit: RESERVED → COMMITTED, reserved → sold → InventoryCommitted; a completed
//     order without a reservation is a divergence for an operator, never papered over.
// Choreography reacts to the order and payment events, orchestration to the saga's
// commands; the rules are the same, only the messages that trigger them differ.
import type { DomainEvent, StockLine } from '@converge/contracts';
import { PermanentError, type SagaMode } from '@converge/platform';

export type Product = {
  productId: string;
  name: string;
  price: number;
  currency: string;
  stockQuantity: number;
  reserved: number;
  sold: number;
};

type Base = { orderId: string; userId: string | null; items: StockLine[] };

export type Reservation =
  | (Base & { status: 'RESERVED' })
  /** `answered`: a ReleaseInventory about it already got its (empty) InventoryReleased. */
  | (Base & { status: 'REJECTED'; reason: string; answered: boolean })
  | (Base & { status: 'RELEASED'; reason: string })
  | (Base & { status: 'COMMITTED' });

export type InventoryState = {
  products: ReadonlyMap<string, Product>;
  reservations: ReadonlyMap<string, Reservation>;
};

export type InventoryEvent = Extract<
  DomainEvent,
  { type: 'InventoryReserved' | 'InventoryRejected' | 'InventoryReleased' | 'InventoryCommitted' }
> & { subject: string };

/** Stock moves of a reservation's lifecycle, as deltas on (available, reserved, sold). */
export type Move = { productId: string; available: number; reserved: number; sold: number };

export type Decision = { events: InventoryEvent[]; moves: Move[]; reservation?: Reservation };

/** What a message asks of inventory; `answer`: a saga command, which waits for a reply. */
export type InventoryRequest =
  | {
      kind: 'reserve';
      orderId: string;
      userId: string;
      items: readonly StockLine[];
      totalAmount: number;
      currency: string;
    }
  | { kind: 'release'; orderId: string; reason: string; answer: boolean }
  | { kind: 'commit'; orderId: string };

const reserveOf = ({
  orderId,
  userId,
  items,
  totalAmount,
  currency,
}: Omit<InventoryRequest & { kind: 'reserve' }, 'kind'>): InventoryRequest => ({
  kind: 'reserve',
  orderId,
  userId,
  items,
  totalAmount,
  currency,
});

export function requestOf(message: DomainEvent, mode: SagaMode): InventoryRequest | undefined {
  const choreography = mode === 'choreography';
  switch (message.type) {
    case 'OrderCreated':
      return choreography ? reserveOf(message.data) : undefined;
    case 'PaymentFailed':
      return choreography
        ? {
            kind: 'release',
            orderId: message.data.orderId,
            reason: `payment failed: ${message.data.reason}`,
            answer: false,
          }
        : undefined;
    case 'OrderCancelled':
      return choreography
        ? { kind: 'release', orderId: message.data.orderId, reason: 'order cancelled', answer: false }
        : undefined;
    case 'OrderCompleted':
      return choreography ? { kind: 'commit', orderId: message.data.orderId } : undefined;
    case 'ReserveInventory':
      return reserveOf(message.data);
    case 'ReleaseInventory':
      return { kind: 'release', orderId: message.data.orderId, reason: message.data.reason, answer: true };
    case 'CommitInventory':
      return { kind: 'commit', orderId: message.data.orderId };
    default:
      return undefined;
  }
}

const nothing = (): Decision => ({ events: [], moves: [] });

export function decide(state: InventoryState, message: DomainEvent, mode: SagaMode): Decision {
  const request = requestOf(message, mode);
  if (request === undefined) return nothing();
  switch (request.kind) {
    case 'reserve':
      return reserve(state, request);
    case 'release':
      return release(state.reservations.get(request.orderId), request);
    case 'commit':
      return commit(state.reservations.get(request.orderId), request.orderId);
    default:
      return assertNever(request);
  }
}

function reserve(state: InventoryState, request: Extract<InventoryRequest, { kind: 'reserve' }>): Decision {
  const { orderId, userId, items, totalAmount, currency } = request;
  const existing = state.reservations.get(orderId);
  if (existing !== undefined) {
    // Released before we saw the order (a tombstone): keep what was ordered for the
    // record, move no stock. Anything else means this order was handled already.
    const tombstone = existing.status === 'RELEASED' && existing.items.length === 0;
    return tombstone ? { ...nothing(), reservation: { ...existing, items: combineLines(items) } } : nothing();
  }
  const decision = decideReservation(state.products, items);
  if (!decision.ok) {
    return {
      events: [
        {
          type: 'InventoryRejected',
          subject: orderId,
          data: { orderId, userId, reason: decision.reason, shortages: decision.shortages },
        },
      ],
      moves: [],
      reservation: { status: 'REJECTED', orderId, userId, items: [], reason: decision.reason, answered: false },
    };
  }
  return {
    events: [
      {
        type: 'InventoryReserved',
        subject: orderId,
        data: { orderId, userId, items: decision.lines, totalAmount, currency },
      },
    ],
    moves: reserveMoves(decision.lines),
    reservation: { status: 'RESERVED', orderId, userId, items: decision.lines },
  };
}

function release(
  reservation: Reservation | undefined,
  { orderId, reason, answer }: Extract<InventoryRequest, { kind: 'release' }>,
): Decision {
  const released = (items: StockLine[]): InventoryEvent[] => [
    { type: 'InventoryReleased', subject: orderId, data: { orderId, items, reason } },
  ];
  if (reservation === undefined) {
    // The order is not here yet: a tombstone, so that it reserves nothing when it comes.
    return {
      events: answer ? released([]) : [],
      moves: [],
      reservation: { status: 'RELEASED', orderId, userId: null, items: [], reason },
    };
  }
  switch (reservation.status) {
    case 'RESERVED':
      return {
        events: released(reservation.items),
        moves: releaseMoves(reservation.items),
        reservation: { ...reservation, status: 'RELEASED', reason },
      };
    case 'REJECTED':
      // Nothing was reserved: the saga still needs its answer, once.
      if (!answer || reservation.answered) return nothing();
      return { events: released([]), moves: [], reservation: { ...reservation, answered: true } };
    case 'RELEASED':
      // Answered when it was released (or tombstoned).
      return nothing();
    case 'COMMITTED':
      // Stock already sold: only a return flow could give it back; never silently. The
      // saga asking for it means the saga and the stock disagree.
      if (answer)
        throw new PermanentError(`order ${orderId}: release asked for stock already sold`, 'invariant violation');
      return nothing();
    default:
      return assertNever(reservation);
  }
}

function commit(reservation: Reservation | undefined, orderId: string): Decision {
  if (reservation?.status === 'COMMITTED') return nothing();
  if (reservation?.status !== 'RESERVED') {
    // An order can only complete after its stock was reserved and paid for; anything
    // else is a divergence an operator must see.
    throw new PermanentError(
      `order ${orderId} completed but its reservation is ${reservation?.status ?? 'missing'}`,
      'invariant violation',
    );
  }
  return {
    events: [{ type: 'InventoryCommitted', subject: orderId, data: { orderId, items: reservation.items } }],
    moves: commitMoves(reservation.items),
    reservation: { ...reservation, status: 'COMMITTED' },
  };
}

export function evolve(state: InventoryState, decision: Decision): InventoryState {
  let { products, reservations } = state;
  if (decision.moves.length > 0) {
    const moved = new Map(products);
    for (const move of decision.moves) {
      const product = moved.get(move.productId);
      if (product === undefined) throw new Error(`stock move on unknown product ${move.productId}`);
      const next = {
        ...product,
        stockQuantity: product.stockQuantity + move.available,
        reserved: product.reserved + move.reserved,
        sold: product.sold + move.sold,
      };
      // The rules never ask for this; reaching here is a bug, and failing keeps stock conserved.
      if (next.stockQuantity < 0 || next.reserved < 0 || next.sold < 0)
        throw new Error(`stock move on ${move.productId} would break conservation`);
      moved.set(move.productId, next);
    }
    products = moved;
  }
  if (decision.reservation !== undefined)
    reservations = new Map(reservations).set(decision.reservation.orderId, decision.reservation);
  return { products, reservations };
}

/** The net move per product from `before` to `after`: what a batch writes back. */
export function netMoves(before: InventoryState, after: InventoryState): Move[] {
  const moves: Move[] = [];
  for (const [productId, now] of after.products) {
    const then = before.products.get(productId);
    if (then === undefined || then === now) continue;
    moves.push({
      productId,
      available: now.stockQuantity - then.stockQuantity,
      reserved: now.reserved - then.reserved,
      sold: now.sold - then.sold,
    });
  }
  return moves;
}

/** The reservations `after` changed, each with the status it had (undefined: new). */
export function changedReservations(
  before: InventoryState,
  after: InventoryState,
): { from: Reservation['status'] | undefined; to: Reservation }[] {
  const changed: { from: Reservation['status'] | undefined; to: Reservation }[] = [];
  for (const [orderId, to] of after.reservations) {
    const from = before.reservations.get(orderId);
    if (from !== to) changed.push({ from: from?.status, to });
  }
  return changed;
}

export type Shortage = { productId: string; requested: number; available: number };

export type ReserveDecision = { ok: true; lines: StockLine[] } | { ok: false; reason: string; shortages: Shortage[] };

/** Sums lines per product and sorts them by product id. */
export function combineLines(lines: readonly StockLine[]): StockLine[] {
  const totals = new Map<string, number>();
  for (const line of lines) totals.set(line.productId, (totals.get(line.productId) ?? 0) + line.quantity);
  return [...totals]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([productId, quantity]) => ({ productId, quantity }));
}

export function decideReservation(
  products: ReadonlyMap<string, Product>,
  lines: readonly StockLine[],
): ReserveDecision {
  const combined = combineLines(lines);
  const shortages: Shortage[] = [];
  for (const line of combined) {
    const available = products.get(line.productId)?.stockQuantity ?? 0;
    if (available < line.quantity) shortages.push({ productId: line.productId, requested: line.quantity, available });
  }
  if (shortages.length === 0) return { ok: true, lines: combined };
  const unknown = shortages.filter((s) => !products.has(s.productId));
  const short = (s: Shortage) => `${s.productId} (requested ${s.requested}, available ${s.available})`;
  const reason =
    unknown.length > 0
      ? `unknown product ${unknown.map((s) => s.productId).join(', ')}`
      : `insufficient stock for ${shortages.map(short).join(', ')}`;
  return { ok: false, reason, shortages };
}

const reserveMoves = (lines: readonly StockLine[]): Move[] =>
  lines.map((l) => ({ productId: l.productId, available: -l.quantity, reserved: l.quantity, sold: 0 }));
const releaseMoves = (lines: readonly StockLine[]): Move[] =>
  lines.map((l) => ({ productId: l.productId, available: l.quantity, reserved: -l.quantity, sold: 0 }));
const commitMoves = (lines: readonly StockLine[]): Move[] =>
  lines.map((l) => ({ productId: l.productId, available: 0, reserved: -l.quantity, sold: l.quantity }));

export function assertNever(value: never): never {
  throw new Error(`unexpected ${JSON.stringify(value)}`);
}
