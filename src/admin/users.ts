/**
 * User and token administration on D1: invite, revoke, rotate, update, list (import: import-bearers.ts).
 *
 * Race safety comes from SQLite itself: the seat cap and "one active token per user" are checked
 * inside the single INSERT that creates the token, and every change is written in one batch (one
 * transaction) with its audit row, so the audit row exists before the command returns.
 */
import { generateToken, generateTokenId, hashToken, tokenHint } from "../auth/token";
import type { GatewayConfig } from "../shared/config";
import { effectiveLimits, type LimitOverrides } from "../quota/limits";
import type { IssuedToken, TokenStatus, UserView } from "../shared/admin-wire";
import { gatewayError } from "../http/errors";
import { auditStatement, conditionalAuditStatement } from "../audit/audit-log";

export const iso = (time: number) => new Date(time).toISOString();
const isoOrNull = (time: number | null) => (time === null ? null : iso(time));

export function tokenStatus(token: { revoked_at: number | null; expires_at: number }, now: number): TokenStatus {
  if (token.revoked_at !== null) return "revoked";
  return now < token.expires_at ? "active" : "expired";
}

/** Refuses scopes that name no route, so a typo cannot mint a useless token. */
export function checkScopes(config: GatewayConfig, scopes: string[]): void {
  const known = new Set(config.routes.flatMap((route) => (route.scope ? [route.scope] : [])));
  const unknown = scopes.filter((scope) => !known.has(scope));
  if (unknown.length > 0) {
    throw gatewayError(400, {
      message: `Unknown scope ${unknown.map((scope) => `"${scope}"`).join(", ")}; routes offer ${[...known].join(", ")}.`,
      type: "invalid_request_error",
      code: "unknown_scope",
    });
  }
}

/**
 * One statement that inserts the token only when it may exist: the handle holds no active token
 * and a seat is free (an already-expired token, as an import may bring, takes no seat).
 */
export function insertTokenIfSeat(
  db: D1Database,
  config: GatewayConfig,
  row: { tokenId: string; hash: string; hint: string; handle: string; scopes: string[]; issuedAt: number; expiresAt: number; source: string },
  now: number,
): D1PreparedStatement {
  return db
    .prepare(
      `INSERT INTO tokens (token_id, token_hash, hint, handle, scopes, issued_at, expires_at, source)
       SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8
       WHERE ?7 <= ?9
          OR (NOT EXISTS (SELECT 1 FROM tokens WHERE handle = ?4 AND revoked_at IS NULL AND expires_at > ?9)
              AND (SELECT COUNT(DISTINCT handle) FROM tokens WHERE revoked_at IS NULL AND expires_at > ?9) < ?10)`,
    )
    .bind(row.tokenId, row.hash, row.hint, row.handle, JSON.stringify(row.scopes), row.issuedAt, row.expiresAt, row.source, now, config.max_users);
}

async function activeSeats(db: D1Database, now: number): Promise<number> {
  const row = await db
    .prepare("SELECT COUNT(DISTINCT handle) AS seats FROM tokens WHERE revoked_at IS NULL AND expires_at > ?1")
    .bind(now)
    .first<{ seats: number }>();
  return row?.seats ?? 0;
}

/** Why a conditional insert did not happen, in words the operator can act on. */
export async function refusal(db: D1Database, config: GatewayConfig, handle: string, now: number) {
  const active = await db
    .prepare("SELECT expires_at FROM tokens WHERE handle = ?1 AND revoked_at IS NULL AND expires_at > ?2 LIMIT 1")
    .bind(handle, now)
    .first<{ expires_at: number }>();
  if (active) {
    return gatewayError(409, {
      message: `${handle} already has an active token (expires ${iso(active.expires_at)}); use 'halo-gate rotate ${handle}' for a new one.`,
      type: "invalid_request_error",
      code: "handle_active",
    });
  }
  const seats = await activeSeats(db, now);
  return gatewayError(409, {
    message: `All seats are taken: ${seats} of max_users = ${config.max_users} users hold an active token. Revoke one ('halo-gate revoke <handle>') or raise max_users in wrangler.toml [vars.HALO_CONFIG].`,
    type: "invalid_request_error",
    code: "seats_full",
  });
}

export interface InviteInput {
  handle: string;
  scopes: string[];
  ttlMs: number;
  limits: LimitOverrides;
  /** The mesh user (Headscale user id) the token works from (issue 10); absent keeps the one recorded. */
  meshUser?: string | undefined;
}

export async function inviteUser(db: D1Database, config: GatewayConfig, input: InviteInput, now: number): Promise<IssuedToken> {
  checkScopes(config, input.scopes);
  const token = generateToken();
  const tokenId = generateTokenId();
  const expiresAt = now + input.ttlMs;
  const row = { tokenId, hash: await hashToken(token), hint: tokenHint(token), handle: input.handle, scopes: input.scopes, issuedAt: now, expiresAt, source: "invite" };
  const [, inserted] = await db.batch([
    db.prepare("INSERT INTO users (handle, created_at) VALUES (?1, ?2) ON CONFLICT(handle) DO NOTHING").bind(input.handle, now),
    insertTokenIfSeat(db, config, row, now),
    db
      .prepare(
        "UPDATE users SET rps = ?2, burst = ?3, streams = ?4, daily_tokens = ?5, mesh_user = COALESCE(?7, mesh_user) WHERE handle = ?1 AND EXISTS (SELECT 1 FROM tokens WHERE token_id = ?6)",
      )
      .bind(input.handle, input.limits.rps ?? null, input.limits.burst ?? null, input.limits.streams ?? null, input.limits.daily_tokens ?? null, tokenId, input.meshUser ?? null),
    conditionalAuditStatement(
      db,
      { at: now, kind: "admin", action: "invite", handle: input.handle, tokenId, status: 201, detail: { scopes: input.scopes, expires_at: iso(expiresAt), limits: input.limits, ...(input.meshUser ? { mesh_user: input.meshUser } : {}) } },
      "EXISTS (SELECT 1 FROM tokens WHERE token_id = ?11)",
      tokenId,
    ),
  ]);
  if (!inserted?.meta.changes) {
    const refused = await refusal(db, config, input.handle, now);
    await auditStatement(db, { at: now, kind: "admin", action: "invite", handle: input.handle, status: 409, reason: refused.message }).run();
    throw refused;
  }
  return { handle: input.handle, token, token_id: tokenId, scopes: input.scopes, issued_at: iso(now), expires_at: iso(expiresAt) };
}

interface TokenRow {
  token_id: string;
  hint: string;
  handle: string;
  scopes: string;
  issued_at: number;
  expires_at: number;
  revoked_at: number | null;
  last_used_at: number | null;
}

/** The user's current token: the active one if any, else the most recently issued. */
async function currentToken(db: D1Database, handle: string, now: number): Promise<TokenRow | null> {
  return db
    .prepare(
      `SELECT token_id, hint, handle, scopes, issued_at, expires_at, revoked_at, last_used_at FROM tokens
       WHERE handle = ?1 ORDER BY (revoked_at IS NULL AND expires_at > ?2) DESC, issued_at DESC, rowid DESC LIMIT 1`,
    )
    .bind(handle, now)
    .first<TokenRow>();
}

const noSuchUser = (handle: string) =>
  gatewayError(404, { message: `No user "${handle}". See 'halo-gate list'.`, type: "invalid_request_error", code: "no_such_user" });

export async function revokeUser(db: D1Database, handle: string, now: number): Promise<{ handle: string; revoked: boolean; message: string }> {
  const current = await currentToken(db, handle, now);
  if (!current) throw noSuchUser(handle);
  const [updated] = await db.batch([
    db.prepare("UPDATE tokens SET revoked_at = ?2, revoke_reason = 'revoked' WHERE handle = ?1 AND revoked_at IS NULL").bind(handle, now),
    conditionalAuditStatement(
      db,
      { at: now, kind: "admin", action: "revoke", handle, tokenId: current.token_id, status: 200 },
      "changes() > 0",
    ),
  ]);
  if (!updated?.meta.changes) {
    await auditStatement(db, { at: now, kind: "admin", action: "revoke", handle, status: 200, reason: "already revoked" }).run();
    return { handle, revoked: false, message: `${handle} was already revoked (at ${iso(current.revoked_at ?? now)}).` };
  }
  return { handle, revoked: true, message: `${handle} revoked: the token ${current.hint} is refused from now on.` };
}

/**
 * A new token for the user's active one, with the same scopes and expiry. The old one is refused at
 * once — or, with `graceMs`, keeps working until then (at most until its own expiry), so a user can
 * switch clients without downtime (issue 9); it is then recorded as expired by the sweep.
 */
export async function rotateUser(db: D1Database, handle: string, now: number, graceMs = 0): Promise<IssuedToken> {
  const current = await currentToken(db, handle, now);
  if (!current) throw noSuchUser(handle);
  if (tokenStatus(current, now) !== "active") {
    throw gatewayError(409, {
      message: `${handle} has no active token to rotate (it is ${tokenStatus(current, now)}); use 'halo-gate invite ${handle}'.`,
      type: "invalid_request_error",
      code: "no_active_token",
    });
  }
  const token = generateToken();
  const tokenId = generateTokenId();
  const oldIsActive = "EXISTS (SELECT 1 FROM tokens WHERE token_id = ?9 AND revoked_at IS NULL AND expires_at > ?10)";
  const [inserted] = await db.batch([
    db
      .prepare(
        `INSERT INTO tokens (token_id, token_hash, hint, handle, scopes, issued_at, expires_at, source)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 WHERE ${oldIsActive}`,
      )
      .bind(tokenId, await hashToken(token), tokenHint(token), handle, current.scopes, now, current.expires_at, "rotate", current.token_id, now),
    graceMs > 0
      ? db
          .prepare("UPDATE tokens SET expires_at = MIN(expires_at, ?2) WHERE token_id = ?1 AND revoked_at IS NULL AND EXISTS (SELECT 1 FROM tokens WHERE token_id = ?3)")
          .bind(current.token_id, now + graceMs, tokenId)
      : db
          .prepare("UPDATE tokens SET revoked_at = ?2, revoke_reason = 'rotated' WHERE token_id = ?1 AND revoked_at IS NULL AND EXISTS (SELECT 1 FROM tokens WHERE token_id = ?3)")
          .bind(current.token_id, now, tokenId),
    conditionalAuditStatement(
      db,
      { at: now, kind: "admin", action: "rotate", handle, tokenId, status: 200, detail: { replaced: current.token_id, ...(graceMs > 0 ? { old_token_until: iso(Math.min(now + graceMs, current.expires_at)) } : {}) } },
      "EXISTS (SELECT 1 FROM tokens WHERE token_id = ?11)",
      tokenId,
    ),
  ]);
  if (!inserted?.meta.changes) {
    throw gatewayError(409, { message: `${handle}'s token changed while rotating; try again.`, type: "invalid_request_error", code: "conflict" });
  }
  return { handle, token, token_id: tokenId, scopes: JSON.parse(current.scopes) as string[], issued_at: iso(now), expires_at: iso(current.expires_at) };
}

export interface UpdateInput {
  ttlMs?: number | undefined;
  scopes?: string[] | undefined;
  limits: LimitOverrides;
  /** A new mesh user (Headscale user id) for the user's tokens (issue 10); absent leaves it. */
  meshUser?: string | undefined;
}

export async function updateUser(db: D1Database, config: GatewayConfig, handle: string, input: UpdateInput, now: number): Promise<UserView> {
  const current = await currentToken(db, handle, now);
  if (!current) throw noSuchUser(handle);
  if (input.scopes) checkScopes(config, input.scopes);
  const changesToken = input.ttlMs !== undefined || input.scopes !== undefined;
  if (changesToken && tokenStatus(current, now) !== "active") {
    throw gatewayError(409, {
      message: `${handle}'s token is ${tokenStatus(current, now)}; use 'halo-gate invite ${handle}' for a new one.`,
      type: "invalid_request_error",
      code: "no_active_token",
    });
  }
  const user = await db.prepare("SELECT rps, burst, streams, daily_tokens FROM users WHERE handle = ?1").bind(handle).first<LimitOverrides>();
  const limits = { ...stripNulls(user ?? {}), ...stripUndefined(input.limits) };
  await db.batch([
    db
      .prepare("UPDATE tokens SET scopes = COALESCE(?2, scopes), expires_at = COALESCE(?3, expires_at) WHERE token_id = ?1 AND revoked_at IS NULL")
      .bind(current.token_id, input.scopes ? JSON.stringify(input.scopes) : null, input.ttlMs !== undefined ? now + input.ttlMs : null),
    db
      .prepare("UPDATE users SET rps = ?2, burst = ?3, streams = ?4, daily_tokens = ?5, mesh_user = COALESCE(?6, mesh_user) WHERE handle = ?1")
      .bind(handle, limits.rps ?? null, limits.burst ?? null, limits.streams ?? null, limits.daily_tokens ?? null, input.meshUser ?? null),
    auditStatement(db, {
      at: now,
      kind: "admin",
      action: "update",
      handle,
      tokenId: current.token_id,
      status: 200,
      detail: {
        ...(input.scopes ? { scopes: input.scopes } : {}),
        ...(input.ttlMs !== undefined ? { expires_at: iso(now + input.ttlMs) } : {}),
        limits: input.limits,
        ...(input.meshUser !== undefined ? { mesh_user: input.meshUser } : {}),
      },
    }),
  ]);
  const updated = (await listUsers(db, config, now)).find((view) => view.handle === handle);
  if (!updated) throw noSuchUser(handle);
  return updated;
}

const stripUndefined = (limits: LimitOverrides) =>
  Object.fromEntries(Object.entries(limits).filter(([, value]) => value !== undefined)) as LimitOverrides;
const stripNulls = (limits: LimitOverrides) =>
  Object.fromEntries(Object.entries(limits).filter(([, value]) => value !== null && value !== undefined)) as LimitOverrides;

export async function listUsers(db: D1Database, config: GatewayConfig, now: number): Promise<UserView[]> {
  const { results } = await db
    .prepare(
      `SELECT u.rps, u.burst, u.streams, u.daily_tokens, u.mesh_user, t.token_id, t.hint, t.handle, t.scopes, t.issued_at, t.expires_at, t.revoked_at, t.last_used_at, t.last_device
       FROM users u JOIN tokens t ON t.token_id = (
         SELECT token_id FROM tokens WHERE handle = u.handle
         ORDER BY (revoked_at IS NULL AND expires_at > ?1) DESC, issued_at DESC, rowid DESC LIMIT 1)
       ORDER BY u.handle`,
    )
    .bind(now)
    .all<TokenRow & { rps: number | null; burst: number | null; streams: number | null; daily_tokens: number | null; mesh_user: string | null; last_device: string | null }>();
  return results.map((row) => ({
    handle: row.handle,
    status: tokenStatus(row, now),
    token_id: row.token_id,
    token_hint: row.hint,
    scopes: JSON.parse(row.scopes) as string[],
    issued_at: iso(row.issued_at),
    expires_at: iso(row.expires_at),
    revoked_at: isoOrNull(row.revoked_at),
    last_used_at: isoOrNull(row.last_used_at),
    last_device: row.last_device,
    mesh_user: row.mesh_user,
    limits: effectiveLimits(config.limits, stripNulls(row)),
  }));
}
