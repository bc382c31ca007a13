/**
 * One Durable Object per user (SQLite-backed): the one place that decides whether a request of
 * this user may run (issue 8). `authorize` confirms the token (current, scoped) from the user's
 * tokens it holds in memory (loaded from D1, the durable record; the admin API tells it of every
 * change before returning), then that the request came from a device of the user's mesh user
 * (issue 10, `meshVerdict` against the `mesh_user` loaded with the tokens; counted in `metrics.mesh`)
 * and admits the request with every quota check at once — one call per
 * request, and no storage write on the way: a Durable Object runs one call at a time, so the
 * checks are atomic (32 concurrent requests against a bucket of N admit exactly N) without one.
 *
 * What is kept where, and what a crash (or an eviction) may cost — within docs/contract.md §6's intent that
 * one user cannot monopolise the box:
 * - the rate bucket: memory only; a restarted object starts with a full bucket (one extra burst);
 * - the day's tokens: written when a response charges them (the only write on the request path,
 *   and it happens after the response, in the release);
 * - metrics: written at most once a second; a crash loses at most that second's counts;
 * - revocations: written before `revoke` writes D1, so a failed D1 write still refuses the token;
 * - tickets used: written when used (rare).
 *
 * In-flight slots are leases kept in memory only, never stored: a lease describes a request running
 * through *this* process, so one from an earlier boot describes nothing. Under `serve` a crash or a
 * `kill -9` takes workerd and every stream with it, and the next start begins with no leases (before,
 * persisted leases locked a user out for up to `quota_lease` after a restart). What it costs:
 * - a crash: the tokens of the streams it cut are never charged (no release ever came);
 * - an eviction or a reset (workerd evicts an object idle for ~10 s — measured: kept after 9 s,
 *   gone after 11 s — and resets one whose write failed): the object forgets its leases, so a user
 *   may briefly hold one more stream than the cap, until each forgotten stream's next renewal
 *   re-adopts its lease (renewals come at most 5 s apart, which also keeps a busy object from
 *   being evicted for idleness). A lease whose stream ended without a release lapses after its
 *   lease time, as before; expired leases are dropped on each call.
 */
import { DurableObject } from "cloudflare:workers";
import type { UserLimits } from "../shared/config";
import { D1TokenStore, type TokenIdentity, type TokenRecord } from "../auth/token-store";
import { meshVerdict, type MeshVerdict } from "../shared/mesh-identity";
import { quotaDay } from "./day";
import { effectiveLimits } from "./limits";
import type { Admission, AdmitRequest, Authorization, AuthorizeRequest, QuotaState, RequestOutcome, UserProfile } from "./quota";

/** Upper bounds (seconds) of the upstream latency histogram (time to response headers). */
export const LATENCY_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60] as const;

/** The lease id of an admission under `quotas = false`: nothing to renew or release. */
export const UNLIMITED_LEASE = "unlimited";
const METRICS_WRITE_INTERVAL_MS = 1_000;

/** How long a released lease is remembered, so that a late renewal does not revive it. */
const RELEASED_MEMORY_MS = 60_000;

export interface UserMetrics {
  status: { "2xx": number; "3xx": number; "4xx": number; "5xx": number; aborted: number };
  refused: { rate: number; concurrency: number; daily: number };
  /**
   * Mesh identity (issue 10): requests from a device not the user's own (or tailscaled could not
   * say) that `warn` admitted and recorded, and that `enforce` refused.
   */
  mesh: { warned: number; refused: number };
  /** Cumulative counts per LATENCY_BUCKETS bound, then +Inf. */
  latencyBuckets: number[];
  latencySumSeconds: number;
  latencyCount: number;
}

export interface UsageSnapshot {
  day: string;
  tokensToday: number;
  inFlight: number;
  metrics: UserMetrics;
}

interface Lease {
  expiresAt: number;
  tokenId: string | null;
  /** Counts against `streams` (see `AdmitRequest.holdsSlot`). */
  holdsSlot: boolean;
}

interface Bucket {
  level: number;
  at: number;
}

const emptyMetrics = (): UserMetrics => ({
  status: { "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0, aborted: 0 },
  refused: { rate: 0, concurrency: 0, daily: 0 },
  mesh: { warned: 0, refused: 0 },
  latencyBuckets: LATENCY_BUCKETS.map(() => 0).concat(0),
  latencySumSeconds: 0,
  latencyCount: 0,
});

export class UserQuota extends DurableObject<Env> {
  private bucket: Bucket | null = null;
  /** leaseId → its expiry (ms, wall clock), token, and whether it holds a slot. Memory only (see above). */
  private readonly leases = new Map<string, Lease>();
  /** Leases released lately (leaseId → when), so a renewal that crossed its release cannot revive it. */
  private readonly released = new Map<string, number>();
  private day = { key: "", used: 0 };
  private metrics = emptyMetrics();
  private metricsWrite: ReturnType<typeof setTimeout> | null = null;
  /** The user's tokens by id, as D1 had them when last loaded (null: load on next use). */
  private tokens: Map<string, TokenRecord> | null = null;
  /** Token ids revoked through this object (persisted): refused even if D1 has not caught up. */
  private revoked = new Set<string>();

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    void ctx.blockConcurrencyWhile(async () => {
      // Keys written by earlier versions ("bucket", "leases") are ignored: memory only now.
      const stored = await ctx.storage.get<unknown>(["day", "metrics", "revoked"]);
      this.day = (stored.get("day") as { key: string; used: number } | undefined) ?? this.day;
      // Metrics stored by an earlier version lack newer counters (e.g. `mesh`): the defaults fill them.
      this.metrics = { ...emptyMetrics(), ...((stored.get("metrics") as UserMetrics | undefined) ?? {}) };
      this.revoked = new Set((stored.get("revoked") as string[] | undefined) ?? []);
    });
  }

  /** The per-request call: token check, then (when asked) admission, in one round trip. */
  async authorize(request: AuthorizeRequest): Promise<Authorization> {
    const token = await this.token(request.token);
    if (!token) return { ok: false, reason: "unknown" };
    if (token.revokedAt !== null || this.revoked.has(token.tokenId)) return { ok: false, reason: "revoked" };
    if (request.now >= token.expiresAt) return { ok: false, reason: "expired" };
    if (request.scope !== null && !token.scopes.includes(request.scope)) return { ok: false, reason: "scope" };
    if (request.ticket && (await this.ticketUsed(request.ticket.jti))) return { ok: false, reason: "ticket_used" };
    // The token is good: is this its owner's device? (issue 10; the edge said whose it is.)
    let mesh: MeshVerdict | undefined;
    if (request.mesh) {
      mesh = meshVerdict(request.mesh, token.meshUser);
      if (mesh.kind !== "match") {
        if (mesh.kind === "refuse") {
          this.metrics.mesh.refused++;
          this.metrics.status[mesh.finding === "unavailable" ? "5xx" : "4xx"]++;
        } else this.metrics.mesh.warned++;
        this.scheduleMetricsWrite();
      }
      if (mesh.kind === "refuse") return { ok: false, reason: "mesh", mesh };
    }
    if (!request.admit) return { ok: true, limits: null, admission: null, ...(mesh ? { mesh } : {}) };
    const { defaults, timezone, leaseMs, metered, holdsSlot, enforce } = request.admit;
    const limits = effectiveLimits(defaults, token.limits);
    const admission = enforce ? this.decide({ handle: token.handle, limits, timezone, now: request.now, leaseMs, metered, holdsSlot, tokenId: token.tokenId }) : this.unlimited(limits);
    // A refused upgrade leaves its ticket usable (issue 9): marked only once the request runs.
    if (admission.admitted && request.ticket) await this.useTicket(request.ticket.jti, request.ticket.expiresAt);
    return { ok: true, limits, admission, ...(mesh ? { mesh } : {}) };
  }

  async profile(identity: TokenIdentity, now: number, defaults: UserLimits, timezone: string): Promise<UserProfile | null> {
    const token = await this.token(identity);
    if (!token) return null;
    const limits = effectiveLimits(defaults, token.limits);
    this.dropExpiredLeases(Date.now());
    this.rollDay(now, timezone);
    return {
      handle: token.handle,
      scopes: token.scopes,
      expires_at: new Date(token.expiresAt).toISOString(),
      limits,
      tokens_today: this.day.used,
      tokens_remaining: Math.max(0, limits.daily_tokens - this.day.used),
      resets_at: new Date(quotaDay(now, timezone).endsAt).toISOString(),
      in_flight: this.slotsHeld(),
    };
  }

  /** Quota admission alone (kept for callers that have already confirmed the token). */
  async admit(request: AdmitRequest): Promise<Admission> {
    return this.decide(request);
  }

  /** The admin API changed this user's tokens or limits in D1: read them again on the next request. */
  async reload(): Promise<void> {
    this.tokens = null;
  }

  /** Refuse these tokens from now on (all of the user's when none are named), before D1 says so. */
  async revoke(handle: string, tokenIds?: string[]): Promise<void> {
    const ids = tokenIds ?? [...(await this.loadTokens(handle)).keys()];
    for (const id of ids) this.revoked.add(id);
    await this.ctx.storage.put("revoked", [...this.revoked]);
    this.tokens = null;
  }

  /**
   * Extends a running request's lease; one this object forgot (evicted, reset, lapsed) is
   * re-adopted. False when the request's token has been revoked or has expired since it was
   * admitted: the caller then closes the stream or socket (issue 9), and the lease is gone.
   */
  async renew(leaseId: string, leaseMs: number, identity?: TokenIdentity): Promise<boolean> {
    if (identity) {
      const token = await this.token(identity);
      if (!token || token.revokedAt !== null || this.revoked.has(token.tokenId) || Date.now() >= token.expiresAt) {
        this.leases.delete(leaseId);
        return false;
      }
    }
    this.forgetOldReleases(Date.now());
    if (leaseId === UNLIMITED_LEASE || this.released.has(leaseId)) return true;
    const lease = this.leases.get(leaseId);
    this.leases.set(leaseId, { expiresAt: Date.now() + leaseMs, tokenId: identity?.tokenId ?? lease?.tokenId ?? null, holdsSlot: lease?.holdsSlot ?? true });
    return true;
  }

  async release(leaseId: string, outcome: RequestOutcome, now: number, timezone: string): Promise<void> {
    if (leaseId === UNLIMITED_LEASE) return; // quotas = false: nothing counted
    this.leases.delete(leaseId);
    this.forgetOldReleases(Date.now());
    this.released.set(leaseId, Date.now());
    const rolled = this.rollDay(now, timezone);
    // Charged also when the lease had already expired: the tokens were produced all the same.
    const tokens = Math.max(0, Math.round(outcome.tokens));
    this.day.used += tokens;
    const statusClass = outcome.status === 0 ? "aborted" : (`${Math.floor(outcome.status / 100)}xx` as keyof UserMetrics["status"]);
    if (statusClass in this.metrics.status) this.metrics.status[statusClass]++;
    if (outcome.refused) {
      // As a refusal decided here: its request is given back to the bucket (the next refill caps it).
      this.metrics.refused[outcome.refused]++;
      if (this.bucket) this.bucket.level += 1;
    }
    if (outcome.upstreamLatencyMs !== null) {
      const seconds = outcome.upstreamLatencyMs / 1000;
      const index = LATENCY_BUCKETS.findIndex((bound) => seconds <= bound);
      this.metrics.latencyBuckets[index === -1 ? LATENCY_BUCKETS.length : index]!++;
      this.metrics.latencySumSeconds += seconds;
      this.metrics.latencyCount++;
    }
    this.scheduleMetricsWrite();
    if (tokens > 0 || rolled) await this.ctx.storage.put("day", this.day);
  }

  async snapshot(now: number, timezone: string): Promise<UsageSnapshot> {
    this.dropExpiredLeases(Date.now());
    this.rollDay(now, timezone);
    return { day: this.day.key, tokensToday: this.day.used, inFlight: this.slotsHeld(), metrics: this.metrics };
  }

  /** Every quota check at once; synchronous, so atomic within this object. */
  private decide(request: AdmitRequest): Admission {
    const { limits, now } = request;
    this.dropExpiredLeases(Date.now());
    this.rollDay(now, request.timezone);
    this.refill(limits, now);
    const level = this.bucket!.level;

    let refusal: "rate" | "concurrency" | "daily" | null = null;
    let retryAfterSeconds = 1;
    if (request.metered && this.day.used >= limits.daily_tokens) {
      refusal = "daily";
      retryAfterSeconds = Math.max(1, Math.ceil((quotaDay(now, request.timezone).endsAt - now) / 1000));
    } else if (request.holdsSlot !== false && this.slotsHeld() >= limits.streams) {
      refusal = "concurrency";
    } else if (level < 1) {
      refusal = "rate";
      retryAfterSeconds = Math.max(1, Math.ceil((1 - level) / limits.rps));
    }
    if (refusal) {
      // A refused request charges nothing: the bucket and the day are left as they were.
      this.metrics.refused[refusal]++;
      this.metrics.status["4xx"]++;
      this.scheduleMetricsWrite();
      return { admitted: false, refusal, retryAfterSeconds, state: this.state(limits, now, request.timezone) };
    }
    this.bucket!.level = level - 1;
    const leaseId = crypto.randomUUID();
    this.leases.set(leaseId, { expiresAt: Date.now() + request.leaseMs, tokenId: request.tokenId ?? null, holdsSlot: request.holdsSlot !== false });
    return { admitted: true, leaseId, state: this.state(limits, now, request.timezone) };
  }

  /** `quotas = false`: admitted, nothing counted. */
  private unlimited(limits: UserLimits): Admission {
    return {
      admitted: true,
      leaseId: UNLIMITED_LEASE,
      state: { requestsRemaining: limits.burst, requestsResetSeconds: 0, tokensUsedToday: 0, tokensRemainingToday: limits.daily_tokens, dayResetSeconds: 0, inFlight: 0 },
    };
  }

  private async token(identity: TokenIdentity): Promise<TokenRecord | null> {
    let token = this.tokens?.get(identity.tokenId);
    // A token this object has not seen (issued since the last load): D1 is asked once more.
    if (!token) token = (await this.loadTokens(identity.handle)).get(identity.tokenId);
    return token && token.handle === identity.handle ? token : null;
  }

  private async loadTokens(handle: string): Promise<Map<string, TokenRecord>> {
    const tokens = new Map((await new D1TokenStore(this.env.DB).tokensOf(handle)).map((token) => [token.tokenId, token]));
    this.tokens = tokens;
    return tokens;
  }

  private async ticketUsed(jti: string): Promise<boolean> {
    const used = (await this.ctx.storage.get<Record<string, number>>("tickets")) ?? {};
    return jti in used;
  }

  /** Single use of a WebSocket ticket (ids kept until they expire). */
  private async useTicket(jti: string, expiresAt: number): Promise<void> {
    const used = (await this.ctx.storage.get<Record<string, number>>("tickets")) ?? {};
    const now = Date.now();
    for (const [id, expiry] of Object.entries(used)) if (expiry < now) delete used[id];
    used[jti] = expiresAt;
    await this.ctx.storage.put("tickets", used);
  }

  private state(limits: UserLimits, now: number, timezone: string): QuotaState {
    const level = this.bucket!.level;
    return {
      requestsRemaining: Math.max(0, level),
      requestsResetSeconds: Math.ceil(Math.max(0, limits.burst - level) / limits.rps),
      tokensUsedToday: this.day.used,
      tokensRemainingToday: Math.max(0, limits.daily_tokens - this.day.used),
      dayResetSeconds: Math.max(1, Math.ceil((quotaDay(now, timezone).endsAt - now) / 1000)),
      inFlight: this.slotsHeld(),
    };
  }

  private refill(limits: UserLimits, now: number) {
    if (!this.bucket) {
      this.bucket = { level: limits.burst, at: now };
      return;
    }
    const elapsed = Math.max(0, now - this.bucket.at) / 1000;
    this.bucket = { level: Math.min(limits.burst, this.bucket.level + elapsed * limits.rps), at: Math.max(now, this.bucket.at) };
  }

  /** True when the day changed (the new day starts at 0 tokens). */
  private rollDay(now: number, timezone: string): boolean {
    const { key } = quotaDay(now, timezone);
    if (key === this.day.key) return false;
    this.day = { key, used: 0 };
    return true;
  }

  private dropExpiredLeases(wallClock: number) {
    for (const [leaseId, lease] of this.leases) if (lease.expiresAt <= wallClock) this.leases.delete(leaseId);
  }

  private slotsHeld(): number {
    let held = 0;
    for (const lease of this.leases.values()) if (lease.holdsSlot) held++;
    return held;
  }

  /** A renewal crosses its release within milliseconds; a minute is ample, and bounds the map. */
  private forgetOldReleases(wallClock: number) {
    for (const [leaseId, at] of this.released) if (wallClock - at > RELEASED_MEMORY_MS) this.released.delete(leaseId);
  }

  /** Metrics are written at most once a second, off the request path. */
  private scheduleMetricsWrite() {
    if (this.metricsWrite) return;
    this.metricsWrite = setTimeout(() => {
      this.metricsWrite = null;
      this.ctx.storage.put("metrics", this.metrics).catch((error: unknown) => console.error(`halo-gate: could not write quota metrics: ${String(error)}`));
    }, METRICS_WRITE_INTERVAL_MS);
  }
}
