// The gateway's settings: where it listens and where the services it routes to are.
// It runs alone (main.ts) or inside the embedded system, which passes them directly.
import { setting } from '@converge/platform';

export const gatewayConfig = {
  HOST: setting.string('127.0.0.1'),
  GATEWAY_PORT: setting.int(3000, 0, 65_535),
  ORDER_URL: setting.string('http://127.0.0.1:3001'),
  INVENTORY_URL: setting.string('http://127.0.0.1:3002'),
  PAYMENT_URL: setting.string('http://127.0.0.1:3003'),
  ORCHESTRATOR_URL: setting.string('http://127.0.0.1:3004'),
  QUERY_URL: setting.string('http://127.0.0.1:3005'),
  LOG_LEVEL: setting.oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], 'info'),
};
