/**
 * Every process and temp dir the bench starts is registered here, so that a normal end, an error
 * and Ctrl-C (SIGINT/SIGTERM) all end them: SIGTERM to each, then SIGKILL to whatever is left of
 * it and of its descendants (a serve's workerd children) after a grace period.
 */
import { spawn, type ChildProcess, type SpawnOptions } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface Managed {
  name: string;
  child: ChildProcess;
  /** stdout + stderr so far (the last 64 KiB). */
  output(): string;
  /** stdout alone (the last 64 KiB). */
  stdout(): string;
  exited: Promise<number | null>;
  /** SIGTERM, then SIGKILL for it and its descendants after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
}

const running = new Set<Managed>();
const dirs = new Set<string>();
/** Set once cleanup began (Ctrl-C): nothing new is started after it. */
let stopping = false;
/** Set by SIGINT/SIGTERM: errors after it are the interruption's, not worth reporting. */
let interrupted = false;
export const wasInterrupted = () => interrupted;

export function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  dirs.add(dir);
  return dir;
}

/** `graceMs`: how long `stop` waits after SIGTERM before SIGKILL (serve finishes in-flight requests). */
export function spawnManaged(name: string, command: string, args: string[], options: SpawnOptions & { graceMs?: number } = {}): Managed {
  if (stopping) throw new Error(`not starting ${name}: the bench is stopping`);
  const { graceMs: defaultGraceMs = 5_000, ...spawnOptions } = options;
  const child = spawn(command, args, { ...spawnOptions, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  let stdout = "";
  const append = (chunk: Buffer) => {
    output = (output + chunk.toString("utf8")).slice(-65_536);
  };
  child.stdout!.on("data", (chunk: Buffer) => {
    stdout = (stdout + chunk.toString("utf8")).slice(-65_536);
    append(chunk);
  });
  child.stderr!.on("data", append);
  const exited = new Promise<number | null>((resolve) => {
    child.on("exit", (code, signal) => resolve(code ?? (signal ? 128 : null)));
    child.on("error", () => resolve(-1));
  });
  const managed: Managed = {
    name,
    child,
    output: () => output,
    stdout: () => stdout,
    exited,
    async stop(graceMs = defaultGraceMs) {
      running.delete(managed);
      const pid = child.pid;
      if (pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
      const tree = descendants(pid);
      child.kill("SIGTERM");
      const ended = await Promise.race([exited.then(() => true), sleep(graceMs).then(() => false)]);
      if (!ended) child.kill("SIGKILL");
      await exited;
      // Children that outlived their parent (reparented) are ended too, if still the same process.
      for (const { pid: childPid, start } of tree) if (startTime(childPid) === start) kill(childPid, "SIGKILL");
    },
  };
  running.add(managed);
  return managed;
}

/** Ends everything still running and removes the temp dirs. */
export async function cleanupAll(): Promise<void> {
  stopping = true;
  await Promise.all([...running].map((managed) => managed.stop()));
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  dirs.clear();
}

/** Ctrl-C / SIGTERM: clean up, then exit with the conventional code. */
export function cleanupOnSignals(): void {
  for (const [signal, code] of [["SIGINT", 130], ["SIGTERM", 143]] as const) {
    process.on(signal, () => {
      if (interrupted) return;
      interrupted = true;
      console.error(`\nbench: ${signal}: stopping everything it started…`);
      void cleanupAll().finally(() => process.exit(code));
    });
  }
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Resolves once 127.0.0.1:port accepts a TCP connection; fails if `owner` exits or time runs out. */
export async function waitForPort(port: number, owner: Managed, timeoutMs = 15_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  let exited = false;
  void owner.exited.then(() => (exited = true));
  while (performance.now() < deadline) {
    if (exited) throw new Error(`${owner.name} exited before listening:\n${owner.output()}`);
    const open = await new Promise<boolean>((resolve) => {
      const socket = connect(port, "127.0.0.1");
      socket.once("connect", () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (open) return;
    await sleep(20);
  }
  throw new Error(`${owner.name} did not listen on 127.0.0.1:${port} within ${timeoutMs} ms:\n${owner.output()}`);
}

function kill(pid: number, signal: NodeJS.Signals) {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

interface ProcStat {
  pid: number;
  ppid: number;
  comm: string;
  start: string;
}

function readStat(pid: number | string): ProcStat | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, "utf8");
    // "pid (comm) state ppid … starttime(22nd field)…"; comm may contain spaces and parentheses.
    const close = text.lastIndexOf(")");
    const fields = text.slice(close + 2).split(" ");
    return { pid: Number(pid), ppid: Number(fields[1]), comm: text.slice(text.indexOf("(") + 1, close), start: fields[19] ?? "" };
  } catch {
    return undefined;
  }
}

const startTime = (pid: number) => readStat(pid)?.start;

/** All descendants of `pid` (children found through /proc/PID/stat's ppid), with their start times. */
export function descendants(pid: number): ProcStat[] {
  const all = readdirSync("/proc")
    .filter((entry) => /^\d+$/.test(entry))
    .map(readStat)
    .filter((stat): stat is ProcStat => stat !== undefined);
  const found: ProcStat[] = [];
  const parents = new Set([pid]);
  for (let grew = true; grew; ) {
    grew = false;
    for (const stat of all) {
      if (parents.has(stat.ppid) && !parents.has(stat.pid)) {
        parents.add(stat.pid);
        found.push(stat);
        grew = true;
      }
    }
  }
  return found;
}

export interface ProcessRss {
  pid: number;
  name: string;
  rssMb: number;
}

/** VmRSS of a process and of each of its descendants, from /proc/PID/status. */
export function treeRss(pid: number): ProcessRss[] {
  const rss = (stat: { pid: number; comm: string }): ProcessRss => {
    let kb = 0;
    try {
      kb = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${stat.pid}/status`, "utf8"))?.[1] ?? 0);
    } catch {
      // gone
    }
    return { pid: stat.pid, name: stat.comm, rssMb: kb / 1024 };
  };
  const self = readStat(pid);
  return self ? [rss(self), ...descendants(pid).map(rss)] : [];
}

/** Ctrl-C or a service stop: run `cleanup` once, then exit 130 (SIGINT) or 143 (SIGTERM). Returns "was it?". */
export function cleanUpOnSignals(name: string, cleanup: () => Promise<unknown>): () => boolean {
  let interrupted = false;
  for (const [signal, code] of [["SIGINT", 130], ["SIGTERM", 143]] as const) {
    process.on(signal, () => {
      if (interrupted) return;
      interrupted = true;
      console.error(`\n${name}: ${signal}: stopping everything it started…`);
      void cleanup().finally(() => process.exit(code));
    });
  }
  return () => interrupted;
}
