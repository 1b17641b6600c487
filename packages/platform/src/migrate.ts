// Forward-only SQL migrations. Each scope (the platform's own tables, then the
// service's) is a folder of NNN_what.sql files applied in order, once, each in its own
// transaction; an applied file that has changed since is refused rather than ignored.
// Instances starting together serialise on an advisory lock.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Db } from './db.ts';

export const platformMigrations = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'migrations');

type Migration = { version: number; name: string; sql: string; checksum: string };

function readMigrations(dir: string): Migration[] {
  return fs
    .readdirSync(dir)
    .filter((file) => file.endsWith('.sql'))
    .sort()
    .map((file) => {
      const match = /^(\d+)_([\w-]+)\.sql$/.exec(file);
      if (match?.[1] === undefined || match[2] === undefined)
        throw new Error(`migration file ${file} must be named NNN_what.sql`);
      const sql = fs.readFileSync(path.join(dir, file), 'utf8');
      return {
        version: Number(match[1]),
        name: match[2],
        sql,
        checksum: crypto.createHash('sha256').update(sql).digest('hex'),
      };
    });
}

const migrationLock = 727_001;
const unbounded = { statementTimeoutMs: 0 };

/** Applies every pending migration of each scope, in order. Returns the names applied. */
export async function migrate(db: Db, scopes: Record<string, string>): Promise<string[]> {
  // Under the lock too: concurrent CREATE TABLE IF NOT EXISTS can fail on PostgreSQL.
  // A migration may take long, and so may waiting for another instance's: no statement timeout.
  await db.transaction(async (tx) => {
    await tx.query('SELECT pg_advisory_xact_lock($1)', [migrationLock]);
    await tx.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
      scope text NOT NULL, version integer NOT NULL, name text NOT NULL, checksum text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (scope, version))`);
  }, unbounded);
  const applied: string[] = [];
  for (const [scope, dir] of Object.entries(scopes)) {
    for (const migration of readMigrations(dir)) {
      await db.transaction(async (tx) => {
        await tx.query('SELECT pg_advisory_xact_lock($1)', [migrationLock]);
        const [done] = await tx.query<{ checksum: string }>(
          'SELECT checksum FROM schema_migrations WHERE scope = $1 AND version = $2',
          [scope, migration.version],
        );
        if (done !== undefined) {
          if (done.checksum !== migration.checksum) {
            throw new Error(`migration ${scope}/${migration.version}_${migration.name} changed after it was applied`);
          }
          return;
        }
        for (const statement of splitStatements(migration.sql)) await tx.query(statement);
        await tx.query('INSERT INTO schema_migrations (scope, version, name, checksum) VALUES ($1, $2, $3, $4)', [
          scope,
          migration.version,
          migration.name,
          migration.checksum,
        ]);
        applied.push(`${scope}/${migration.version}_${migration.name}`);
      }, unbounded);
    }
  }
  return applied;
}

// Statements are separated by a semicolon at the end of a line (not a comment line); a
// function body in $$ … $$ is kept whole.
function splitStatements(sql: string): string[] {
  const statements: string[] = [];
  let current = '';
  let inDollar = false;
  for (const line of sql.split('\n')) {
    if (line.trim().startsWith('--') && current.trim() === '') continue;
    current += line + '\n';
    if ((line.match(/\$\$/g) ?? []).length % 2 === 1) inDollar = !inDollar;
    if (!inDollar && !line.trim().startsWith('--') && line.trimEnd().endsWith(';')) {
      statements.push(current.trim());
      current = '';
    }
  }
  if (current.trim() !== '') statements.push(current.trim());
  return statements;
}
