/**
 * RateLimit headers (IETF httpapi ratelimit-headers draft, structured-field syntax) and the
 * OpenAI-shaped 429 bodies: what was hit, and when it resets.
 */
import type { UserLimits } from "../config/schema";
import { errorResponse } from "../http/errors";
import type { QuotaRefusal, QuotaState } from "./quota";

export function rateLimitPolicy(limits: UserLimits): string {
  const window = Math.max(1, Math.ceil(limits.burst / limits.rps));
  return [
    `"requests";q=${limits.burst};w=${window}`,
    `"streams";q=${limits.streams};qu="concurrent-requests"`,
    `"tokens";q=${limits.daily_tokens};w=86400`,
  ].join(", ");
}

export function rateLimitState(state: QuotaState): string {
  return [
    `"requests";r=${Math.floor(state.requestsRemaining)};t=${state.requestsResetSeconds}`,
    `"tokens";r=${state.tokensRemainingToday};t=${state.dayResetSeconds}`,
  ].join(", ");
}

/** Headers on every admitted response: what is left. */
export function quotaHeaders(limits: UserLimits, state: QuotaState): Record<string, string> {
  return {
    "ratelimit-policy": rateLimitPolicy(limits),
    ratelimit: rateLimitState(state),
    "x-ratelimit-limit-requests": String(limits.burst),
    "x-ratelimit-remaining-requests": String(Math.floor(state.requestsRemaining)),
    "x-ratelimit-limit-tokens": String(limits.daily_tokens),
    "x-ratelimit-remaining-tokens": String(state.tokensRemainingToday),
  };
}

export function quotaExceeded(handle: string, refusal: QuotaRefusal, retryAfterSeconds: number, limits: UserLimits, state: QuotaState): Response {
  const resetsAt = new Date(Date.now() + retryAfterSeconds * 1000).toISOString();
  const body =
    refusal === "daily"
      ? {
          message: `Daily token quota used up for ${handle}: ${state.tokensUsedToday} of ${limits.daily_tokens} tokens today. It resets at midnight (${resetsAt}).`,
          type: "insufficient_quota",
          code: "insufficient_quota",
        }
      : refusal === "concurrency"
        ? {
            message: `Too many requests in flight for ${handle}: the limit is ${limits.streams} at a time. Wait for the running one to finish.`,
            type: "requests",
            code: "rate_limit_exceeded",
          }
        : {
            message: `Rate limit reached for ${handle}: ${limits.rps} requests per second (burst ${limits.burst}). Retry in ${retryAfterSeconds} s.`,
            type: "requests",
            code: "rate_limit_exceeded",
          };
  return errorResponse(429, body, { "retry-after": String(retryAfterSeconds), ...quotaHeaders(limits, state) });
}
