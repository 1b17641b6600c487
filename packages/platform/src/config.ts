// Configuration is read once, from the environment, at start-up. Every key is checked
// and all the bad ones are reported together, so a misconfigured deployment fails at
// once with the whole list instead of one key per restart.
export type Spec<T> = { parse(raw: string | undefined, key: string): T };

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

export const setting = {
  string: (fallback?: string): Spec<string> => ({
    parse: (raw, key) => {
      const value = raw ?? fallback;
      if (value === undefined || value === '') throw new Error(`${key} is required`);
      return value;
    },
  }),
  optional: (): Spec<string | undefined> => ({ parse: (raw) => (raw === '' ? undefined : raw) }),
  int: (fallback: number, min = 0, max = Number.MAX_SAFE_INTEGER): Spec<number> => ({
    parse: (raw, key) => {
      if (raw === undefined || raw === '') return fallback;
      const value = Number(raw);
      if (!Number.isInteger(value) || value < min || value > max)
        throw new Error(`${key} must be an integer in [${min}, ${max}], got "${raw}"`);
      return value;
    },
  }),
  oneOf: <const T extends string>(values: readonly T[], fallback: T): Spec<T> => ({
    parse: (raw, key) => {
      const value = raw === undefined || raw === '' ? fallback : raw;
      if (!(values as readonly string[]).includes(value))
        throw new Error(`${key} must be one of ${values.join(', ')}, got "${value}"`);
      return value as T;
    },
  }),
  bool: (fallback: boolean): Spec<boolean> => ({
    parse: (raw, key) => {
      if (raw === undefined || raw === '') return fallback;
      if (raw === 'true' || raw === '1') return true;
      if (raw === 'false' || raw === '0') return false;
      throw new Error(`${key} must be true or false, got "${raw}"`);
    },
  }),
};

/** NODE_ENV=production: test-only switches are refused, and demo conveniences are off unless asked for. */
export const isProduction = (env: Record<string, string | undefined> = process.env): boolean =>
  env.NODE_ENV === 'production';

/**
 * A switch that only tests may turn (a fault injector, a relay left off, demo data): in
 * production any value but `safe` stops start-up with the key named, so a copied test
 * setting cannot reach a real deployment.
 */
export function testOnly<T>(spec: Spec<T>, production: boolean, safe: T): Spec<T> {
  return {
    parse: (raw, key) => {
      const value = spec.parse(raw, key);
      if (production && value !== safe)
        throw new Error(`${key}=${String(raw ?? value)} is a test-only switch and is refused when NODE_ENV=production`);
      return value;
    },
  };
}

export function loadConfig<S extends Record<string, Spec<unknown>>>(
  specs: S,
  env: Record<string, string | undefined> = process.env,
): { [K in keyof S]: S[K] extends Spec<infer T> ? T : never } {
  const problems: string[] = [];
  const result: Record<string, unknown> = {};
  for (const [key, spec] of Object.entries(specs)) {
    try {
      result[key] = spec.parse(env[key], key);
    } catch (error) {
      problems.push((error as Error).message);
    }
  }
  if (problems.length > 0) throw new ConfigError(`invalid configuration:\n  - ${problems.join('\n  - ')}`);
  return result as { [K in keyof S]: S[K] extends Spec<infer T> ? T : never };
}
