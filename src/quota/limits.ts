/** Per-user limits: the user's own overrides (from invite/update) over the configured defaults. */
import { defaultBurst, type GatewayConfig, type UserLimits } from "../config/schema";

/** Per-user limits; absent (or NULL in D1) means "the configured default". */
export interface LimitOverrides {
  rps?: number | null | undefined;
  burst?: number | null | undefined;
  streams?: number | null | undefined;
  daily_tokens?: number | null | undefined;
}

export function effectiveLimits(config: GatewayConfig, overrides: LimitOverrides): UserLimits {
  const rps = overrides.rps ?? config.limits.rps;
  return {
    rps,
    // A user given their own rate without a burst gets burst = rps (SPEC §6), not the default burst.
    burst: overrides.burst ?? (overrides.rps != null ? defaultBurst(rps) : config.limits.burst),
    streams: overrides.streams ?? config.limits.streams,
    daily_tokens: overrides.daily_tokens ?? config.limits.daily_tokens,
  };
}
