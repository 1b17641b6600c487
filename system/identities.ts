// Identities of a Converge deployment that issues its own tokens (embedded mode,
// `npm run start:cluster`, the benchmark and the tests). The signing key lives in the
// data directory, so tokens and API keys stay valid across restarts; every process is
// given the public key set (AUTH_JWKS), the gateway the signing key (AUTH_SIGNING_KEY) to
// exchange API keys for tokens, and each service a token of its own for what it reads
// from the others. A deployment with an identity provider sets AUTH_JWKS to the
// provider's key set and issues nothing here.
import fs from 'node:fs';
import path from 'node:path';
import {
  createIdentities,
  generateSigningKey,
  keySetOf,
  parseSigningKey,
  serviceIdentity,
  type Identities,
} from '@converge/platform';

export { demoApiKey, demoApiKeys, demoIdentities, type DemoName } from '../services/gateway/main.ts';

/** The deployment's identities, signed with the key kept in `dataDir` (made on first use), or a new key. */
export async function deploymentIdentities(dataDir?: string): Promise<Identities> {
  if (dataDir === undefined) return createIdentities();
  const file = path.join(dataDir, 'auth', 'signing-key.json');
  if (fs.existsSync(file)) return createIdentities({ key: parseSigningKey(fs.readFileSync(file, 'utf8')) });
  const key = await generateSigningKey();
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  // Written whole under another name first, so a crash never leaves half a key.
  fs.writeFileSync(`${file}.partial`, JSON.stringify(key.privateJwk), { mode: 0o600 });
  fs.renameSync(`${file}.partial`, file);
  return createIdentities({ key });
}

/** The identities of a deployment already running from `dataDir`: its key must be there. */
export async function existingIdentities(dataDir: string): Promise<Identities> {
  const file = path.join(dataDir, 'auth', 'signing-key.json');
  if (!fs.existsSync(file))
    throw new Error(`no signing key at ${file}: start the system with this data directory first`);
  return createIdentities({ key: parseSigningKey(fs.readFileSync(file, 'utf8')) });
}

/** How long a service's own token is valid: a process is restarted with a new one long before. */
const serviceTokenSeconds = 30 * 24 * 3600;

/** The settings a cluster process needs to verify callers, and to call others as itself. */
export async function identityEnv(
  identities: Identities,
  process: string,
  options: { signing?: boolean } = {},
): Promise<Record<string, string>> {
  return {
    AUTH_JWKS: JSON.stringify(keySetOf(identities.signingKey)),
    AUTH_ISSUER: identities.issuer.issuer,
    AUTH_AUDIENCE: identities.issuer.audience,
    AUTH_SERVICE_TOKEN: await identities.issuer.sign(serviceIdentity(process), serviceTokenSeconds),
    ...(options.signing === true ? { AUTH_SIGNING_KEY: JSON.stringify(identities.signingKey.privateJwk) } : {}),
  };
}
