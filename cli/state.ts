/**
 * The state directory: persistent D1/Durable Object data (wrangler's `--persist-to` layout under
 * v3/), the operator token (mode 0600, created on first start) and `serve.json`, which tells the
 * admin commands where the running `serve` listens.
 */
import { createHash, randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { CliError } from "./errors";

export function resolveStateDir(flag: string | undefined): string {
  return resolve(flag ?? process.env.HALO_GATE_STATE ?? ".halo-gate");
}

export function ensureStateDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
}

const operatorTokenPath = (dir: string) => join(dir, "operator-token");
const runtimePath = (dir: string) => join(dir, "serve.json");

/** The operator token, created with mode 0600 on first start. */
export function loadOrCreateOperatorToken(dir: string): string {
  const path = operatorTokenPath(dir);
  if (!existsSync(path)) {
    writeFileSync(path, `hgop-${randomBytes(32).toString("hex")}\n`, { mode: 0o600, flag: "wx" });
  }
  chmodSync(path, 0o600);
  return readFileSync(path, "utf8").trim();
}

export function readOperatorToken(dir: string): string {
  try {
    return readFileSync(operatorTokenPath(dir), "utf8").trim();
  } catch {
    throw new CliError(`the gateway is not running here: no operator token in ${dir} (start it with 'halo-gate serve --state ${dir}').`);
  }
}

export const sha256Hex = (text: string) => createHash("sha256").update(text).digest("hex");

export interface RuntimeInfo {
  pid: number;
  /** The workerd child, so a later serve can end it if this one was killed with -9. */
  workerd_pids?: number[];
  gateway: string;
  admin: string;
  /** The workerd core's loopback socket behind the edge (diagnostics and bench/ only). */
  core: string;
  started_at: string;
  /** The URL users are given (HALO_CONFIG.public_url), when set. */
  public_url?: string;
  /** The served certificate, with `serve --tls`. */
  tls?: { fingerprint: string; self_signed: boolean; cert_path: string };
  /**
   * What the admin commands need of the running configuration, so they never read a wrangler.toml
   * themselves (the running one may be any `--config` copy): written by serve from the config it
   * validated and runs. Absent in the serve.json of an older serve.
   */
  config_path?: string;
  login_server?: string;
  max_users?: number;
  routes?: RuntimeRoute[];
  /** HALO_CONFIG.mesh.identity (issue 10): `list` names the users it would refuse. */
  mesh_identity?: "off" | "warn" | "enforce";
}

/** A route as the invite message needs it (no upstream). */
export interface RuntimeRoute {
  name: string;
  path: string;
  match: "prefix" | "exact";
  host?: string;
  auth: string;
  scope: string | null;
  metered: boolean;
  /** A WebSocket route (ws:// or wss:// upstream). */
  websocket: boolean;
}

export function writeRuntimeInfo(dir: string, info: RuntimeInfo): void {
  writeFileSync(runtimePath(dir), JSON.stringify(info, null, 2) + "\n", { mode: 0o600 });
}

export function readRuntimeInfo(dir: string): RuntimeInfo | undefined {
  try {
    return JSON.parse(readFileSync(runtimePath(dir), "utf8")) as RuntimeInfo;
  } catch {
    return undefined;
  }
}

export function removeRuntimeInfo(dir: string, pid: number): void {
  if (readRuntimeInfo(dir)?.pid === pid) rmSync(runtimePath(dir), { force: true });
}
