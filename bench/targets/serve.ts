/**
 * serve / serve-noquota: the production path — `halo-gate serve` (Node edge → undici → workerd
 * core via miniflare: bearer hash + D1 lookup, per-user quota Durable Object, audit) → nginx.
 * Each instance has its own state dir and a copy of wrangler.toml whose routes point at the bench's
 * upstreams (`v2` → nginx, `lemon` → the SSE upstream); 10 users are invited with limits far above
 * the load, so no request is refused by a quota and the table measures the checks, not refusals.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parse, stringify } from "smol-toml";
import { spawnManaged, tempDir, type Managed } from "../lib/processes.ts";
import type { Target } from "./target.ts";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const BIN = join(ROOT, "bin/halo-gate.mjs");
const USERS = 10;

export interface ServeOptions {
  name: string;
  nginxPort: number;
  ssePort: number;
  /** HALO_CONFIG overrides, e.g. `{ quotas: false }`. */
  overrides?: Record<string, unknown>;
  /** Reuse a state dir (start-up measurement); a fresh one otherwise. */
  stateDir?: string;
}

export interface ServeTarget extends Target {
  /** Gateway origin, e.g. http://127.0.0.1:PORT. */
  origin: string;
  /** Spawn to "halo-gate listening on", in ms. */
  startupMs: number;
}

/** A wrangler.toml copy with the bench's upstreams and overrides; returns its path. */
function benchConfig(dir: string, options: ServeOptions): string {
  const toml = parse(readFileSync(join(ROOT, "wrangler.toml"), "utf8")) as Record<string, unknown> & { vars: { HALO_CONFIG: Record<string, unknown> } };
  const halo = toml.vars.HALO_CONFIG;
  halo.routes = (halo.routes as Array<Record<string, unknown>>).map((route) => {
    const port = route.name === "lemon" ? options.ssePort : options.nginxPort;
    return { ...route, upstream: String(route.upstream).replace(/^(\w+):\/\/127\.0\.0\.1:\d+/, `$1://127.0.0.1:${port}`) };
  });
  Object.assign(halo, options.overrides ?? {});
  toml.main = join(ROOT, "src/index.ts");
  const path = join(dir, "wrangler.toml");
  writeFileSync(path, stringify(toml));
  return path;
}

/** Starts `halo-gate serve` on 127.0.0.1 (kernel-chosen ports) and waits for "listening". */
export async function startServeProcess(options: ServeOptions): Promise<{ serve: Managed; origin: string; stateDir: string; startupMs: number }> {
  const configDir = tempDir("halo-gate-bench-config-");
  const stateDir = options.stateDir ?? tempDir("halo-gate-bench-state-");
  const config = benchConfig(configDir, options);
  const started = performance.now();
  const serve = spawnManaged(options.name, process.execPath, [BIN, "serve", "--state", stateDir, "--config", config, "--bind", "127.0.0.1:0", "--admin-bind", "127.0.0.1:0"], {
    cwd: ROOT,
    graceMs: 35_000, // serve finishes in-flight requests for up to 30 s
  });
  const origin = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${options.name} did not listen within 60 s:\n${serve.output()}`)), 60_000);
    const check = () => {
      const match = /halo-gate listening on (http:\/\/\S+)/.exec(serve.output());
      if (match) {
        clearTimeout(timer);
        resolve(match[1]!);
      }
    };
    serve.child.stdout!.on("data", check);
    void serve.exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`${options.name} exited with ${code} before listening:\n${serve.output()}`));
    });
  });
  return { serve, origin, stateDir, startupMs: performance.now() - started };
}

async function invite(stateDir: string, handle: string): Promise<string> {
  // The config schema's maxima: rps 10 000 (× 10 users), burst 100 000, streams 1 000.
  const args = [BIN, "invite", handle, "--json", "--scopes", "v2,lemon", "--rps", "10000", "--burst", "100000", "--streams", "1000", "--state", stateDir];
  const child = spawnManaged(`invite ${handle}`, process.execPath, args, { cwd: ROOT });
  const code = await child.exited;
  if (code !== 0) throw new Error(`halo-gate invite ${handle} exited with ${code}:\n${child.output()}`);
  return (JSON.parse(child.stdout()) as { token: string }).token;
}

export async function startServe(options: ServeOptions, description: string): Promise<ServeTarget> {
  const { serve, origin, stateDir, startupMs } = await startServeProcess(options);
  const tokens: string[] = [];
  for (let user = 1; user <= USERS; user++) tokens.push(await invite(stateDir, `bench-${user}`));
  return {
    name: options.name,
    description,
    url: `${origin}/v2/v1/models`,
    origin,
    tokens,
    startupMs,
    pids: () => (serve.child.pid ? [serve.child.pid] : []),
    stop: () => serve.stop(),
  };
}
