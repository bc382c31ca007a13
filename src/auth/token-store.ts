/**
 * The token store: D1, the durable record (revocation must be read-your-writes; KV is eventually
 * consistent). The hot path reads it at most once per token per isolate (issue 8):
 *   - `identify`: hash → (token id, handle). That pair never changes once a token is issued, so a
 *     found one is cached in the isolate; an unknown hash is never cached, so every guess costs a
 *     lookup and counts for the failed-auth throttle.
 *   - whether the token is still good (revoked, expired, scopes, the user's limits) is decided by
 *     the user's `UserQuota` Durable Object, which loads the user's tokens with `tokensOf` and is
 *     told of every change by the admin API before it returns.
 */
import type { LimitOverrides } from "../quota/limits";

export interface TokenIdentity {
  tokenId: string;
  handle: string;
}

export interface TokenRecord extends TokenIdentity {
  scopes: string[];
  issuedAt: number;
  expiresAt: number;
  revokedAt: number | null;
  /** The user's own limits (NULL = configured default), fetched in the same query. */
  limits: LimitOverrides;
  /** The user's mesh user (Headscale user id) the token works from, or null when none is recorded (issue 10). */
  meshUser: string | null;
}

export interface TokenStore {
  /** The token id and owner of this SHA-256 hash, whatever the token's state, or null. */
  identify(tokenHash: string): Promise<TokenIdentity | null>;
  /** Every token of a user, whatever its state, with the user's limits. */
  tokensOf(handle: string): Promise<TokenRecord[]>;
  /**
   * Record use, and the device (mesh node name) it came from when known; cheap to call on every
   * request (writes at most about once a minute per token, or when the device changes).
   */
  touch(tokenId: string, now: number, device?: string | null): Promise<void>;
}

interface TokenRow extends LimitOverrides {
  token_id: string;
  handle: string;
  scopes: string;
  issued_at: number;
  expires_at: number;
  revoked_at: number | null;
  mesh_user: string | null;
}

const TOUCH_INTERVAL_MS = 60_000;
/** Bounds of the per-isolate maps; a forgotten entry only costs one lookup or one write. */
const MAX_CACHED = 10_000;
/** Per-isolate memory of the last `last_used_at` write (and its device), so the write happens about once a minute. */
const lastTouched = new Map<string, { at: number; device: string | null }>();
/** Per-isolate hash → identity, positives only (see above). */
const identities = new Map<string, TokenIdentity>();

export class D1TokenStore implements TokenStore {
  constructor(private readonly db: D1Database) {}

  async identify(tokenHash: string): Promise<TokenIdentity | null> {
    const cached = identities.get(tokenHash);
    if (cached) return cached;
    const row = await this.db.prepare("SELECT token_id, handle FROM tokens WHERE token_hash = ?1").bind(tokenHash).first<{ token_id: string; handle: string }>();
    if (!row) return null;
    if (identities.size >= MAX_CACHED) identities.clear();
    const identity = { tokenId: row.token_id, handle: row.handle };
    identities.set(tokenHash, identity);
    return identity;
  }

  async tokensOf(handle: string): Promise<TokenRecord[]> {
    const { results } = await this.db
      .prepare(
        `SELECT t.token_id, t.handle, t.scopes, t.issued_at, t.expires_at, t.revoked_at, u.rps, u.burst, u.streams, u.daily_tokens, u.mesh_user
         FROM tokens t JOIN users u ON u.handle = t.handle WHERE t.handle = ?1`,
      )
      .bind(handle)
      .all<TokenRow>();
    return results.map((row) => ({
      tokenId: row.token_id,
      handle: row.handle,
      scopes: JSON.parse(row.scopes) as string[],
      issuedAt: row.issued_at,
      expiresAt: row.expires_at,
      revokedAt: row.revoked_at,
      limits: { rps: row.rps, burst: row.burst, streams: row.streams, daily_tokens: row.daily_tokens },
      meshUser: row.mesh_user,
    }));
  }

  async touch(tokenId: string, now: number, device: string | null = null): Promise<void> {
    const previous = lastTouched.get(tokenId);
    const moved = device !== null && device !== previous?.device;
    if (previous !== undefined && now - previous.at < TOUCH_INTERVAL_MS && !moved) return;
    if (lastTouched.size >= MAX_CACHED) lastTouched.clear();
    lastTouched.set(tokenId, { at: now, device: device ?? previous?.device ?? null });
    // An unknown device (mesh identity off, or tailscaled could not say) keeps the one recorded.
    await this.db
      .prepare(
        `UPDATE tokens SET last_used_at = ?2, last_device = COALESCE(?4, last_device)
         WHERE token_id = ?1 AND (last_used_at IS NULL OR last_used_at < ?3 OR (?4 IS NOT NULL AND last_device IS NOT ?4))`,
      )
      .bind(tokenId, now, now - TOUCH_INTERVAL_MS, device)
      .run();
  }
}
