// The payment service's own settings. Read with the settings every service shares.
import { setting } from '@converge/platform';

export const paymentConfig = {
  /** Opens the test-only endpoint that makes the simulated provider fail or slow. */
  PAYMENT_ALLOW_FAULTS: setting.bool(false),
};
