/**
 * Auth decisions (allow / deny + reason) go to the audit log off the request path: buffered per
 * isolate and written in one batch about a second after the first buffered event, so a crash loses
 * at most the last second (docs/contract.md §6).
 *
 * Bounded growth (issue 9, item 7). Requests without credentials are not throttled, and a flood of
 * them from one address once wrote one row each (~2,500 rows/s). Now every DENIAL is aggregated:
 * identical denials — same client address, route, reason, status and token (none for `missing`,
 * `malformed`, `unknown`) — within one aligned window of `AUTH_AUDIT_WINDOW_MS` (60 s, on the
 * event's own clock) are ONE row whose `count` says how many there were. The first flush of a window
 * inserts the row, later flushes add to its count (an upsert on `aggregate_key`, unique in D1, so
 * this holds across isolates and processes too, not only within this buffer). The row's time is the
 * first denial of the window; its `detail.window` gives the window; its count is final about a
 * second after the window ends. Allow rows (and tickets issued) stay one row per request: those
 * requests carry a valid token, so they are the user's own (and, with quotas on, within its rate).
 *
 * THE BOUND. Per client address, every aligned minute, at most one deny row per (route, reason,
 * status, token). A flood of requests with no credentials at one route from one address therefore
 * adds 1 row per minute (2 in a sliding minute that straddles a window boundary), whatever its rate.
 * An address without a valid token can reach only the reasons `missing`, `malformed` and `unknown`
 * (`revoked`/`expired` need a real, finished token; `scope`/`quota:*` a valid one), so it adds at
 * most 3 × (authenticated routes + 2 for `/auth/ticket` and `/api/me`) rows per minute over every
 * route — 18 with the default routes (v2, lemon, sd, audio) — and one more per (route, reason) for every real token
 * it holds. Why every denial and not only `missing`: `scope` and `quota:*` denials are not
 * throttled either (a valid token on the wrong route, or a client hammering past its rate limit),
 * so they could grow the table the same way; the probing reasons (`malformed`, `unknown`, …) are
 * throttled after 10 failures, but an isolate learns that an address is blocked only after the
 * throttle object answers, so a fast burst still reaches the audit, and the client address
 * `unknown` (no edge in front) is never throttled at all.
 */
import { aggregatedAuditStatement, auditStatement, type AuditEvent } from "./audit-log";

/** A crash may lose at most this much of the auth audit (docs/contract.md §6: one second). */
export const AUTH_AUDIT_FLUSH_MS = 1_000;
/** Identical denials within one aligned window of this length are one audit row with a count. */
export const AUTH_AUDIT_WINDOW_MS = 60_000;
/** Buffered entries (single rows plus aggregates) that trigger an early flush. */
const MAX_BUFFER = 500;

interface Aggregate {
  event: AuditEvent;
  count: number;
}

let singles: AuditEvent[] = [];
let aggregates = new Map<string, Aggregate>();
let scheduled: Promise<void> | null = null;

/** The aggregation key of a denial (its window and what identical denials share); null: one row per event. */
function aggregateKey(event: AuditEvent): string | null {
  if (event.kind !== "auth" || event.action !== "deny") return null;
  const window = Math.floor(event.at / AUTH_AUDIT_WINDOW_MS) * AUTH_AUDIT_WINDOW_MS;
  return JSON.stringify([window, event.action, event.client ?? null, event.route ?? null, event.reason ?? null, event.status ?? null, event.tokenId ?? null, event.handle ?? null]);
}

function windowDetail(at: number): Record<string, unknown> {
  const start = Math.floor(at / AUTH_AUDIT_WINDOW_MS) * AUTH_AUDIT_WINDOW_MS;
  return { window: { from: new Date(start).toISOString(), to: new Date(start + AUTH_AUDIT_WINDOW_MS).toISOString() } };
}

async function flush(db: D1Database): Promise<void> {
  const rows = singles;
  const grouped = aggregates;
  singles = [];
  aggregates = new Map();
  scheduled = null;
  const statements = [
    ...rows.map((event) => auditStatement(db, event)),
    ...[...grouped].map(([key, { event, count }]) => aggregatedAuditStatement(db, event, count, key)),
  ];
  if (statements.length === 0) return;
  try {
    await db.batch(statements);
  } catch (error) {
    const events = rows.length + [...grouped.values()].reduce((sum, { count }) => sum + count, 0);
    console.error(`halo-gate: could not write ${events} auth audit event(s): ${(error as Error).message}`);
  }
}

/** Buffers one decision; the request that starts a batch keeps the isolate alive until it is written. */
export function recordAuthDecision(
  db: D1Database,
  ctx: { waitUntil(promise: Promise<unknown>): void },
  event: Omit<AuditEvent, "kind">,
  flushAfterMs = AUTH_AUDIT_FLUSH_MS,
): void {
  const full: AuditEvent = { ...event, kind: "auth" };
  const key = aggregateKey(full);
  if (key === null) {
    singles.push(full);
  } else {
    const pending = aggregates.get(key);
    if (pending) pending.count += 1;
    else aggregates.set(key, { event: { ...full, detail: { ...full.detail, ...windowDetail(full.at) } }, count: 1 });
  }
  if (singles.length + aggregates.size >= MAX_BUFFER) {
    ctx.waitUntil(flush(db));
    return;
  }
  if (!scheduled) {
    scheduled = new Promise<void>((resolve) => setTimeout(resolve, flushAfterMs)).then(() => flush(db));
    ctx.waitUntil(scheduled);
  }
}
