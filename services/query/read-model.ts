// What a read model is, and how a batch of events goes through one. A read model
// module (projections/<name>.ts) says which documents an event touches, how a document
// evolves (pure), how the documents a batch touches are loaded — one statement, locked
// in key order — and how they are saved — one statement, into the live table or a
// rebuild's shadow of it. The same fold serves the consumer (a batch onto the stored
// rows), the rebuild and the invariant checker (every event, from nothing).
//
// A model whose rows only add up (availability, counts) loads nothing: its batch starts
// at zero and its save adds. A view over another model (the counts over the order
// summaries) folds that model's steps — each document before and after an event —
// instead of the events, and comes after it in the registry (read-models.ts).
import type { DomainEvent } from '@converge/contracts';
import type { Sql } from '@converge/platform';

export type SourceEvent = DomainEvent & { source: string; time: string };

/** What one input did to one document: what a view over this model folds. */
export type Step<Doc> = { event: SourceEvent; key: string; before: Doc | undefined; after: Doc | undefined };

/** Where a batch is saved: the live table, or a rebuild's shadow of it. */
export type SaveTo = { table: string; now: Date };

/** A cached row's cache key, and its key column (a rebuild raises the rows' versions by it). */
export type Cached = { column: string; key(id: string): string };

export type Definition<Name extends string, Key extends string, Doc, Input> = {
  name: Name;
  table: string;
  cached?: Cached;
  /** The documents an input changes; none for inputs this model ignores. */
  keysOf(input: Input): readonly Key[];
  /** The document after the input (`doc` is undefined before its first); undefined while there is none. */
  evolve(doc: Doc | undefined, input: Input, key: Key): Doc | undefined;
  /** The stored documents of `keys`, locked; without it the batch starts at zero and `save` adds. */
  load?(tx: Sql, keys: readonly Key[]): Promise<ReadonlyMap<string, Doc>>;
  /** Writes the batch's documents in one statement; returns the new versions of cached rows. */
  save(tx: Sql, docs: readonly Doc[], to: SaveTo): Promise<readonly { id: string; version: number }[]>;
};

/** A batch of events (or a whole history) on its way through the read models. */
export type Run = { readonly events: readonly SourceEvent[] };

export type ReadModel<Name extends string = string, Doc = unknown> = {
  readonly name: Name;
  readonly table: string;
  readonly cached: Cached | undefined;
  /** Loads what the run's events touch (a fold from nothing loads nothing). */
  load(tx: Sql, run: Run): Promise<void>;
  /** Folds the run's inputs onto what was loaded, in memory. */
  fold(run: Run): void;
  /** Saves the folded documents; returns the cache keys written and their versions. */
  save(tx: Sql, run: Run, to: SaveTo): Promise<{ key: string; version: number }[]>;
  documents(run: Run): ReadonlyMap<string, Doc>;
  steps(run: Run): readonly Step<Doc>[];
};

function define<Name extends string, Key extends string, Doc, Input>(
  definition: Definition<Name, Key, Doc, Input>,
  inputsOf: (run: Run) => readonly Input[],
  eventOf: (input: Input) => SourceEvent,
): ReadModel<Name, Doc> {
  type State = { stored: ReadonlyMap<string, Doc>; docs: Map<string, Doc>; steps: Step<Doc>[] };
  // Each run's documents, kept by the model that folds them.
  const runs = new WeakMap<Run, State>();
  const state = (run: Run): State => {
    let found = runs.get(run);
    if (found === undefined) runs.set(run, (found = { stored: new Map(), docs: new Map(), steps: [] }));
    return found;
  };
  return {
    name: definition.name,
    table: definition.table,
    cached: definition.cached,
    async load(tx, run) {
      if (definition.load === undefined) return;
      const keys = [...new Set(inputsOf(run).flatMap((input) => definition.keysOf(input)))];
      if (keys.length > 0) state(run).stored = await definition.load(tx, keys);
    },
    fold(run) {
      const { stored, docs, steps } = state(run);
      for (const input of inputsOf(run)) {
        for (const key of definition.keysOf(input)) {
          const before = docs.get(key) ?? stored.get(key);
          const after = definition.evolve(before, input, key);
          if (after !== undefined) docs.set(key, after);
          steps.push({ event: eventOf(input), key, before, after });
        }
      }
    },
    async save(tx, run, to) {
      const written = await definition.save(tx, [...state(run).docs.values()], to);
      const cached = definition.cached;
      return cached === undefined ? [] : written.map(({ id, version }) => ({ key: cached.key(id), version }));
    },
    documents: (run) => state(run).docs,
    steps: (run) => state(run).steps,
  };
}

/** A read model folded from the events. */
export const readModel = <Name extends string, Key extends string, Doc>(
  definition: Definition<Name, Key, Doc, SourceEvent>,
): ReadModel<Name, Doc> =>
  define(
    definition,
    (run) => run.events,
    (event) => event,
  );

/** A read model folded from another one's steps (it must come after that one in the registry). */
export const viewOf = <Upstream, Name extends string, Key extends string, Doc>(
  from: ReadModel<string, Upstream>,
  definition: Definition<Name, Key, Doc, Step<Upstream>>,
): ReadModel<Name, Doc> =>
  define(
    definition,
    (run) => from.steps(run),
    (step) => step.event,
  );

/** Every model's fold of the events, from nothing (a rebuild, the invariant checker). */
export function foldEvents(models: readonly ReadModel[], events: readonly SourceEvent[]): Run {
  const run: Run = { events };
  for (const model of models) model.fold(run);
  return run;
}

/**
 * A batch onto the stored rows: every model loads what the events touch (one statement
 * per table, in the registry's order, as every instance does), folds them in memory and
 * saves (one statement per table). Returns the run and the cache keys written.
 */
export async function projectEvents(
  tx: Sql,
  models: readonly ReadModel[],
  events: readonly SourceEvent[],
  now: Date,
): Promise<{ run: Run; written: { key: string; version: number }[] }> {
  const run: Run = { events };
  for (const model of models) await model.load(tx, run);
  for (const model of models) model.fold(run);
  const written: { key: string; version: number }[] = [];
  for (const model of models) written.push(...(await model.save(tx, run, { table: model.table, now })));
  return { run, written };
}
