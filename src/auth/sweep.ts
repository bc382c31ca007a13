/**
 * The cron sweep. Validity is checked on every request, so this only tidies and records: each
 * expired token gets `expired_recorded_at` and one audit row, and audit rows past retention are
 * pruned. Running it twice at the same instant changes nothing the second time.
 */
import type { GatewayConfig } from "../shared/config";

export interface SweepResult {
  expired: number;
  pruned: number;
}

const DAY_MS = 86_400_000;

export async function sweepExpiredTokens(db: D1Database, config: GatewayConfig, now: number): Promise<SweepResult> {
  const cutoff = now - config.audit_retention_days * DAY_MS;
  // One batch = one transaction: the audit rows and the marks are written together or not at all.
  const [, marked, pruned] = await db.batch([
    db
      .prepare(
        `INSERT INTO audit (at, kind, action, handle, token_id, reason)
         SELECT ?1, 'cron', 'expire', handle, token_id, 'expired at ' || strftime('%Y-%m-%dT%H:%M:%fZ', expires_at / 1000.0, 'unixepoch')
         FROM tokens WHERE revoked_at IS NULL AND expired_recorded_at IS NULL AND expires_at <= ?1`,
      )
      .bind(now),
    db
      .prepare(
        "UPDATE tokens SET expired_recorded_at = ?1 WHERE revoked_at IS NULL AND expired_recorded_at IS NULL AND expires_at <= ?1",
      )
      .bind(now),
    db.prepare("DELETE FROM audit WHERE at < ?1").bind(cutoff),
  ]);
  return { expired: marked?.meta.changes ?? 0, pruned: pruned?.meta.changes ?? 0 };
}
