/**
 * `import-bearers`: the old Caddy bearer file into D1. Idempotent (a token already stored is
 * skipped by its hash), never revives a revoked token, imports expired lines as expired, and
 * counts seats exactly like invite (the same conditional INSERT). A line whose handle was revoked
 * (or rotated) after the line was issued is refused: the old Caddy line is a credential the operator
 * has since withdrawn, and importing it would silently bring the revoked user back.
 */
import { auditStatement, conditionalAuditStatement } from "../audit/audit-log";
import { generateTokenId, hashToken, tokenHint } from "../auth/token";
import type { GatewayConfig } from "../shared/config";
import { parseBearersFile } from "./caddy-bearers";
import { checkScopes, insertTokenIfSeat, iso, refusal } from "./users";
import type { ImportReport } from "../shared/admin-wire";

/** The handle's latest revocation after `issuedAt`, if any. */
const REVOKED_AFTER = "SELECT revoked_at, revoke_reason FROM tokens WHERE handle = ?1 AND revoked_at > ?2 ORDER BY revoked_at DESC LIMIT 1";

export async function importBearers(db: D1Database, config: GatewayConfig, text: string, scopes: string[], now: number): Promise<ImportReport> {
  checkScopes(config, scopes);
  const { entries, malformed } = parseBearersFile(text);
  const report: ImportReport = { imported: [], skipped: [], refused: [], malformed };
  const firstLineOf = new Map<string, number>();
  for (const entry of entries) {
    const earlier = firstLineOf.get(entry.token);
    if (earlier !== undefined) {
      report.skipped.push({ line: entry.line, handle: entry.handle, reason: `duplicate of line ${earlier}` });
      continue;
    }
    firstLineOf.set(entry.token, entry.line);
    const hash = await hashToken(entry.token);
    const existing = await db.prepare("SELECT handle, revoked_at FROM tokens WHERE token_hash = ?1").bind(hash).first<{ handle: string; revoked_at: number | null }>();
    if (existing) {
      const reason = existing.revoked_at !== null ? "revoked earlier; a revoked token is never revived" : "already imported";
      report.skipped.push({ line: entry.line, handle: entry.handle, reason });
      continue;
    }
    const tokenId = generateTokenId();
    const row = { tokenId, hash, hint: tokenHint(entry.token), handle: entry.handle, scopes, issuedAt: entry.issuedAt, expiresAt: entry.expiresAt, source: "import" };
    const [, inserted, withdrawn] = await db.batch([
      db.prepare("INSERT INTO users (handle, created_at) VALUES (?1, ?2) ON CONFLICT(handle) DO NOTHING").bind(entry.handle, now),
      insertTokenIfSeat(db, config, row, now),
      // In the same transaction, so a revoke racing the import cannot slip between a check and the insert.
      db.prepare("DELETE FROM tokens WHERE token_id = ?1 AND EXISTS (SELECT 1 FROM tokens WHERE handle = ?2 AND revoked_at > ?3)").bind(tokenId, entry.handle, entry.issuedAt),
      conditionalAuditStatement(
        db,
        { at: now, kind: "admin", action: "import", handle: entry.handle, tokenId, status: 201, detail: { line: entry.line, scopes, expires_at: iso(entry.expiresAt) } },
        "EXISTS (SELECT 1 FROM tokens WHERE token_id = ?11)",
        tokenId,
      ),
    ]);
    if (withdrawn?.meta.changes) {
      const revoked = await db.prepare(REVOKED_AFTER).bind(entry.handle, entry.issuedAt).first<{ revoked_at: number; revoke_reason: string | null }>();
      const how = revoked?.revoke_reason === "rotated" ? "given a new token (rotate)" : "revoked";
      report.refused.push({
        line: entry.line,
        handle: entry.handle,
        code: "revoked_after_issue",
        reason: `${entry.handle} was ${how} at ${iso(revoked?.revoked_at ?? now)}, after this line was issued (${iso(entry.issuedAt)}); an old line does not bring the user back (use 'halo-gate invite ${entry.handle}')`,
      });
    } else if (inserted?.meta.changes) {
      report.imported.push({ line: entry.line, handle: entry.handle, token_id: tokenId, status: entry.expiresAt > now ? "active" : "expired" });
    } else {
      const refused = await refusal(db, config, entry.handle, now);
      report.refused.push({ line: entry.line, handle: entry.handle, code: refused.refusal.code, reason: refused.message });
    }
  }
  await auditStatement(db, {
    at: now,
    kind: "admin",
    action: "import-bearers",
    status: 200,
    detail: { imported: report.imported.length, skipped: report.skipped.length, refused: report.refused.length, malformed: report.malformed.length },
  }).run();
  return report;
}
