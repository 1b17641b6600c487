// Payment's HTTP API: payments by order or user, and users' credit at the provider. A
// customer sees only their own payments and credit; adding credit is an operator's act.
import { Money, PaymentStatus, Uuid, UserId } from '@converge/contracts';
import {
  NotFoundError,
  actsFor,
  actsForAll,
  allow,
  callerOf,
  problems,
  type Db,
  type HttpApp,
} from '@converge/platform';
import Type from 'typebox';
import type { SimulatedProvider } from './provider.ts';
import { findPayments } from './store.ts';

const PaymentSchema = Type.Object({
  paymentId: Uuid,
  orderId: Uuid,
  userId: Type.String(),
  amount: Money,
  currency: Type.String(),
  status: PaymentStatus,
  reason: Type.Optional(Type.String()),
});

const Credit = Type.Object({ userId: Type.String(), credit: Money });

export function registerPaymentRoutes(app: HttpApp, db: Db, provider: SimulatedProvider, allowFaults: boolean): void {
  app.get(
    '/payments',
    {
      config: { access: allow('customer', 'operator', 'service') },
      schema: {
        tags: ['payment'],
        summary: "Payments of an order or of a user, newest first (a customer's own only)",
        querystring: Type.Object(
          {
            orderId: Type.Optional(Uuid),
            userId: Type.Optional(UserId),
            limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
          },
          { additionalProperties: false },
        ),
        response: { 200: Type.Object({ items: Type.Array(PaymentSchema) }), ...problems(400, 404) },
      },
    },
    async (request) => {
      const caller = callerOf(request);
      const { orderId, userId, limit = 100 } = request.query;
      if (userId !== undefined && !actsFor(caller, userId)) throw new NotFoundError(`no payments of ${userId}`);
      // A customer's filter always includes themself, whatever else it names.
      const own = actsForAll(caller) ? userId : caller.subject;
      return {
        items: await findPayments(
          db,
          { ...(orderId === undefined ? {} : { orderId }), ...(own === undefined ? {} : { userId: own }) },
          limit,
        ),
      };
    },
  );

  app.get(
    '/users/:id/credit',
    {
      config: { access: allow('customer', 'operator', 'service') },
      schema: {
        tags: ['payment'],
        summary: "A user's available credit",
        params: Type.Object({ id: UserId }),
        response: { 200: Credit, ...problems(400, 404) },
      },
    },
    async (request) => {
      if (!actsFor(callerOf(request), request.params.id))
        throw new NotFoundError(`no payment account for ${request.params.id}`);
      const credit = await provider.credit(request.params.id);
      if (credit === undefined) throw new NotFoundError(`no payment account for ${request.params.id}`);
      return { userId: request.params.id, credit };
    },
  );

  app.post(
    '/users/:id/credit',
    {
      config: { access: allow('operator') },
      schema: {
        tags: ['payment'],
        summary: "Adds credit to a user's account (creating it)",
        params: Type.Object({ id: UserId }),
        body: Type.Object(
          { amount: Type.Integer({ minimum: 1, maximum: 1_000_000_000_000 }) },
          { additionalProperties: false },
        ),
        response: { 200: Credit, ...problems(400, 413, 415) },
      },
    },
    async (request) => ({
      userId: request.params.id,
      credit: await provider.deposit(request.params.id, request.body.amount),
    }),
  );

  if (allowFaults) {
    app.post(
      '/admin/provider-faults',
      {
        config: { access: allow('operator') },
        schema: {
          tags: ['testing'],
          summary: 'Test-only: make the simulated provider fail or slow (enabled by PAYMENT_ALLOW_FAULTS)',
          body: Type.Object(
            {
              down: Type.Optional(Type.Boolean()),
              failNext: Type.Optional(Type.Integer({ minimum: 0, maximum: 1_000_000 })),
              delayMs: Type.Optional(Type.Integer({ minimum: 0, maximum: 60_000 })),
              refundsDown: Type.Optional(Type.Boolean()),
            },
            { additionalProperties: false },
          ),
        },
      },
      (request) => {
        Object.assign(provider.faults, request.body);
        return provider.faults;
      },
    );
  }
}
