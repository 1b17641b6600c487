// Forward-only migrations, on PGlite and on a real PostgreSQL server: files apply in
// order and once, an applied file that changed is refused, and instances starting
// together against the same database all come up.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { dropDatabase, ensureDatabase, openPglite, openPostgres, type Db } from './db.ts';
import { migrate, platformMigrations } from './migrate.ts';
import { serverAvailable, servers, uniqueName } from './testing.ts';

const pgUp = await serverAvailable('postgres');

// A database for this whole file on the server; each test uses its own scope and tables.
// `fresh` is a database that has never been migrated (for the start-up race).
type Backend = { name: string; up: boolean; open(): Promise<Db>; fresh(): Promise<() => Promise<Db>> };
const fileDatabase = uniqueName('t');
const created: string[] = [];
const opened: Db[] = [];
const track = (db: Db) => (opened.push(db), db);

async function serverDatabase(name: string): Promise<string> {
  const url = await ensureDatabase(servers.postgres, name);
  if (!created.includes(name)) created.push(name);
  return url;
}

const backends: Backend[] = [
  {
    name: 'pglite',
    up: true,
    open: async () => track(await openPglite('migrate-test')),
    fresh: async () => {
      const db = track(await openPglite('migrate-test'));
      return () => Promise.resolve(db);
    },
  },
  {
    name: 'postgres',
    up: pgUp,
    open: async () => track(await openPostgres('migrate-test', await serverDatabase(fileDatabase))),
    fresh: async () => {
      const url = await serverDatabase(uniqueName('t'));
      return async () => track(await openPostgres('migrate-test', url, { max: 2 }));
    },
  },
];

afterEach(async () => {
  for (const db of opened.splice(0)) await db.close();
});

afterAll(async () => {
  for (const name of created) await dropDatabase(servers.postgres, name);
});

/** A temporary folder of migration files; returns its path and the table they create. */
function migrationsDir(files: Record<string, string>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'migrations-'));
  for (const [file, sql] of Object.entries(files)) fs.writeFileSync(path.join(dir, file), sql);
  return dir;
}

function threeMigrations(table: string): Record<string, string> {
  return {
    '001_create.sql': `-- the table first\nCREATE TABLE ${table} (n integer NOT NULL);\n`,
    '002_seed.sql': `INSERT INTO ${table} (n) VALUES (1);\nINSERT INTO ${table} (n) VALUES (2);\n`,
    '010_trigger.sql': [
      `CREATE FUNCTION ${table}_double() RETURNS trigger LANGUAGE plpgsql AS $$`,
      'BEGIN',
      '  NEW.n := NEW.n * 2;',
      '  RETURN NEW;',
      'END;',
      '$$;',
      `CREATE TRIGGER ${table}_doubled BEFORE INSERT ON ${table} FOR EACH ROW EXECUTE FUNCTION ${table}_double();`,
      `INSERT INTO ${table} (n) VALUES (5);`,
      '',
    ].join('\n'),
  };
}

const values = async (db: Db, table: string) =>
  (await db.query<{ n: number }>(`SELECT n FROM ${table} ORDER BY n`)).map((r) => r.n);

describe.each(backends)('migrations on $name', (backend) => {
  describe.skipIf(!backend.up)('migrate', () => {
    it(
      'given three files named out of creation order on disk, when migrate ' +
        'runs, then they apply in version order, each recorded once',
      async () => {
        const scope = uniqueName('m');
        const db = await backend.open();
        const dir = migrationsDir(threeMigrations(scope));

        const applied = await migrate(db, { [scope]: dir });

        expect(applied).toEqual([`${scope}/1_create`, `${scope}/2_seed`, `${scope}/10_trigger`]);
        expect(await values(db, scope)).toEqual([1, 2, 10]);
        const recorded = await db.query<{ version: number; name: string }>(
          'SELECT version, name FROM schema_migrations WHERE scope = $1 ORDER BY applied_at, version',
          [scope],
        );
        expect(recorded).toEqual([
          { version: 1, name: 'create' },
          { version: 2, name: 'seed' },
          { version: 10, name: 'trigger' },
        ]);
      },
    );

    it(
      'given migrations already applied, when migrate runs again, then ' +
        'nothing is applied twice and only a new file runs',
      async () => {
        const scope = uniqueName('m');
        const db = await backend.open();
        const dir = migrationsDir(threeMigrations(scope));
        await migrate(db, { [scope]: dir });

        const again = await migrate(db, { [scope]: dir });
        fs.writeFileSync(path.join(dir, '011_more.sql'), `INSERT INTO ${scope} (n) VALUES (7);\n`);
        const more = await migrate(db, { [scope]: dir });

        expect(again).toEqual([]);
        expect(more).toEqual([`${scope}/11_more`]);
        expect(await values(db, scope)).toEqual([1, 2, 10, 14]);
      },
    );

    it(
      'given an applied file that was edited, when migrate runs, ' + 'then it is refused and no later file is applied',
      async () => {
        const scope = uniqueName('m');
        const db = await backend.open();
        const dir = migrationsDir(threeMigrations(scope));
        await migrate(db, { [scope]: dir });
        fs.appendFileSync(path.join(dir, '002_seed.sql'), `INSERT INTO ${scope} (n) VALUES (3);\n`);
        fs.writeFileSync(path.join(dir, '011_more.sql'), `INSERT INTO ${scope} (n) VALUES (7);\n`);

        await expect(migrate(db, { [scope]: dir })).rejects.toThrow(
          `migration ${scope}/2_seed changed after it was applied`,
        );

        expect(await values(db, scope)).toEqual([1, 2, 10]);
        const [row] = await db.query<{ n: number }>(
          'SELECT count(*)::int AS n FROM schema_migrations WHERE scope = $1',
          [scope],
        );
        expect(row?.n).toBe(3);
      },
    );

    it(
      'given a statement with a comment line ending in a semicolon, ' +
        'when migrate runs, then the statement is kept whole',
      async () => {
        const scope = uniqueName('m');
        const db = await backend.open();
        const dir = migrationsDir({
          '001_create.sql':
            `CREATE TABLE ${scope} (\n  -- counts things; never negative;\n  n integer NOT NULL CHECK (n >= 0)\n);\n` +
            `INSERT INTO ${scope} (n) VALUES (4);\n`,
        });

        expect(await migrate(db, { [scope]: dir })).toEqual([`${scope}/1_create`]);

        expect(await values(db, scope)).toEqual([4]);
      },
    );

    it(
      'given a failing statement in a file, when migrate runs, then that file ' +
        'leaves nothing behind and the earlier ones stay applied',
      async () => {
        const scope = uniqueName('m');
        const db = await backend.open();
        const dir = migrationsDir({
          '001_create.sql': `CREATE TABLE ${scope} (n integer NOT NULL);\n`,
          '002_broken.sql': `INSERT INTO ${scope} (n) VALUES (1);\nINSERT INTO ${scope} (n) VALUES (NULL);\n`,
        });

        await expect(migrate(db, { [scope]: dir })).rejects.toThrow();

        expect(await values(db, scope)).toEqual([]);
        const recorded = await db.query<{ version: number }>('SELECT version FROM schema_migrations WHERE scope = $1', [
          scope,
        ]);
        expect(recorded).toEqual([{ version: 1 }]);
      },
    );

    it(
      'given a file not named NNN_what.sql, when migrate runs, ' + 'then it is refused before anything is applied',
      async () => {
        const scope = uniqueName('m');
        const db = await backend.open();
        const dir = migrationsDir({
          '001_create.sql': `CREATE TABLE ${scope} (n integer);\n`,
          'seed.sql': 'SELECT 1;\n',
        });

        await expect(migrate(db, { [scope]: dir })).rejects.toThrow(
          'migration file seed.sql must be named NNN_what.sql',
        );

        const recorded = await db.query('SELECT 1 FROM schema_migrations WHERE scope = $1', [scope]);
        expect(recorded).toHaveLength(0);
      },
    );

    it(
      'given five instances starting together on a new database, when each ' +
        'migrates, then none fails and every file is applied exactly once',
      async () => {
        const scope = uniqueName('m');
        const dir = migrationsDir(threeMigrations(scope));
        const open = await backend.fresh();
        const instances = await Promise.all([1, 2, 3, 4, 5].map(() => open()));

        const results = await Promise.all(
          instances.map((db) => migrate(db, { platform: platformMigrations, [scope]: dir })),
        );

        const appliedBy = results.flat().sort();
        expect(appliedBy).toEqual(
          [
            'platform/1_messaging',
            'platform/2_feed',
            'platform/3_held_after',
            `${scope}/10_trigger`,
            `${scope}/1_create`,
            `${scope}/2_seed`,
          ].sort(),
        );
        const [first] = instances;
        if (first === undefined) throw new Error('no instance');
        expect(await values(first, scope)).toEqual([1, 2, 10]);
        const [partitions] = await first.query<{ n: number }>('SELECT count(*)::int AS n FROM outbox_partitions');
        expect(partitions?.n).toBe(16);
      },
    );
  });
});
