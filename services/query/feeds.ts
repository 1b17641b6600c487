// Where the query service reads the other services' feeds (GET /events): over HTTP in
// a deployment, through the in-process apps in embedded mode. Used to rebuild read
// models without the broker.
import type { FeedMarks, FeedPage } from '@converge/platform';
import type { SourceEvent } from './fold.ts';

export type FeedSource = {
  source: string;
  read(after: number, limit: number): Promise<FeedPage>;
  /** The same page, each event by id and commit time only. */
  marks(after: number, limit: number): Promise<FeedMarks>;
};

/** An event as a feed serves it: with its stream (subject) and version there. */
export type FeedEvent = SourceEvent & { subject: string; sequence: number };

export function httpFeed(source: string, baseUrl: string): FeedSource {
  const base = baseUrl.replace(/\/+$/, '');
  const get = async <T>(path: string, after: number, limit: number): Promise<T> => {
    const response = await fetch(`${base}${path}?after=${after}&limit=${limit}`, { signal: AbortSignal.timeout(10_000) });
    if (!response.ok) throw new Error(`${source} feed answered ${response.status}`);
    return (await response.json()) as T;
  };
  return {
    source,
    read: (after, limit) => get<FeedPage>('/events', after, limit),
    marks: (after, limit) => get<FeedMarks>('/events/marks', after, limit),
  };
}

/** Every event of a feed after `after`, page by page; and the position read up to. */
export async function readFeedFrom(feed: FeedSource, after: number, pageSize = 1000): Promise<{ events: FeedEvent[]; next: number }> {
  const events: FeedEvent[] = [];
  let next = after;
  for (;;) {
    const page = await feed.read(next, pageSize);
    events.push(...page.events.map((e) => e.event as unknown as FeedEvent));
    if (page.events.length === 0) return { events, next };
    next = page.next;
  }
}
