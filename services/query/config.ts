// The query service's own settings: read-your-writes waits, the feed sweep, its cache
// and where the sources' feeds are. Read with the settings every service shares.
import { setting } from '@converge/platform';

export const queryConfig = {
  /** How long a read carrying a consistency token waits for its write before answering 503. */
  QUERY_READ_WAIT_MS: setting.int(2_000, 0, 30_000),
  /** How often the sources' feeds are swept for events the broker lost (0: only on a gap, at start-up, on demand). */
  QUERY_SWEEP_MS: setting.int(15_000, 0, 86_400_000),
  /** The Redis of the read cache; empty for an in-process cache per instance. */
  REDIS_URL: setting.string('redis://127.0.0.1:6379'),
  /** Where the sources' feeds are, for rebuilds and catch-ups (the services' default ports). */
  ORDER_URL: setting.string('http://127.0.0.1:3001'),
  INVENTORY_URL: setting.string('http://127.0.0.1:3002'),
  PAYMENT_URL: setting.string('http://127.0.0.1:3003'),
};
