/**
 * One Durable Object per user (SQLite-backed), holding the user's quota counters and metrics.
 * A Durable Object runs one call at a time, so `admit` decides every check atomically: 32
 * concurrent requests against a bucket of N admit exactly N. The bucket, the day's tokens and the
 * metrics are written through to storage, so an eviction or a crash loses none of them.
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
import type { UserLimits } from "../config/schema";
import { dayKey, nextMidnight } from "./day";
import type { Admission, AdmitRequest, QuotaState, RequestOutcome } from "./quota";

/** Upper bounds (seconds) of the upstream latency histogram (time to response headers). */
export const LATENCY_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60] as const;

/** How long a released lease is remembered, so that a late renewal does not revive it. */
const RELEASED_MEMORY_MS = 60_000;

export interface UserMetrics {
  status: { "2xx": number; "3xx": number; "4xx": number; "5xx": number; aborted: number };
  refused: { rate: number; concurrency: number; daily: number };
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

interface Bucket {
  level: number;
  at: number;
}

const emptyMetrics = (): UserMetrics => ({
  status: { "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0, aborted: 0 },
  refused: { rate: 0, concurrency: 0, daily: 0 },
  latencyBuckets: LATENCY_BUCKETS.map(() => 0).concat(0),
  latencySumSeconds: 0,
  latencyCount: 0,
});

export class UserQuota extends DurableObject<Env> {
  private bucket: Bucket | null = null;
  /** leaseId → expiry (ms, wall clock). Memory only (see above). */
  private readonly leases = new Map<string, number>();
  /** Leases released lately (leaseId → when), so a renewal that crossed its release cannot revive it. */
  private readonly released = new Map<string, number>();
  private day = { key: "", used: 0 };
  private metrics = emptyMetrics();

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    void ctx.blockConcurrencyWhile(async () => {
      // A "leases" key written by an earlier version is ignored: its leases belong to a dead process.
      const stored = await ctx.storage.get<unknown>(["bucket", "day", "metrics"]);
      this.bucket = (stored.get("bucket") as Bucket | undefined) ?? null;
      this.day = (stored.get("day") as { key: string; used: number } | undefined) ?? this.day;
      this.metrics = { ...emptyMetrics(), ...((stored.get("metrics") as UserMetrics | undefined) ?? {}) };
    });
  }

  async admit(request: AdmitRequest): Promise<Admission> {
    const { limits, now } = request;
    this.dropExpiredLeases(Date.now());
    this.rollDay(now, request.timezone);
    this.refill(limits, now);
    const level = this.bucket!.level;

    let refusal: "rate" | "concurrency" | "daily" | null = null;
    let retryAfterSeconds = 1;
    if (request.metered && this.day.used >= limits.daily_tokens) {
      refusal = "daily";
      retryAfterSeconds = Math.max(1, Math.ceil((nextMidnight(now, request.timezone) - now) / 1000));
    } else if (this.leases.size >= limits.streams) {
      refusal = "concurrency";
    } else if (level < 1) {
      refusal = "rate";
      retryAfterSeconds = Math.max(1, Math.ceil((1 - level) / limits.rps));
    }
    if (refusal) {
      // A refused request charges nothing: the bucket and the day are left as they were.
      this.metrics.refused[refusal]++;
      this.metrics.status["4xx"]++;
      await this.persist("bucket", "day", "metrics");
      return { admitted: false, refusal, retryAfterSeconds, state: this.state(limits, now, request.timezone) };
    }
    this.bucket!.level = level - 1;
    const leaseId = crypto.randomUUID();
    this.leases.set(leaseId, Date.now() + request.leaseMs);
    await this.persist("bucket", "day");
    return { admitted: true, leaseId, state: this.state(limits, now, request.timezone) };
  }

  /** Extends a running stream's lease; one this object forgot (evicted, reset, lapsed) is re-adopted. */
  async renew(leaseId: string, leaseMs: number): Promise<void> {
    this.forgetOldReleases(Date.now());
    if (this.released.has(leaseId)) return;
    this.leases.set(leaseId, Date.now() + leaseMs);
  }

  async release(leaseId: string, outcome: RequestOutcome, now: number, timezone: string): Promise<void> {
    this.leases.delete(leaseId);
    this.forgetOldReleases(Date.now());
    this.released.set(leaseId, Date.now());
    this.rollDay(now, timezone);
    // Charged also when the lease had already expired: the tokens were produced all the same.
    this.day.used += Math.max(0, Math.round(outcome.tokens));
    const statusClass = outcome.status === 0 ? "aborted" : (`${Math.floor(outcome.status / 100)}xx` as keyof UserMetrics["status"]);
    if (statusClass in this.metrics.status) this.metrics.status[statusClass]++;
    if (outcome.upstreamLatencyMs !== null) {
      const seconds = outcome.upstreamLatencyMs / 1000;
      const index = LATENCY_BUCKETS.findIndex((bound) => seconds <= bound);
      this.metrics.latencyBuckets[index === -1 ? LATENCY_BUCKETS.length : index]!++;
      this.metrics.latencySumSeconds += seconds;
      this.metrics.latencyCount++;
    }
    await this.persist("day", "metrics");
  }

  /** Single use of a WebSocket ticket: true the first time its id is seen (ids kept until expiry). */
  async consumeTicket(jti: string, expiresAt: number): Promise<boolean> {
    const used = (await this.ctx.storage.get<Record<string, number>>("tickets")) ?? {};
    const now = Date.now();
    for (const [id, expiry] of Object.entries(used)) if (expiry < now) delete used[id];
    if (jti in used) return false;
    used[jti] = expiresAt;
    await this.ctx.storage.put("tickets", used);
    return true;
  }

  async snapshot(now: number, timezone: string): Promise<UsageSnapshot> {
    this.dropExpiredLeases(Date.now());
    this.rollDay(now, timezone);
    return { day: this.day.key, tokensToday: this.day.used, inFlight: this.leases.size, metrics: this.metrics };
  }

  private state(limits: UserLimits, now: number, timezone: string): QuotaState {
    const level = this.bucket!.level;
    return {
      requestsRemaining: Math.max(0, level),
      requestsResetSeconds: Math.ceil(Math.max(0, limits.burst - level) / limits.rps),
      tokensUsedToday: this.day.used,
      tokensRemainingToday: Math.max(0, limits.daily_tokens - this.day.used),
      dayResetSeconds: Math.max(1, Math.ceil((nextMidnight(now, timezone) - now) / 1000)),
      inFlight: this.leases.size,
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

  private rollDay(now: number, timezone: string) {
    const key = dayKey(now, timezone);
    if (key !== this.day.key) this.day = { key, used: 0 };
  }

  private dropExpiredLeases(wallClock: number) {
    for (const [leaseId, expiresAt] of this.leases) if (expiresAt <= wallClock) this.leases.delete(leaseId);
  }

  /** A renewal crosses its release within milliseconds; a minute is ample, and bounds the map. */
  private forgetOldReleases(wallClock: number) {
    for (const [leaseId, at] of this.released) if (wallClock - at > RELEASED_MEMORY_MS) this.released.delete(leaseId);
  }

  /** Writes through only what a call changed (each key is one row of the object's SQLite store). */
  private async persist(...keys: Array<"bucket" | "day" | "metrics">) {
    const values = { bucket: this.bucket, day: this.day, metrics: this.metrics };
    await this.ctx.storage.put(Object.fromEntries(keys.map((key) => [key, values[key]])));
  }
}
