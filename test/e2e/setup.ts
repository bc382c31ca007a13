/**
 * Setup file of the e2e project (vitest.config.ts): what the subprocesses said is printed only for
 * a test that failed.
 */
import { afterAll, beforeEach, type RunnerTestSuite } from "vitest";
import { startedServes } from "./harness";

function show(label: string, printed: string): void {
  if (printed.trim() !== "") console.log(`--- ${label}:\n${printed.trimEnd()}\n---`);
}

// serve's output is kept by the harness and never printed while tests pass; a failing test prints
// what each serve of its file printed during it (all of it for a serve the test started itself),
// under the test's name, next to its console output (vitest `silent: "passed-only"`).
beforeEach(({ onTestFailed }) => {
  const before = new Map(startedServes.map((serve) => [serve, serve.output().length]));
  onTestFailed(() => {
    for (const serve of startedServes) show(`${serve.label} printed during this test`, serve.output().slice(before.get(serve) ?? 0));
  });
});

// A beforeAll that throws (in the file or in a describe) fails no test, so no onTestFailed runs: then
// everything each serve of the file printed goes under the file. (A suite's own errors come only
// from its hooks; a failed test records its errors on the test.)
const hookFailed = (suite: RunnerTestSuite): boolean =>
  (suite.result?.errors?.length ?? 0) > 0 || suite.tasks.some((task) => task.type === "suite" && hookFailed(task));
// vitest 4 passes the suite second, after a fixtures argument that must be a destructuring pattern.
// eslint-disable-next-line no-empty-pattern
afterAll(({}, file) => {
  if (hookFailed(file)) for (const serve of startedServes) show(`${serve.label} printed`, serve.output());
});

// DEP0123 ("Setting the TLS ServerName to an IP address is not permitted by RFC 6066"), and only it,
// is dropped: its one source here is tls.test.ts's pinnedGet, whose servername is the Host it sends,
// "127.0.0.1" in the operator-certificate test (`grep -rn servername cli src` finds none). Node
// prints it once per process straight to stderr, outside vitest's console capture, so it sat at the
// top of every run (2 lines with its --trace-deprecation hint). serve's own warnings go to its
// output (above), not through this process.
const filtered = Symbol.for("halo-gate.test.emitWarning");
const host = process as NodeJS.Process & { [filtered]?: true };
if (!host[filtered]) {
  host[filtered] = true;
  const emitWarning = process.emitWarning.bind(process) as (...args: unknown[]) => void;
  process.emitWarning = ((warning: string | Error, ...rest: unknown[]) => {
    const first = rest[0];
    const code = warning instanceof Error ? (warning as Error & { code?: string }).code : typeof first === "object" && first !== null ? (first as { code?: string }).code : rest[1];
    if (code === "DEP0123") return;
    emitWarning(warning, ...rest);
  }) as typeof process.emitWarning;
}
