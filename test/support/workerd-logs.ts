/**
 * A vitest reporter that holds back what workerd itself prints for the workers pool (its exceptions
 * and warnings, with their hex stack traces) and prints it only for a test file that failed.
 *
 * Why: @cloudflare/vitest-pool-workers 0.15 runs workerd with structured logging and writes every
 * warning or exception line to the vitest process's stderr as it comes (its `handleStructuredLogs`;
 * its own `ignoreMessages` already drops a few), and the pool offers no option to change that. On a
 * passing full run (2-core box, vitest 4.1.12) that was 28 of the 340 lines of output but 8 KB of
 * its 31 KB (six hex `stack:` lines of ~1,000 characters): a "WebSocket peer disconnected" as a
 * file's runner socket closed (10 times, once after the summary), the `connect(): Connection
 * refused` and "Network connection lost" traces of forward.test.ts's unreachable upstream (two per
 * request: forward() retries a replayable request once), a `Connection reset by peer`, workerd's
 * warnings about the non-ASCII bearers hostile.test.ts and auth.test.ts send on purpose and about
 * admin.test.ts reading NDJSON with .text(). All expected, and among them a real error was easy to
 * miss.
 *
 * Nothing is filtered by its text: a line is held back for the test file(s) running when it came
 * (or, between files, the file(s) that just ended), printed under that file when the file failed,
 * and dropped when it passed. Lines from before any file (workerd starting) and after the run
 * (workerd stopping) are printed when the run does not pass, dropped when it does.
 * HALO_GATE_TEST_WORKERD_LOGS=1 turns all of this off (everything live, as before), e.g. to watch a
 * test that hangs.
 */
import type { Reporter, TestModule, TestRunEndReason, Vitest } from "vitest/node";

type Write = typeof process.stderr.write;

interface Held {
  /** Lines for this file not printed yet. */
  lines: string[];
  failed: boolean;
  /** Another file of the project ran at some time with this one: some lines may be its. */
  shared: boolean;
}

/**
 * True for a write made by the pool's `handleStructuredLogs`. The pool calls
 * `process.stderr.write` (warnings, errors) or `process.stdout.write` directly from it, so the
 * caller is on the stack; anything else (vitest's own output, a test's console) passes through.
 * If a later pool renames the function, this is false and workerd's lines print live again
 * (noisy, never hidden).
 */
function fromWorkerd(): boolean {
  const stack = new Error().stack ?? "";
  return stack.includes("handleStructuredLogs") && stack.includes("vitest-pool-workers");
}

export class WorkerdLogReporter implements Reporter {
  private readonly project: string;
  private readonly live = process.env.HALO_GATE_TEST_WORKERD_LOGS === "1";
  private readonly held = new Map<string, Held>();
  /** Files of `project` running now. */
  private readonly running = new Set<string>();
  /** Files that ended while none has started since: a line between files is theirs. */
  private justEnded: string[] = [];
  private beforeAnyFile: string[] = [];
  private holding = false;
  private afterFailedRun = false;
  private afterRunHeading = false;
  private root = process.cwd();
  private readonly writes = new Map<NodeJS.WriteStream, Write>();

  /** `project`: the name of the vitest project that runs in the workers pool. */
  constructor(options: { project: string }) {
    this.project = options.project;
  }

  onInit(vitest: Vitest): void {
    this.root = vitest.config.root;
    if (this.live) return;
    // After the default reporter's onInit (this reporter is listed after it): on a terminal its
    // summary window wraps process.stdout/stderr.write in onInit, and this wrapper must be the
    // outer one to see the pool's call on the stack; an inner one would see the window's flush.
    for (const stream of [process.stdout, process.stderr]) this.wrap(stream);
  }

  onTestRunStart(): void {
    this.held.clear();
    this.running.clear();
    this.justEnded = [];
    this.beforeAnyFile = [];
    this.holding = !this.live;
    this.afterFailedRun = false;
    this.afterRunHeading = false;
  }

  /** Reported when the pool starts on the file (before its setup files and imports run). */
  onTestModuleQueued(testModule: TestModule): void {
    if (testModule.project.name !== this.project) return;
    if (this.running.size === 0) this.justEnded = [];
    this.running.add(testModule.moduleId);
    const shared = this.running.size > 1;
    this.held.set(testModule.moduleId, { lines: [], failed: false, shared });
    if (shared) for (const moduleId of this.running) this.held.get(moduleId)!.shared = true;
  }

  onTestModuleEnd(testModule: TestModule): void {
    if (testModule.project.name !== this.project) return;
    this.running.delete(testModule.moduleId);
    this.justEnded.push(testModule.moduleId);
    const held = this.held.get(testModule.moduleId);
    if (!held) return;
    held.failed = testModule.state() === "failed";
    // Printed here, under the file's result and its tests' console output; the rest at run end.
    if (held.failed) this.print(held, `while ${this.relative(testModule.moduleId)} ran`);
  }

  onTestRunEnd(_modules: ReadonlyArray<TestModule>, _errors: ReadonlyArray<unknown>, reason: TestRunEndReason): void {
    for (const [moduleId, held] of this.held) if (held.failed) this.print(held, `after ${this.relative(moduleId)} ended`);
    if (reason !== "passed" && this.beforeAnyFile.length > 0) {
      this.out(`\nworkerd output before any test file ran:\n${this.beforeAnyFile.join("")}\n`);
    }
    // What comes after the run (the last files' sockets closing, workerd shutting down) is
    // dropped after a passing run and printed as it comes, under its own heading, after a failed one.
    this.afterFailedRun = reason !== "passed";
    this.held.clear();
    this.beforeAnyFile = [];
  }

  private wrap(stream: NodeJS.WriteStream): void {
    const previous = stream.write;
    this.writes.set(stream, previous);
    const hold = (chunk: unknown): boolean => {
      if (!this.holding || !fromWorkerd()) return false;
      this.hold(String(chunk));
      return true;
    };
    stream.write = function (this: NodeJS.WriteStream, chunk: unknown, ...rest: unknown[]): boolean {
      if (hold(chunk)) {
        const callback = rest.find((arg) => typeof arg === "function") as (() => void) | undefined;
        if (callback) process.nextTick(callback);
        return true;
      }
      return (previous as (...args: unknown[]) => boolean).call(this, chunk, ...rest);
    } as Write;
  }

  private hold(text: string): void {
    if (this.afterFailedRun) {
      this.out(`${this.afterRunHeading ? "" : "\nworkerd output after the run:\n"}${text}`);
      this.afterRunHeading = true;
      return;
    }
    const owners = this.running.size > 0 ? [...this.running] : this.justEnded;
    if (owners.length === 0) {
      this.beforeAnyFile.push(text);
      return;
    }
    for (const moduleId of owners) this.held.get(moduleId)?.lines.push(text);
  }

  private relative(moduleId: string): string {
    return moduleId.startsWith(`${this.root}/`) ? moduleId.slice(this.root.length + 1) : moduleId;
  }

  private print(held: Held, when: string): void {
    if (held.lines.length === 0) return;
    const others = held.shared ? "; other test files ran in workerd at the same time" : "";
    this.out(`\nworkerd output ${when} (it failed${others}):\n${held.lines.join("")}\n`);
    held.lines = [];
  }

  /** Through the write this reporter wrapped: on a terminal, vitest's window draws it above the summary. */
  private out(text: string): void {
    const write = this.writes.get(process.stderr) ?? process.stderr.write;
    write.call(process.stderr, text);
  }
}
