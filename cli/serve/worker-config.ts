/**
 * Reads wrangler.toml — the one place configuration lives — and validates HALO_CONFIG with the same
 * zod schema the worker uses, so a bad key refuses to start here, naming it.
 */
import { existsSync, readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parse as parseToml } from "smol-toml";
import { ConfigError, parseConfig, type GatewayConfig } from "../../src/shared/config";
import { CliError } from "../errors";
import { escapeControl } from "../output";
import type { RuntimeInfo } from "../state";

export const PROJECT_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

/**
 * The worker serve runs: always this install's own entry, whatever `main` a `--config` file names.
 * serve is this install's launcher: its migrations, bindings, admin entrypoint and edge secret are
 * this worker's contract, so a config file (e.g. a copy in /etc) chooses configuration, not code.
 */
export const WORKER_ENTRY = resolve(PROJECT_ROOT, "src/index.ts");

export interface WorkerConfig {
  path: string;
  /** The worker entry to bundle: WORKER_ENTRY. */
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
  // A copy's relative `main` does not exist next to it (the normal case: ignored silently); one that
  // names another existing file is named, so nobody believes it runs.
  const named = toml.main === undefined ? WORKER_ENTRY : resolve(dirname(path), String(toml.main));
  if (named !== WORKER_ENTRY && existsSync(named)) console.warn(escapeControl(`halo-gate: ${path}: main = "${String(toml.main)}" is ignored; serve runs ${WORKER_ENTRY}`));
  return {
    path,
    main: WORKER_ENTRY,
    compatibilityDate: String(toml.compatibility_date),
    compatibilityFlags: (toml.compatibility_flags as string[] | undefined) ?? [],
    crons: triggers.crons ?? [],
    d1Databases: Object.fromEntries(d1.map((database) => [database.binding, database.database_name])),
    durableObjects: Object.fromEntries(objects.map((object) => [object.name, object.class_name])),
    rawHaloConfig,
    config,
  };
}

/** The serve.json fields the admin commands take from the running configuration (cli/state.ts). */
export function runtimeConfig(worker: WorkerConfig): Pick<RuntimeInfo, "config_path" | "login_server" | "max_users" | "routes" | "mesh_identity"> {
  return {
    config_path: worker.path,
    login_server: worker.config.mesh.login_server,
    max_users: worker.config.max_users,
    mesh_identity: worker.config.mesh.identity,
    routes: worker.config.routes.map((route) => ({
      name: route.name,
      path: route.path,
      match: route.match,
      ...(route.host === undefined ? {} : { host: route.host }),
      auth: route.auth,
      scope: route.scope,
      metered: route.metered,
      websocket: /^wss?:/.test(route.upstream),
    })),
  };
}
