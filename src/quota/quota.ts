/**
 * Per-user quotas behind a small interface (the Durable Object implementation is beside it).
 * One `admit` call decides a request with every check at once; `release` frees the in-flight
 * slot and charges the LLM tokens when the response has ended, however it ended.
 */
import type { UserLimits } from "../config/schema";

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
}

export interface QuotaService {
  admit(request: AdmitRequest): Promise<Admission>;
  /** Keep a running stream's slot alive. */
  renew(handle: string, leaseId: string, leaseMs: number): Promise<void>;
  release(handle: string, leaseId: string, outcome: RequestOutcome, now: number, timezone: string): Promise<void>;
}

/** Quotas switched off (config `quotas = false`): every request admitted, nothing counted. */
export const unlimitedQuota: QuotaService = {
  admit: async (request) => ({
    admitted: true,
    leaseId: "unlimited",
    state: { requestsRemaining: request.limits.burst, requestsResetSeconds: 0, tokensUsedToday: 0, tokensRemainingToday: request.limits.daily_tokens, dayResetSeconds: 0, inFlight: 0 },
  }),
  renew: async () => {},
  release: async () => {},
};
