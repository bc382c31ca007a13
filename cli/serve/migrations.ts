/**
 * Applies migrations/*.sql to D1 at start, idempotently, tracked in wrangler's own `d1_migrations`
 * table so `wrangler d1 migrations list --local --persist-to <state>` agrees.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

interface D1Like {
  prepare(sql: string): { bind(...values: unknown[]): unknown; all(): Promise<{ results: unknown[] }> };
  batch(statements: unknown[]): Promise<unknown>;
  exec(sql: string): Promise<unknown>;
}

/** Statements of a migration file; comments stripped (the files keep `;` out of comments and strings). */
export function splitStatements(sql: string): string[] {
  return sql
    .replace(/--[^\n]*/g, "")
    .split(/;\s*(?:\n|$)/)
    .map((statement) => statement.trim())
    .filter((statement) => statement.length > 0);
}

export async function applyMigrations(db: D1Like, dir: string): Promise<string[]> {
  await db.exec("CREATE TABLE IF NOT EXISTS d1_migrations (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL)");
  const { results } = await db.prepare("SELECT name FROM d1_migrations").all();
  const applied = new Set((results as Array<{ name: string }>).map((row) => row.name));
  const fresh: string[] = [];
  for (const name of readdirSync(dir).filter((file) => file.endsWith(".sql")).sort()) {
    if (applied.has(name)) continue;
    const statements = splitStatements(readFileSync(join(dir, name), "utf8")).map((sql) => db.prepare(sql));
    // One batch = one transaction: a migration is applied whole, with its record, or not at all.
    await db.batch([...statements, db.prepare("INSERT INTO d1_migrations (name) VALUES (?1)").bind(name)]);
    fresh.push(name);
  }
  return fresh;
}
