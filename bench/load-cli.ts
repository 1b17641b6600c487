// `npm run load -- --rate 200 --duration 30 [--arrival poisson] [--catalogue hot]
//   [--order-url http://127.0.0.1:3001] [--inventory-url …] [--payment-url …]
//   [--order-db postgres://postgres@127.0.0.1:5432/converge_order] [--json report.json] [--data-dir ./data]`
// Callers' tokens are signed with the deployment's key in --data-dir (where `npm start`
// and `npm run start:cluster` keep it).
// Without --order-db only placement is measured; with it each order is followed to its
// final state and completion latency is reported too.
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { openPostgres } from '@converge/platform';
import { existingIdentities } from '../system/identities.ts';
import { prepareFixture, pricedIn, runLoad } from './load.ts';

const { values } = parseArgs({
  options: {
    rate: { type: 'string', default: '100' },
    duration: { type: 'string', default: '30' },
    arrival: { type: 'string', default: 'constant' },
    catalogue: { type: 'string', default: 'spread' },
    'order-url': { type: 'string', default: 'http://127.0.0.1:3001' },
    'inventory-url': { type: 'string', default: 'http://127.0.0.1:3002' },
    'payment-url': { type: 'string', default: 'http://127.0.0.1:3003' },
    'order-db': { type: 'string' },
    json: { type: 'string' },
    'data-dir': { type: 'string', default: './data' },
  },
});

const rate = Number(values.rate);
const duration = Number(values.duration);
if (!(rate > 0) || !(duration > 0)) throw new Error('--rate and --duration must be positive numbers');
if (values.arrival !== 'constant' && values.arrival !== 'poisson') throw new Error('--arrival is constant or poisson');
if (values.catalogue !== 'spread' && values.catalogue !== 'hot') throw new Error('--catalogue is spread or hot');

const sign = (await existingIdentities(values['data-dir'])).token;
const orderDb = values['order-db'] === undefined ? undefined : await openPostgres('order', values['order-db']);
const fixture = await prepareFixture({
  inventoryUrl: values['inventory-url'],
  sign,
  paymentUrl: values['payment-url'],
  catalogue: values.catalogue,
  ...(orderDb === undefined ? {} : { waitUntilPriced: pricedIn(orderDb) }),
});
const report = await runLoad({
  orderUrl: values['order-url'],
  sign,
  fixture,
  rate,
  durationSec: duration,
  arrival: values.arrival,
  ...(orderDb === undefined ? {} : { orderDb }),
  progress: (line) => process.stderr.write(`\r${line}    `),
});
process.stderr.write('\n');
const { acknowledged, ...summary } = report;
console.log(JSON.stringify({ ...summary, acknowledged: acknowledged.length }, null, 2));
if (values.json !== undefined) fs.writeFileSync(values.json, JSON.stringify(report, null, 2));
await orderDb?.close();
