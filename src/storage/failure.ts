/**
 * Recognises a failure of D1 or Durable Object storage — a full disk, an I/O error, an object reset
 * by a failed write — so the gateway answers 503 with Retry-After (the request may well succeed once
 * the operator frees space) instead of a 500 that reads like a bug.
 *
 * Measured with miniflare 4.20260426 (workerd) on a full tmpfs:
 * - D1 throws `Error("database or disk is full: SQLITE_FULL")` with `remote: true` and no `D1_ERROR`
 *   prefix (that prefix is on errors D1 returns as a result, e.g. a constraint or a missing table);
 *   on a full disk every D1 query fails, reads included, because miniflare's D1 records a session
 *   bookmark (a write) after each one.
 * - A Durable Object `storage.put` throws the same message with `durableObjectReset: true`; reads of
 *   an existing object still work. Creating a new object's database fails with workerd's opaque
 *   `internal error; reference = …`, which is not recognisable (the quota path answers it with
 *   503 quota_unavailable anyway).
 * - Everything works again as soon as space is freed, without a restart.
 */
const STORAGE_MESSAGES = [/^D1_(?:EXEC_)?ERROR\b/, /\bSQLITE_[A-Z_]+\b/, /database or disk is full/i, /Durable Object storage/i];

export function isStorageFailure(error: unknown, depth = 0): boolean {
  if (!(error instanceof Error) || depth > 3) return false;
  if ((error as Error & { durableObjectReset?: unknown }).durableObjectReset === true) return true;
  return STORAGE_MESSAGES.some((pattern) => pattern.test(error.message)) || isStorageFailure(error.cause, depth + 1);
}
