/**
 * Auth decisions (allow / deny + reason) go to the audit log off the request path: buffered per
 * isolate and written in one batch about a second after the first buffered event, so a crash loses
 * at most the last second (SPEC §6).
 */
import { auditStatement, type AuditEvent } from "./audit-log";

/** A crash may lose at most this much of the auth audit (SPEC §6: one second). */
export const AUTH_AUDIT_FLUSH_MS = 1_000;
const MAX_BUFFER = 500;

let buffer: AuditEvent[] = [];
let scheduled: Promise<void> | null = null;

async function flush(db: D1Database): Promise<void> {
  const events = buffer;
  buffer = [];
  scheduled = null;
  if (events.length === 0) return;
  try {
    await db.batch(events.map((event) => auditStatement(db, event)));
  } catch (error) {
    console.error(`halo-gate: could not write ${events.length} auth audit event(s): ${(error as Error).message}`);
  }
}

/** Buffers one decision; the request that starts a batch keeps the isolate alive until it is written. */
export function recordAuthDecision(
  db: D1Database,
  ctx: { waitUntil(promise: Promise<unknown>): void },
  event: Omit<AuditEvent, "kind">,
  flushAfterMs = AUTH_AUDIT_FLUSH_MS,
): void {
  buffer.push({ ...event, kind: "auth" });
  if (buffer.length >= MAX_BUFFER) {
    ctx.waitUntil(flush(db));
    return;
  }
  if (!scheduled) {
    scheduled = new Promise<void>((resolve) => setTimeout(resolve, flushAfterMs)).then(() => flush(db));
    ctx.waitUntil(scheduled);
  }
}
