/**
 * How doctor's checks are shown: one line each, `✓`/`✗`/`!`/`-` on a terminal, plain
 * `ok`/`FAIL`/`WARN`/`SKIP` when stdout is not a terminal or NO_COLOR is set (logs, pipes, CI; the
 * same rule as colour in cli/output.ts), with the fix on the same line so a line grepped out of a
 * log is complete; or the checks as JSON. cli/output.ts escapes whatever the details quote.
 */
import type { Check, Status } from "./check";

const MARK: Record<Status, { symbol: string; plain: string }> = {
  ok: { symbol: "✓", plain: "ok  " },
  warn: { symbol: "!", plain: "WARN" },
  fail: { symbol: "✗", plain: "FAIL" },
  skip: { symbol: "-", plain: "SKIP" },
};

export function renderText(checks: Check[], stateDir: string, plain: boolean): string {
  const width = Math.max(...checks.map((entry) => entry.name.length));
  const lines = checks.map((entry) => {
    const fix = entry.fix === undefined ? "" : plain ? ` -- fix: ${entry.fix}` : ` → fix: ${entry.fix}`;
    return `${plain ? MARK[entry.status].plain : MARK[entry.status].symbol} ${entry.name.padEnd(width)}  ${entry.detail}${fix}`;
  });
  const failed = checks.filter((entry) => entry.status === "fail").length;
  const warned = checks.filter((entry) => entry.status === "warn").length;
  const summary = failed > 0 ? `${failed} check(s) failed${warned ? `, ${warned} warning(s)` : ""}` : warned > 0 ? `nothing failed, ${warned} warning(s)` : "all checks passed";
  return [`halo-gate doctor: state dir ${stateDir}`, ...lines, summary].join("\n");
}

/** The --json document. */
export const jsonReport = (checks: Check[], stateDir: string) => ({ ok: !checks.some((entry) => entry.status === "fail"), state_dir: stateDir, checks });
