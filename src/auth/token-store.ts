/**
 * The token store: D1, because revocation must be read-your-writes (KV is eventually consistent).
 * The hot path needs one indexed lookup by hash; admin operations live in src/admin.
 */
import type { LimitOverrides } from "../quota/limits";

export interface TokenRecord {
  tokenId: string;
  handle: string;
  scopes: string[];
  issuedAt: number;
  expiresAt: number;
  revokedAt: number | null;
  /** The user's own limits (NULL = configured default), fetched in the same query. */
  limits: LimitOverrides;
}

export interface TokenStore {
  /** The token with this SHA-256 hash, whatever its state, or null. */
  findByHash(tokenHash: string): Promise<TokenRecord | null>;
  /** The token with this non-secret id, whatever its state, or null. */
  findById(tokenId: string): Promise<TokenRecord | null>;
  /** Record use; cheap to call on every request (writes at most about once a minute per token). */
  touch(tokenId: string, now: number): Promise<void>;
}

interface TokenRow extends LimitOverrides {
  token_id: string;
  handle: string;
  scopes: string;
  issued_at: number;
  expires_at: number;
  revoked_at: number | null;
}

const TOUCH_INTERVAL_MS = 60_000;
/** Per-isolate memory of the last `last_used_at` write, so the write happens about once a minute. */
const lastTouched = new Map<string, number>();

export class D1TokenStore implements TokenStore {
  constructor(private readonly db: D1Database) {}

  findByHash(tokenHash: string): Promise<TokenRecord | null> {
    return this.findWhere("t.token_hash = ?1", tokenHash);
  }

  findById(tokenId: string): Promise<TokenRecord | null> {
    return this.findWhere("t.token_id = ?1", tokenId);
  }

  private async findWhere(condition: string, value: string): Promise<TokenRecord | null> {
    const row = await this.db
      .prepare(
        `SELECT t.token_id, t.handle, t.scopes, t.issued_at, t.expires_at, t.revoked_at, u.rps, u.burst, u.streams, u.daily_tokens
         FROM tokens t JOIN users u ON u.handle = t.handle WHERE ${condition}`,
      )
      .bind(value)
      .first<TokenRow>();
    if (!row) return null;
    return {
      tokenId: row.token_id,
      handle: row.handle,
      scopes: JSON.parse(row.scopes) as string[],
      issuedAt: row.issued_at,
      expiresAt: row.expires_at,
      revokedAt: row.revoked_at,
      limits: { rps: row.rps, burst: row.burst, streams: row.streams, daily_tokens: row.daily_tokens },
    };
  }

  async touch(tokenId: string, now: number): Promise<void> {
    const previous = lastTouched.get(tokenId);
    if (previous !== undefined && now - previous < TOUCH_INTERVAL_MS) return;
    lastTouched.set(tokenId, now);
    if (lastTouched.size > 10_000) lastTouched.clear(); // bounded: a forgotten entry only costs one write
    await this.db
      .prepare("UPDATE tokens SET last_used_at = ?2 WHERE token_id = ?1 AND (last_used_at IS NULL OR last_used_at < ?3)")
      .bind(tokenId, now, now - TOUCH_INTERVAL_MS)
      .run();
  }
}
