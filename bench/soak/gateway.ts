/**
 * The soak's processes: the fake upstream (its own process, so it can be killed and restarted on
 * the same port), `halo-gate serve` on a fixed state dir (restartable on the same port after a
 * `kill -9`), the admin CLI, and the RSS of serve's process tree from /proc. Everything is started
 * through bench/lib/processes.ts, so a normal end, an error and Ctrl-C all end it; the one process
 * that outlives its parent — the workerd of a `kill -9`'d serve — is tracked here by pid and start
 * time and ended too if still there.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { writeWranglerCopy } from "../../test/support/wrangler-copy.ts";
import { spawnManaged, tempDir, treeRss, type Managed, type ProcessRss } from "../lib/processes.ts";

export const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const BIN = join(ROOT, "bin/halo-gate.mjs");

/** Resolves with the first match of `pattern` in the process's stdout; fails if it exits or time runs out. */
function waitForLine(managed: Managed, pattern: RegExp, timeoutMs: number): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    const check = () => {
      const match = pattern.exec(managed.stdout());
      if (match) {
        clearTimeout(timer);
        managed.child.stdout!.off("data", check);
        resolve(match);
      }
    };
    const timer = setTimeout(() => reject(new Error(`${managed.name}: no "${pattern.source}" within ${timeoutMs} ms:\n${managed.output()}`)), timeoutMs);
    managed.child.stdout!.on("data", check);
    void managed.exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`${managed.name} exited with ${code} before "${pattern.source}":\n${managed.output()}`));
    });
    check();
  });
}

export interface Upstream {
  managed: Managed;
  port: number;
}

/** The fake LLM upstream on `port` (0: the kernel chooses), logging completed responses to `log`. */
export async function startUpstream(port: number, log: string): Promise<Upstream> {
  const managed = spawnManaged(`upstream:${port}`, process.execPath, ["--import", "tsx", join(ROOT, "bench/soak/upstream.ts"), "--port", String(port), "--log", log], { cwd: ROOT, graceMs: 2_000 });
  const match = await waitForLine(managed, /soak-upstream listening on (\d+)/, 20_000);
  return { managed, port: Number(match[1]) };
}

/** A wrangler.toml copy: the v2 route at the soak's upstream, a short upstream timeout. */
export function soakConfig(upstreamPort: number, overrides: Record<string, unknown>): string {
  return writeWranglerCopy(tempDir("halo-gate-soak-config-"), (halo) => {
    halo.routes = halo.routes.map((route) => (route.name === "v2" ? { ...route, upstream: `http://127.0.0.1:${upstreamPort}` } : route));
    Object.assign(halo, overrides);
  });
}

export interface Serve {
  managed: Managed;
  origin: string;
  port: number;
  startupMs: number;
}

/** `halo-gate serve` on 127.0.0.1:`port` (0 the first time) with the soak's state dir and config. */
export async function startServe(stateDir: string, config: string, port: number, name: string): Promise<Serve> {
  const started = performance.now();
  const managed = spawnManaged(name, process.execPath, [BIN, "serve", "--state", stateDir, "--config", config, "--bind", `127.0.0.1:${port}`, "--admin-bind", "127.0.0.1:0"], {
    cwd: ROOT,
    // At the soak's end nothing is in flight, so SIGTERM ends serve at once; on an error path the
    // soak does not wait out serve's 30 s drain.
    graceMs: 10_000,
  });
  const match = await waitForLine(managed, /halo-gate listening on (http:\/\/127\.0\.0\.1:(\d+))/, 60_000);
  return { managed, origin: match[1]!, port: Number(match[2]), startupMs: performance.now() - started };
}

export interface CliResult {
  code: number | null;
  stdout: string;
  output: string;
}

/** One admin CLI call against the soak's state dir, bounded in time (killed after `timeoutMs`). */
export async function cli(stateDir: string, args: string[], timeoutMs = 30_000): Promise<CliResult> {
  const managed = spawnManaged(`halo-gate ${args[0]}`, process.execPath, [BIN, ...args, "--state", stateDir], { cwd: ROOT, graceMs: 1_000 });
  // The whole stdout (the managed process keeps only its last 64 KiB; an audit export is larger).
  const chunks: Buffer[] = [];
  managed.child.stdout!.on("data", (chunk: Buffer) => chunks.push(chunk));
  const closed = new Promise<void>((resolve) => managed.child.once("close", () => resolve()));
  const timer = setTimeout(() => void managed.stop(), timeoutMs);
  const code = await managed.exited;
  await closed; // every byte of stdout read
  clearTimeout(timer);
  await managed.stop(); // unregisters it (already exited)
  return { code, stdout: Buffer.concat(chunks).toString("utf8"), output: managed.output() };
}

export async function cliJson<T>(stateDir: string, args: string[]): Promise<T> {
  const result = await cli(stateDir, args);
  if (result.code !== 0) throw new Error(`halo-gate ${args.join(" ")} exited with ${result.code}:\n${result.output}`);
  return JSON.parse(result.stdout) as T;
}

/** `halo-gate audit`: NDJSON, one event a line. */
export async function auditEvents(stateDir: string): Promise<AuditEvent[]> {
  const result = await cli(stateDir, ["audit"]);
  if (result.code !== 0) throw new Error(`halo-gate audit exited with ${result.code}:\n${result.output}`);
  return result.stdout
    .split("\n")
    .filter(Boolean)
    .map((line) => JSON.parse(line) as AuditEvent);
}

export interface AuditEvent {
  id: number;
  time: string;
  kind: string;
  action: string;
  handle: string | null;
  token_id: string | null;
  route: string | null;
  status: number | null;
  reason: string | null;
  count: number;
}

/** What `list --json` and `usage --json` print: the admin API's own shapes. */
export type { ListedUser, UserUsage } from "../../src/shared/admin-wire.ts";

/** workerd pids serve recorded in its state dir (serve.json), with their /proc start times. */
export function recordedWorkerd(stateDir: string): Array<{ pid: number; start: string }> {
  try {
    const info = JSON.parse(readFileSync(join(stateDir, "serve.json"), "utf8")) as { workerd_pids?: number[] };
    return (info.workerd_pids ?? []).flatMap((pid) => {
      const start = processStart(pid);
      return start === undefined ? [] : [{ pid, start }];
    });
  } catch {
    return [];
  }
}

/** /proc/PID/stat start time (field 22): identifies a process across pid reuse. */
export function processStart(pid: number): string | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, "utf8");
    return text.slice(text.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

/**
 * The same process (pid and start time) and not a zombie: a killed process whose parent is gone
 * waits, as a zombie, for PID 1 to reap it; it no longer runs.
 */
export function stillRunning(entry: { pid: number; start: string }): boolean {
  try {
    const text = readFileSync(`/proc/${entry.pid}/stat`, "utf8");
    const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
    return fields[19] === entry.start && fields[0] !== "Z" && fields[0] !== "X";
  } catch {
    return false;
  }
}

/** RSS of a serve (its Node process and every descendant: workerd, esbuild…), from /proc. */
export function serveRss(serve: Serve): { processes: ProcessRss[]; totalMb: number } {
  const processes = serve.managed.child.pid ? treeRss(serve.managed.child.pid) : [];
  return { processes, totalMb: processes.reduce((sum, entry) => sum + entry.rssMb, 0) };
}
