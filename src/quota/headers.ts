/**
 * RateLimit headers (IETF httpapi ratelimit-headers draft, structured-field syntax) and the
 * OpenAI-shaped 429 bodies: what was hit, and when it resets.
 */
import type { UserLimits } from "../shared/config";
import { Refused } from "../http/errors";
import type { ErrorBody } from "../shared/refusals";
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

/** OpenAI's duration format for `x-ratelimit-reset-*`: `12ms`, `1s`, `6m0s`, `1h2m3s`. */
export function openAiDuration(seconds: number): string {
  if (seconds < 1) return `${Math.max(0, Math.round(seconds * 1000))}ms`;
  const total = Math.ceil(seconds);
  const [hours, minutes, rest] = [Math.floor(total / 3600), Math.floor((total % 3600) / 60), total % 60];
  if (hours > 0) return `${hours}h${minutes}m${rest}s`;
  if (minutes > 0) return `${minutes}m${rest}s`;
  return `${rest}s`;
}

/** Headers on every authenticated response, streams included: what is left, and when it resets. */
export function quotaHeaders(limits: UserLimits, state: QuotaState): Record<string, string> {
  return {
    "ratelimit-policy": rateLimitPolicy(limits),
    ratelimit: rateLimitState(state),
    "x-ratelimit-limit-requests": String(limits.burst),
    "x-ratelimit-remaining-requests": String(Math.floor(state.requestsRemaining)),
    "x-ratelimit-reset-requests": openAiDuration(state.requestsResetSeconds),
    "x-ratelimit-limit-tokens": String(limits.daily_tokens),
    "x-ratelimit-remaining-tokens": String(state.tokensRemainingToday),
    "x-ratelimit-reset-tokens": openAiDuration(state.dayResetSeconds),
  };
}

/** The 429 of a quota refusal, with what was hit and when it resets (thrown like every refusal). */
export function quotaExceeded(handle: string, refusal: QuotaRefusal, retryAfterSeconds: number, limits: UserLimits, state: QuotaState): Refused {
  const resetsAt = new Date(Date.now() + retryAfterSeconds * 1000).toISOString();
  const body: ErrorBody =
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
  // The daily quota is not worth retrying before it resets (hours away): `x-should-retry: false` makes
  // both OpenAI SDKs raise at once instead of sleeping until midnight on `Retry-After` (issue 9).
  // Rate and concurrency refusals are: `retry-after-ms` is what the SDKs read first.
  const retry: Record<string, string> = refusal === "daily" ? { "x-should-retry": "false" } : { "retry-after-ms": String(retryAfterSeconds * 1000) };
  return new Refused({ status: 429, ...body, headers: { "retry-after": String(retryAfterSeconds), ...retry, ...quotaHeaders(limits, state) } });
}
