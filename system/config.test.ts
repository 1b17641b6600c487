// A production deployment cannot be started with a test-only switch on: the service
// stops at its configuration, naming every such key, before it opens anything.
import { ConfigError } from '@converge/platform';
import { describe, expect, it } from 'vitest';
import { runService } from './service.ts';

const keys = JSON.stringify({
  keys: [{ kty: 'OKP', crv: 'Ed25519', x: 'yyVBIqy8O4m4L13r3vKnetng4OebZTKmqd7PaXNEI_I' }],
});

describe('test-only switches', () => {
  it('given NODE_ENV=production, when a test-only switch is set, then start-up refuses, naming each', async () => {
    const start = runService('payment', {
      NODE_ENV: 'production',
      AUTH_JWKS: keys,
      PAYMENT_ALLOW_FAULTS: 'true',
      RELAY: 'false',
      BUS_FAULTS: 'duplicate=0.1',
    });
    await expect(start).rejects.toThrow(ConfigError);
    const message = await start.catch((error: unknown) => (error as Error).message);
    expect(message).toContain(
      'PAYMENT_ALLOW_FAULTS=true is a test-only switch and is refused when NODE_ENV=production',
    );
    expect(message).toContain('RELAY=false is a test-only switch and is refused when NODE_ENV=production');
    expect(message).toContain('BUS_FAULTS is a test-only fault switch');
  });

  it('given NODE_ENV=production, when no key set is configured, then start-up refuses', async () => {
    await expect(runService('order', { NODE_ENV: 'production' })).rejects.toThrow(/AUTH_JWKS is required/);
  });
});
