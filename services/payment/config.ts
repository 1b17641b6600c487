// The payment service's own settings. Read with the settings every service shares.
import { setting, testOnly } from '@converge/platform';

export const paymentConfig = (production = false) => ({
  /** Opens the test-only endpoint that makes the simulated provider fail or slow; refused in production. */
  PAYMENT_ALLOW_FAULTS: testOnly(setting.bool(false), production, false),
});
