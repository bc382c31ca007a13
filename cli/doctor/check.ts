/**
 * One diagnosis of `halo-gate doctor`: what was looked at, how it stands, and — for anything not
 * ok — the fix, worded as the command or action to take. Every check always reports (a check that
 * cannot run says why as `skip`), so the output always names every check, in the same order.
 */
export type Status = "ok" | "warn" | "fail" | "skip";

export interface Check {
  /** Stable identifier for --json consumers: `state-dir`, `serve`, … */
  id: string;
  /** Shown in the text output. */
  name: string;
  status: Status;
  detail: string;
  fix?: string;
  /** Machine-readable facts for --json (free bytes, pid, fingerprint, …). */
  data?: Record<string, unknown>;
}

export const check = (id: string, name: string, status: Status, detail: string, fix?: string, data?: Record<string, unknown>): Check => ({
  id,
  name,
  status,
  detail,
  ...(fix === undefined ? {} : { fix }),
  ...(data === undefined ? {} : { data }),
});

/** The first line of an error, for a one-line detail. */
export const reason = (error: unknown): string => {
  const failure = error as NodeJS.ErrnoException;
  return (failure.code && !failure.message.includes(failure.code) ? `${failure.code}: ` : "") + (failure.message ?? String(error)).split("\n")[0]!;
};

/** `0o700` → `0700`. */
export const octal = (mode: number) => `0${(mode & 0o777).toString(8).padStart(3, "0")}`;
