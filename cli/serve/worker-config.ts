/**
 * Reads wrangler.toml — the one place configuration lives — and validates HALO_CONFIG with the same
 * zod schema the worker uses, so a bad key refuses to start here, naming it.
 */
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parse as parseToml } from "smol-toml";
import { ConfigError, parseConfig, type GatewayConfig } from "../../src/config/schema";
import { CliError } from "../errors";

export const PROJECT_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

export interface WorkerConfig {
  path: string;
  main: string;
  compatibilityDate: string;
  compatibilityFlags: string[];
  crons: string[];
  /** Binding → D1 database name, and binding → Durable Object class, as wrangler.toml declares them. */
  d1Databases: Record<string, string>;
  durableObjects: Record<string, string>;
  rawHaloConfig: unknown;
  config: GatewayConfig;
}

export function loadWorkerConfig(path = resolve(PROJECT_ROOT, "wrangler.toml")): WorkerConfig {
  let toml: Record<string, unknown>;
  try {
    toml = parseToml(readFileSync(path, "utf8")) as Record<string, unknown>;
  } catch (error) {
    throw new CliError(`cannot read ${path}: ${(error as Error).message.split("\n")[0]}`);
  }
  const vars = (toml.vars ?? {}) as Record<string, unknown>;
  const rawHaloConfig = vars.HALO_CONFIG ?? {};
  let config: GatewayConfig;
  try {
    config = parseConfig(rawHaloConfig);
  } catch (error) {
    if (error instanceof ConfigError) throw new CliError(`${path}: ${error.message}`);
    throw error;
  }
  const triggers = (toml.triggers ?? {}) as { crons?: string[] };
  const d1 = (toml.d1_databases ?? []) as Array<{ binding: string; database_name: string }>;
  const objects = ((toml.durable_objects ?? {}) as { bindings?: Array<{ name: string; class_name: string }> }).bindings ?? [];
  return {
    path,
    main: resolve(dirname(path), String(toml.main ?? "src/index.ts")),
    compatibilityDate: String(toml.compatibility_date),
    compatibilityFlags: (toml.compatibility_flags as string[] | undefined) ?? [],
    crons: triggers.crons ?? [],
    d1Databases: Object.fromEntries(d1.map((database) => [database.binding, database.database_name])),
    durableObjects: Object.fromEntries(objects.map((object) => [object.name, object.class_name])),
    rawHaloConfig,
    config,
  };
}
