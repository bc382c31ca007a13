/**
 * `import-bearers`: the old Caddy bearer file into D1. Idempotent (a token already stored is
 * skipped by its hash), never revives a revoked token, imports expired lines as expired, and
 * counts seats exactly like invite (the same conditional INSERT).
 */
import { auditStatement, conditionalAuditStatement } from "../audit/audit-log";
import { generateTokenId, hashToken, tokenHint } from "../auth/token";
import type { GatewayConfig } from "../config/schema";
import { parseBearersFile } from "./caddy-bearers";
import { checkScopes, insertTokenIfSeat, iso, refusal } from "./users";
import type { ImportReport } from "./wire";

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
    const [, inserted] = await db.batch([
      db.prepare("INSERT INTO users (handle, created_at) VALUES (?1, ?2) ON CONFLICT(handle) DO NOTHING").bind(entry.handle, now),
      insertTokenIfSeat(db, config, row, now),
      conditionalAuditStatement(
        db,
        { at: now, kind: "admin", action: "import", handle: entry.handle, tokenId, status: 201, detail: { line: entry.line, scopes, expires_at: iso(entry.expiresAt) } },
        "EXISTS (SELECT 1 FROM tokens WHERE token_id = ?11)",
        tokenId,
      ),
    ]);
    if (inserted?.meta.changes) {
      report.imported.push({ line: entry.line, handle: entry.handle, token_id: tokenId, status: entry.expiresAt > now ? "active" : "expired" });
    } else {
      report.refused.push({ line: entry.line, handle: entry.handle, reason: (await refusal(db, config, entry.handle, now)).message });
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
