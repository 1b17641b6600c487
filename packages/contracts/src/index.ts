export * from './envelope.ts';
export * from './events.ts';
export * from './validate.ts';
export * from './subscriptions.ts';
export * from './statuses.ts';
export * from './params.ts';
