/**
 * Runs the real `halo-gate` CLI and `serve` as subprocesses, each serve with its own state dir,
 * loopback ports chosen by the kernel, and a wrangler.toml whose routes point at test upstreams.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { writeWranglerCopy } from "../support/wrangler-copy";

export const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const BIN = join(ROOT, "bin/halo-gate.mjs");

export const tempDir = (prefix = "halo-gate-") => mkdtempSync(join(tmpdir(), prefix));

/** A copy of wrangler.toml with every route's upstream moved to `upstreamPort` and config overrides. */
export function testWranglerConfig(upstreamPort: number, overrides: Record<string, unknown> = {}, routeUpstreams: Record<string, string> = {}): string {
  return writeWranglerCopy(tempDir("halo-gate-config-"), (halo) => {
    halo.routes = halo.routes.map((route) => ({
      ...route,
      upstream: routeUpstreams[String(route.name)] ?? String(route.upstream).replace(/^(\w+):\/\/127\.0\.0\.1:\d+/, `$1://127.0.0.1:${upstreamPort}`),
    }));
    Object.assign(halo, overrides);
  });
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return new Promise((resolvePromise) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk) => (stdout += chunk));
    child.stderr.on("data", (chunk) => (stderr += chunk));
    child.on("close", (code) => resolvePromise({ code, stdout, stderr }));
  });
}

export interface Serve {
  process: ChildProcess;
  url: string;
  stateDir: string;
  output(): string;
  /** Resolves with the exit code. */
  exited: Promise<number | null>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/**
 * Every serve this test file started, with what it printed. Nothing of it reaches the terminal
 * while tests pass; test/e2e/setup.ts prints, for a failing test, what each serve printed during it.
 */
export const startedServes: Array<{ label: string; output(): string }> = [];

export async function startServe(options: { stateDir?: string; args?: string[]; env?: NodeJS.ProcessEnv; config?: string } = {}): Promise<Serve> {
  const stateDir = options.stateDir ?? tempDir();
  const args = ["serve", "--state", stateDir, "--admin-bind", "127.0.0.1:0", ...(options.config ? ["--config", options.config] : []), ...(options.args ?? ["--bind", "127.0.0.1:0"])];
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...options.env }, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout!.on("data", (chunk) => (output += chunk));
  child.stderr!.on("data", (chunk) => (output += chunk));
  startedServes.push({ label: `halo-gate ${args.join(" ")} (pid ${child.pid})`, output: () => output });
  const exited = new Promise<number | null>((resolvePromise) => child.on("exit", (code) => resolvePromise(code)));
  const url = await new Promise<string>((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`serve did not start in 30 s:\n${output}`)), 30_000);
    const check = () => {
      const match = /halo-gate listening on (https?:\/\/\S+)/.exec(output);
      if (match) {
        clearTimeout(timer);
        resolvePromise(match[1]!);
      }
    };
    child.stdout!.on("data", check);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`serve exited with ${code} before listening:\n${output}`));
    });
  });
  return {
    process: child,
    url,
    stateDir,
    output: () => output,
    exited,
    async stop(signal = "SIGTERM") {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      // A serve that does not finish within its grace and a margin is a failure to see, not a hang.
      const killer = setTimeout(() => child.kill("SIGKILL"), 45_000);
      const code = await exited;
      clearTimeout(killer);
      return code;
    },
  };
}

/** Listening TCP sockets (from /proc/net/tcp) on an IPv4 address, as ports. */
export function listeningPorts(address: string): number[] {
  const hex = address
    .split(".")
    .map((octet) => Number(octet).toString(16).padStart(2, "0"))
    .reverse()
    .join("")
    .toUpperCase();
  return readFileSync("/proc/net/tcp", "utf8")
    .split("\n")
    .slice(1)
    .map((line) => line.trim().split(/\s+/))
    .filter((fields) => fields[3] === "0A" && fields[1]?.startsWith(`${hex}:`))
    .map((fields) => parseInt(fields[1]!.split(":")[1]!, 16));
}

export const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

export async function inviteJson(stateDir: string, handle: string, extra: string[] = []): Promise<{ token: string; token_id: string }> {
  const result = await cli(["invite", handle, "--json", "--state", stateDir, ...extra]);
  if (result.code !== 0) throw new Error(`invite ${handle} failed: ${result.stderr}`);
  return JSON.parse(result.stdout) as { token: string; token_id: string };
}
