// The event catalogue: every event type, the service that publishes it, its payload
// schema and version. Consumers validate payloads against these schemas at their edge;
// the AsyncAPI document is generated from the same table.
import Type, { type Static, type TSchema } from 'typebox';
import { Uuid } from './envelope.ts';

export const Money = Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER, description: 'integer minor units' });
export const Currency = Type.String({ pattern: '^[A-Z]{3}$' });
export const UserId = Type.String({ minLength: 1, maxLength: 100, pattern: '^[A-Za-z0-9._@:-]+$' });
export const Quantity = Type.Integer({ minimum: 1, maximum: 1_000_000 });

export const OrderLine = Type.Object(
  { productId: Uuid, quantity: Quantity, unitPrice: Money },
  { additionalProperties: false },
);
export type OrderLine = Static<typeof OrderLine>;

const StockLine = Type.Object({ productId: Uuid, quantity: Quantity }, { additionalProperties: false });
export type StockLine = Static<typeof StockLine>;

const Shortage = Type.Object(
  { productId: Uuid, requested: Quantity, available: Type.Integer({ minimum: 0 }) },
  { additionalProperties: false },
);

const strict = { additionalProperties: false } as const;

export const OrderCreated = Type.Object(
  {
    orderId: Uuid,
    userId: UserId,
    items: Type.Array(OrderLine, { minItems: 1, maxItems: 100 }),
    totalAmount: Money,
    currency: Currency,
    createdAt: Type.String({ format: 'date-time' }),
  },
  strict,
);
export const OrderCompleted = Type.Object(
  { orderId: Uuid, userId: UserId, totalAmount: Money, currency: Currency },
  strict,
);
export const OrderFailed = Type.Object(
  { orderId: Uuid, userId: UserId, reason: Type.String({ maxLength: 500 }) },
  strict,
);
export const OrderCancelled = Type.Object(
  { orderId: Uuid, userId: UserId, reason: Type.String({ maxLength: 500 }) },
  strict,
);

export const InventoryReserved = Type.Object(
  {
    orderId: Uuid,
    userId: UserId,
    items: Type.Array(StockLine, { minItems: 1 }),
    totalAmount: Money,
    currency: Currency,
  },
  strict,
);
export const InventoryRejected = Type.Object(
  { orderId: Uuid, userId: UserId, reason: Type.String({ maxLength: 500 }), shortages: Type.Array(Shortage) },
  strict,
);
export const InventoryReleased = Type.Object(
  { orderId: Uuid, items: Type.Array(StockLine), reason: Type.String({ maxLength: 500 }) },
  strict,
);
export const InventoryCommitted = Type.Object({ orderId: Uuid, items: Type.Array(StockLine) }, strict);
export const ProductAdded = Type.Object(
  {
    productId: Uuid,
    name: Type.String({ minLength: 1, maxLength: 200 }),
    price: Money,
    currency: Currency,
    stockQuantity: Type.Integer({ minimum: 0 }),
  },
  strict,
);
export const StockAdjusted = Type.Object(
  {
    productId: Uuid,
    delta: Type.Integer(),
    reason: Type.String({ maxLength: 500 }),
    stockQuantity: Type.Integer({ minimum: 0 }),
    reserved: Type.Integer({ minimum: 0 }),
    sold: Type.Integer({ minimum: 0 }),
  },
  strict,
);

export const PaymentProcessed = Type.Object(
  { orderId: Uuid, paymentId: Uuid, userId: UserId, amount: Money, currency: Currency },
  strict,
);
export const PaymentFailed = Type.Object(
  { orderId: Uuid, paymentId: Uuid, userId: UserId, amount: Money, reason: Type.String({ maxLength: 500 }) },
  strict,
);
export const PaymentRefunded = Type.Object(
  { orderId: Uuid, paymentId: Uuid, userId: UserId, amount: Money, currency: Currency },
  strict,
);

// Commands of the orchestrated saga (SAGA_MODE=orchestration): the orchestrator tells a
// service to do one step; the service's reply is one of its ordinary events. Every
// command is idempotent at its target, so a retry after a missed deadline is harmless.
const Reason = Type.String({ maxLength: 500 });
export const ReserveInventory = Type.Object(
  {
    orderId: Uuid,
    userId: UserId,
    items: Type.Array(StockLine, { minItems: 1, maxItems: 100 }),
    totalAmount: Money,
    currency: Currency,
  },
  strict,
);
export const ReleaseInventory = Type.Object({ orderId: Uuid, reason: Reason }, strict);
export const CommitInventory = Type.Object({ orderId: Uuid }, strict);
export const ProcessPayment = Type.Object({ orderId: Uuid, userId: UserId, amount: Money, currency: Currency }, strict);
export const RefundPayment = Type.Object(
  { orderId: Uuid, userId: UserId, amount: Money, currency: Currency, reason: Reason },
  strict,
);
export const CompleteOrder = Type.Object({ orderId: Uuid }, strict);
export const FailOrder = Type.Object({ orderId: Uuid, reason: Reason }, strict);

export const catalogue = {
  OrderCreated: { source: 'order', version: 1, schema: OrderCreated, summary: 'An order was accepted and is PENDING.' },
  OrderCompleted: {
    source: 'order',
    version: 1,
    schema: OrderCompleted,
    summary: 'Stock reserved and payment taken; final.',
  },
  OrderFailed: { source: 'order', version: 1, schema: OrderFailed, summary: 'Stock or payment was refused; final.' },
  OrderCancelled: {
    source: 'order',
    version: 1,
    schema: OrderCancelled,
    summary: 'Cancelled by the user while PENDING; final.',
  },
  InventoryReserved: {
    source: 'inventory',
    version: 1,
    schema: InventoryReserved,
    summary: 'Every line of the order is reserved.',
  },
  InventoryRejected: {
    source: 'inventory',
    version: 1,
    schema: InventoryRejected,
    summary: 'At least one line could not be reserved; nothing was.',
  },
  InventoryReleased: {
    source: 'inventory',
    version: 1,
    schema: InventoryReleased,
    summary: 'A reservation was given back (compensation).',
  },
  InventoryCommitted: {
    source: 'inventory',
    version: 1,
    schema: InventoryCommitted,
    summary: 'Reserved stock became sold.',
  },
  ProductAdded: { source: 'inventory', version: 1, schema: ProductAdded, summary: 'A product entered the catalogue.' },
  StockAdjusted: {
    source: 'inventory',
    version: 1,
    schema: StockAdjusted,
    summary: 'Available stock changed by an operator (restock).',
  },
  PaymentProcessed: {
    source: 'payment',
    version: 1,
    schema: PaymentProcessed,
    summary: 'The order total was captured.',
  },
  PaymentFailed: {
    source: 'payment',
    version: 1,
    schema: PaymentFailed,
    summary: 'The charge was declined or could not be made.',
  },
  PaymentRefunded: {
    source: 'payment',
    version: 1,
    schema: PaymentRefunded,
    summary: 'A captured payment was given back.',
  },
  ReserveInventory: {
    source: 'orchestrator',
    version: 1,
    schema: ReserveInventory,
    target: 'inventory',
    summary: 'Command: reserve every line or none. Replies InventoryReserved or InventoryRejected.',
  },
  ReleaseInventory: {
    source: 'orchestrator',
    version: 1,
    schema: ReleaseInventory,
    target: 'inventory',
    summary: 'Command (compensation): give the reservation back, or refuse a later one. Replies InventoryReleased.',
  },
  CommitInventory: {
    source: 'orchestrator',
    version: 1,
    schema: CommitInventory,
    target: 'inventory',
    summary: 'Command: reserved stock becomes sold. Replies InventoryCommitted.',
  },
  ProcessPayment: {
    source: 'orchestrator',
    version: 1,
    schema: ProcessPayment,
    target: 'payment',
    summary: 'Command: charge the order total. Replies PaymentProcessed or PaymentFailed.',
  },
  RefundPayment: {
    source: 'orchestrator',
    version: 1,
    schema: RefundPayment,
    target: 'payment',
    summary:
      'Command (compensation): refund a captured payment, or refuse a ' +
      'later charge. Replies PaymentRefunded or PaymentFailed.',
  },
  CompleteOrder: {
    source: 'orchestrator',
    version: 1,
    schema: CompleteOrder,
    target: 'order',
    summary: 'Command: the order is paid for. Replies OrderCompleted, or OrderCancelled when the user cancelled first.',
  },
  FailOrder: {
    source: 'orchestrator',
    version: 1,
    schema: FailOrder,
    target: 'order',
    summary:
      'Command (compensation): the order cannot be fulfilled. Replies ' +
      'OrderFailed, or OrderCancelled when the user cancelled first.',
  },
} as const satisfies Record<
  string,
  { source: string; version: number; schema: TSchema; summary: string; target?: string }
>;

export type Catalogue = typeof catalogue;
export type EventType = keyof Catalogue;
export type EventData<T extends EventType> = Static<Catalogue[T]['schema']>;
/** A domain event before it is wrapped in an envelope: what `decide` functions return. */
export type DomainEvent = { [T in EventType]: { type: T; data: EventData<T> } }[EventType];

export const eventTypes = Object.keys(catalogue) as EventType[];

export function eventTypesOf(source: string): EventType[] {
  return eventTypes.filter((type) => catalogue[type].source === source);
}

export type CommandType = { [T in EventType]: Catalogue[T] extends { target: string } ? T : never }[EventType];

export function isCommandType(type: string): type is CommandType {
  return isEventType(type) && 'target' in catalogue[type];
}

export function isEventType(type: string): type is EventType {
  return Object.hasOwn(catalogue, type);
}
