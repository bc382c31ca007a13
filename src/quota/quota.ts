/**
 * Per-user quotas behind a small interface (the Durable Object implementation is beside it).
 * One `authorize` call confirms the token and admits the request with every check at once;
 * `release` frees the in-flight slot and charges the LLM tokens when the response has ended,
 * however it ended.
 */
import type { TokenIdentity } from "../auth/token-store";
import type { UserLimits } from "../shared/config";
import type { MeshCheck, MeshVerdict } from "../shared/mesh-identity";
import type { QueueUsage } from "../shared/admin-wire";

export type QuotaRefusal = "rate" | "concurrency" | "daily";

export interface AdmitRequest {
  handle: string;
  limits: UserLimits;
  timezone: string;
  /** The caller's clock (ms); tests pin it to cross a day boundary. */
  now: number;
  /** How long an in-flight slot lives without renewal (a request that ended unreleased frees it after this). */
  leaseMs: number;
  /** Whether the route is an LLM route, subject to the daily token quota. */
  metered: boolean;
  /**
   * Whether the request holds one of the user's concurrent slots (issue 9: generation, image
   * generation, uploads and sockets do; cheap reads such as `GET /v1/models` only spend the bucket).
   */
  holdsSlot?: boolean;
  /** The token the request runs under, so a renewal can tell when it was revoked or expired. */
  tokenId?: string;
}

export interface QuotaState {
  /** Requests left in the bucket right now (after this request, when admitted). */
  requestsRemaining: number;
  /** Seconds until the bucket is full again. */
  requestsResetSeconds: number;
  tokensUsedToday: number;
  tokensRemainingToday: number;
  /** Seconds until the quota day ends (midnight in the configured timezone). */
  dayResetSeconds: number;
  inFlight: number;
}

export type Admission =
  | { admitted: true; leaseId: string; state: QuotaState }
  | { admitted: false; refusal: QuotaRefusal; retryAfterSeconds: number; state: QuotaState };

export interface RequestOutcome {
  /** Response status the client saw (0 when the client went away before it got one). */
  status: number;
  /** LLM tokens the response produced, charged to the daily quota. */
  tokens: number;
  /** Time to the upstream's response headers, ms (null when there was no upstream response). */
  upstreamLatencyMs: number | null;
  /**
   * Admitted by the user's object, then refused where the cap is counted once a route is queued (the
   * upstream scheduler, issue 12): charged nothing, and counted as that refusal.
   */
  refused?: "concurrency";
}

/**
 * One call per authenticated request (issue 8): the user's object confirms the token (current,
 * scoped) and, when `admit` is set, admits the request with every quota check at once.
 */
export interface AuthorizeRequest {
  token: TokenIdentity;
  /** The scope the route needs; null for gateway paths any valid token may use (`/api/me`). */
  scope: string | null;
  /** The caller's clock (ms). */
  now: number;
  /** Admit the request too (false: only confirm the token, e.g. to issue a ticket). */
  admit: false | {
    /** The configured per-user defaults; the user's own overrides are applied by the object. */
    defaults: UserLimits;
    timezone: string;
    leaseMs: number;
    metered: boolean;
    /** See `AdmitRequest.holdsSlot`. */
    holdsSlot: boolean;
    /** `HALO_CONFIG.quotas`: false admits every request without counting it. */
    enforce: boolean;
  };
  /** A WebSocket ticket being used: marked used only if the request is admitted. */
  ticket?: { jti: string; expiresAt: number };
  /**
   * Compare the peer's mesh owner with the token's (issue 10); absent when `mesh.identity` is off
   * or no edge is in front. Checked after the token (a request that fails authentication never
   * gets here) and before admission (a refused request charges nothing).
   */
  mesh?: MeshCheck;
}

export type Authorization =
  | { ok: false; reason: "unknown" | "revoked" | "expired" | "scope" | "ticket_used" }
  | { ok: false; reason: "mesh"; mesh: MeshVerdict & { kind: "refuse" } }
  | { ok: true; limits: UserLimits; admission: Admission; mesh?: MeshVerdict }
  | { ok: true; limits: null; admission: null; mesh?: MeshVerdict };

/** What `GET /api/me` tells a user about themself: the numbers the operator sees in `usage`. */
export interface UserProfile {
  handle: string;
  scopes: string[];
  expires_at: string;
  limits: UserLimits;
  tokens_today: number;
  tokens_remaining: number;
  resets_at: string;
  in_flight: number;
  /** The fair queue, when a route has one (issue 12; filled in by the gateway from the scheduler). */
  queue?: QueueUsage;
}

export interface QuotaService {
  authorize(request: AuthorizeRequest): Promise<Authorization>;
  /** The user's profile as seen through this (confirmed) token, or null if the object does not know it. */
  profile(token: TokenIdentity, now: number, defaults: UserLimits, timezone: string): Promise<UserProfile | null>;
  /** Keep a running request's lease alive; false when its token was revoked or expired since (close it). */
  renew(token: TokenIdentity, leaseId: string, leaseMs: number): Promise<boolean>;
  release(handle: string, leaseId: string, outcome: RequestOutcome, now: number, timezone: string): Promise<void>;
}
