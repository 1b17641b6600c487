// The compiled JavaScript that runs the system: one esbuild bundle per process entry in
// dist/, with the workspace packages (@converge/*) inside it and the npm dependencies
// left external, but for TypeBox (pglite finds its wasm next to its own module).
// Loading TypeScript through tsx costs each process seconds of CPU; a bundle loads in
// a fraction of one.
//   tsx scripts/build.ts            builds when a source changed since the last build
//   tsx scripts/build.ts --force    builds anyway (npm run build)
// `npm start`, `npm run start:cluster` and `npm run rebuild` run the first before their
// bundle, so a fresh clone or an edited source is built on the next start.
// Migrations and the dashboard stay in the source tree: a bundled module's
// `import.meta.url` is rewritten to its own source file, so paths relative to it
// (./migrations, ./dashboard.html) resolve as they do under tsx. An entry keeps its
// own (dist/<name>.js) for its is-main check: dist/ sits at the root like scripts/,
// so an entry's `..` is the root either way.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { Plugin } from 'esbuild';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.join(root, 'dist');
const metaFile = path.join(dist, 'build.json');

export const entries = {
  start: 'scripts/start.ts',
  service: 'system/service.ts',
  cluster: 'scripts/cluster.ts',
  gateway: 'services/gateway/main.ts',
  rebuild: 'scripts/rebuild.ts',
} as const;
export type Entry = keyof typeof entries;

/** What the build read besides the bundled sources: a change here changes the output too. */
const buildInputs = [
  'scripts/build.ts',
  'package.json',
  'package-lock.json',
  'tsconfig.json',
  'packages/contracts/package.json',
  'packages/platform/package.json',
];

type BuildRecord = { startedAt: number; inputs: string[] };

const mtime = (file: string) => fs.statSync(path.join(root, file), { throwIfNoEntry: false })?.mtimeMs;

/** Why dist/ is out of date, or undefined when every output is newer than all it was built from. */
export function staleReason(): string | undefined {
  let record: BuildRecord;
  try {
    record = JSON.parse(fs.readFileSync(metaFile, 'utf8')) as BuildRecord;
  } catch {
    return 'no build yet';
  }
  for (const name of Object.keys(entries))
    if (mtime(`dist/${name}.js`) === undefined) return `dist/${name}.js is missing`;
  for (const file of [...buildInputs, ...record.inputs]) {
    const changed = mtime(file);
    if (changed === undefined) return `${file} is gone`;
    if (changed > record.startedAt) return `${file} changed`;
  }
  return undefined;
}

/**
 * The bundled module's own source location stands in for import.meta.url (the entry keeps its own, for its is-main
 * check).
 */
function sourceUrls(entryFile: string): Plugin {
  return {
    name: 'source-urls',
    setup(build) {
      build.onLoad({ filter: /\.ts$/ }, (args) => {
        const source = fs.readFileSync(args.path, 'utf8');
        if (args.path === entryFile || !source.includes('import.meta.url')) return { contents: source, loader: 'ts' };
        const relative = path.relative(dist, args.path).split(path.sep).join('/');
        return {
          contents: source.replaceAll('import.meta.url', `new URL(${JSON.stringify(relative)}, import.meta.url).href`),
          loader: 'ts',
        };
      });
    },
  };
}

// Bundled besides the workspace packages: TypeBox, whose ~700 small modules took most
// of a process's time loading its dependencies, and its Fastify type provider with it,
// so that a process holds one TypeBox. Every other npm dependency stays external.
const bundled = /^(@converge\/|typebox(\/|$)|@fastify\/type-provider-typebox(\/|$))/;

const externalDependencies: Plugin = {
  name: 'external-dependencies',
  setup(build) {
    build.onResolve({ filter: /^[^./]/ }, (args) =>
      bundled.test(args.path) ? undefined : { path: args.path, external: true },
    );
  },
};

/**
 * Writes dist/ from the sources. Each output replaces the old one by a rename, so a process starting meanwhile loads
 * one or the other, never half of one.
 */
export async function build(): Promise<void> {
  const { build: esbuild } = await import('esbuild');
  const startedAt = Date.now();
  // One build per entry: a module that is one bundle's entry (the gateway) is a library in another's.
  const results = await Promise.all(
    Object.entries(entries).map(([out, file]) =>
      esbuild({
        absWorkingDir: root,
        entryPoints: [{ in: file, out }],
        outdir: dist,
        bundle: true,
        platform: 'node',
        format: 'esm',
        target: 'node20',
        sourcemap: 'linked',
        write: false,
        metafile: true,
        logLevel: 'warning',
        plugins: [externalDependencies, sourceUrls(path.join(root, file))],
      }),
    ),
  );
  fs.mkdirSync(dist, { recursive: true });
  for (const output of results.flatMap((result) => result.outputFiles)) {
    const temporary = `${output.path}.${process.pid}.tmp`;
    fs.writeFileSync(temporary, output.contents);
    fs.renameSync(temporary, output.path);
  }
  const inputs = new Set(results.flatMap((result) => Object.keys(result.metafile.inputs)));
  const record: BuildRecord = { startedAt, inputs: [...inputs].sort() };
  fs.writeFileSync(`${metaFile}.${process.pid}.tmp`, JSON.stringify(record));
  fs.renameSync(`${metaFile}.${process.pid}.tmp`, metaFile);
}

let fresh: Promise<void> | undefined;

/** The path of an entry's bundle, built first if a source changed (once per process). */
export async function builtEntry(name: Entry): Promise<string> {
  fresh ??= staleReason() === undefined ? Promise.resolve() : build();
  await fresh;
  return path.join(dist, `${name}.js`);
}

async function main(): Promise<void> {
  const reason = process.argv.includes('--force') ? 'asked to' : staleReason();
  if (reason === undefined) return;
  const began = performance.now();
  await build();
  console.log(`built dist/ (${reason}) in ${Math.round(performance.now() - began)} ms`);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  main().catch((error: unknown) => {
    console.error('build failed:', error instanceof Error ? error.message : error);
    process.exit(1);
  });
}
