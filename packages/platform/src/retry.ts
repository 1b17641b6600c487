// Exponential backoff with full jitter: the n-th retry waits a random time in
// [0, min(cap, base * 2^n)], so many consumers retrying together spread out.
export type Backoff = { baseMs: number; capMs: number };

export function backoffDelay(attempt: number, { baseMs, capMs }: Backoff, random: () => number = Math.random): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
