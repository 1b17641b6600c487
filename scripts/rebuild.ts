// `npm run rebuild -- <read model>|all`: asks the query service to rebuild read models
// from the services' feeds (POST /projections/{name}/rebuild) and prints what it did.
// QUERY_URL says where the query service is (default http://127.0.0.1:3005). It calls
// as an operator: AUTH_TOKEN (an operator's bearer token), or, for a deployment that
// signs its own tokens, one signed with the key in DATA_DIR (default ./data).
import { existingIdentities, demoIdentities } from '../system/identities.ts';
import { readModels } from '../services/query/service.ts';

const name = process.argv[2] ?? '';
const choices = [...readModels.map((m) => m.name), 'all'];
if (!choices.includes(name)) {
  console.error(`usage: npm run rebuild -- ${choices.join('|')}`);
  process.exit(2);
}
const base = (process.env.QUERY_URL ?? 'http://127.0.0.1:3005').replace(/\/+$/, '');
const token =
  process.env.AUTH_TOKEN ??
  (await (await existingIdentities(process.env.DATA_DIR ?? './data')).token(demoIdentities.operator));
const response = await fetch(`${base}/projections/${name}/rebuild`, {
  method: 'POST',
  headers: { authorization: `Bearer ${token}` },
}).catch((error: unknown) => {
  console.error(`cannot reach the query service at ${base}: ${(error as Error).message}`);
  process.exit(1);
});
const body = await response.text();
if (!response.ok) {
  console.error(`rebuild failed: ${response.status} ${body}`);
  process.exit(1);
}
for (const r of (JSON.parse(body) as { rebuilt: { model: string; events: number; rows: number; tookMs: number }[] })
  .rebuilt) {
  console.log(
    `${r.model.padEnd(22)} ${String(r.rows).padStart(7)} rows ` +
      `from ${String(r.events).padStart(8)} events in ${r.tookMs} ms`,
  );
}
