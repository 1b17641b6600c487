// The issuing side of identities: a signing key (Ed25519), the public key set services
// verify against, and short-lived tokens for an identity. A deployment with its own
// identity provider only needs the verifying side (identity.ts) pointed at its key set;
// this issuer is what the gateway uses to exchange an API key for a token, what the
// embedded system and the launcher use to give services their own identity, and what
// the demo identities are signed with.
import crypto from 'node:crypto';
import { SignJWT, exportJWK, generateKeyPair, importJWK, type CryptoKey, type JSONWebKeySet, type JWK } from 'jose';
import { tokenVerifier, type Identity, type Role, type Verifier } from './identity.ts';

export type SigningKey = { kid: string; privateJwk: JWK; publicJwk: JWK };

export async function generateSigningKey(): Promise<SigningKey> {
  const { publicKey, privateKey } = await generateKeyPair('EdDSA', { extractable: true });
  const kid = crypto.randomUUID();
  const meta = { kid, alg: 'EdDSA', use: 'sig' };
  return {
    kid,
    privateJwk: { ...(await exportJWK(privateKey)), ...meta },
    publicJwk: { ...(await exportJWK(publicKey)), ...meta },
  };
}

/** A signing key written as JSON (AUTH_SIGNING_KEY), read back; refuses anything else. */
export function parseSigningKey(json: string): SigningKey {
  const jwk = JSON.parse(json) as JWK;
  if (jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519' || typeof jwk.d !== 'string' || typeof jwk.kid !== 'string')
    throw new Error('the signing key must be an Ed25519 private JWK with a kid');
  const { d: _private, ...publicJwk } = jwk;
  return { kid: jwk.kid, privateJwk: jwk, publicJwk };
}

export const keySetOf = (...keys: SigningKey[]): JSONWebKeySet => ({ keys: keys.map((key) => key.publicJwk) });

export type TokenIssuer = {
  readonly issuer: string;
  readonly audience: string;
  readonly keys: JSONWebKeySet;
  /** A token for the identity, valid for `ttlSeconds` (15 minutes unless told). */
  sign(identity: Identity, ttlSeconds?: number): Promise<string>;
};

export async function tokenIssuer(
  key: SigningKey,
  { issuer, audience }: { issuer: string; audience: string },
): Promise<TokenIssuer> {
  const privateKey = (await importJWK(key.privateJwk, 'EdDSA')) as CryptoKey;
  return {
    issuer,
    audience,
    keys: keySetOf(key),
    sign: (identity, ttlSeconds = 900) =>
      new SignJWT({ roles: [...identity.roles] })
        .setProtectedHeader({ alg: 'EdDSA', kid: key.kid, typ: 'JWT' })
        .setSubject(identity.subject)
        .setIssuer(issuer)
        .setAudience(audience)
        .setIssuedAt()
        .setExpirationTime(Math.floor(Date.now() / 1000) + ttlSeconds)
        .sign(privateKey),
  };
}

/**
 * Tokens for identities, signed once and signed again a minute before they expire: a
 * caller that makes many requests as one identity (a service, a test) pays one signature.
 */
export function tokenCache(issuer: TokenIssuer, ttlSeconds = 900): (identity: Identity) => Promise<string> {
  const tokens = new Map<string, { token: Promise<string>; renewAt: number }>();
  return (identity) => {
    const key = `${identity.subject}\u0000${identity.roles.join(',')}`;
    const known = tokens.get(key);
    if (known !== undefined && known.renewAt > Date.now()) return known.token;
    const token = issuer.sign(identity, ttlSeconds);
    tokens.set(key, { token, renewAt: Date.now() + Math.max(ttlSeconds - 60, ttlSeconds / 2) * 1000 });
    if (tokens.size > 10_000) tokens.delete(tokens.keys().next().value as string);
    return token;
  };
}

/** API keys are kept as their SHA-256 (hex): a configuration that lists keys does not hold them. */
export const hashApiKey = (key: string): string => crypto.createHash('sha256').update(key).digest('hex');

export const serviceIdentity = (name: string): Identity => ({ subject: `service:${name}`, roles: ['service'] });
export const userIdentity = (subject: string, ...extra: Role[]): Identity => ({
  subject,
  roles: ['customer', ...extra],
});

/** Both sides of identities in one place: what a system that issues its own tokens holds. */
export type Identities = {
  readonly signingKey: SigningKey;
  readonly issuer: TokenIssuer;
  readonly verify: Verifier;
  /** A token for the identity, cached until shortly before it expires. */
  readonly token: (identity: Identity) => Promise<string>;
};

export const defaultIssuer = { issuer: 'converge', audience: 'converge' };

/** Identities signed with `key` (a new one unless given), for a whole system in one process, a launcher or a test. */
export async function createIdentities(
  options: { key?: SigningKey; issuer?: string; audience?: string } = {},
): Promise<Identities> {
  const signingKey = options.key ?? (await generateSigningKey());
  const names = {
    issuer: options.issuer ?? defaultIssuer.issuer,
    audience: options.audience ?? defaultIssuer.audience,
  };
  const issuer = await tokenIssuer(signingKey, names);
  return {
    signingKey,
    issuer,
    verify: tokenVerifier({ keys: issuer.keys, ...names }),
    token: tokenCache(issuer),
  };
}
