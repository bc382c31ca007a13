/** Per-user limits: the user's own overrides (from invite/update) over the configured defaults. */
import { defaultBurst, type UserLimits } from "../shared/config";

/** Per-user limits; absent (or NULL in D1) means "the configured default". */
export interface LimitOverrides {
  rps?: number | null | undefined;
  burst?: number | null | undefined;
  streams?: number | null | undefined;
  daily_tokens?: number | null | undefined;
}

export function effectiveLimits(defaults: UserLimits, overrides: LimitOverrides): UserLimits {
  const rps = overrides.rps ?? defaults.rps;
  return {
    rps,
    // A user given their own rate without a burst gets burst = rps (docs/contract.md §6), not the default burst.
    burst: overrides.burst ?? (overrides.rps != null ? defaultBurst(rps) : defaults.burst),
    streams: overrides.streams ?? defaults.streams,
    daily_tokens: overrides.daily_tokens ?? defaults.daily_tokens,
  };
}
