/**
 * Durations as the operator writes them: `10d`, `24h`, `30m`, `45s`, `250ms`.
 * One parser serves the config (`default_ttl`, `upstream_timeout`) and the CLI (`--ttl`).
 */
const UNIT_MS = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
const DURATION = /^([1-9][0-9]{0,8})(ms|s|m|h|d)$/;

/** The longest token lifetime (`--ttl`, `default_ttl`): a year. `update --ttl` extends a token. */
export const MAX_TTL = "365d";
/** `rotate --grace`: how long an old token may keep working beside its replacement. */
export const MAX_ROTATE_GRACE = "7d";

/** Milliseconds for a duration string, or `undefined` when it is not one. */
export function parseDuration(text: string): number | undefined {
  const match = DURATION.exec(text.trim());
  if (!match) return undefined;
  return Number(match[1]) * UNIT_MS[match[2] as keyof typeof UNIT_MS];
}

/** Why `text` is not a duration of at most `max` (itself a duration), or `undefined` when it is one. */
export function durationProblem(text: string, max: string): string | undefined {
  const ms = parseDuration(text);
  if (ms === undefined) return "must be a duration such as 10d, 24h, 30m or 45s";
  if (ms > (parseDuration(max) as number)) return `must be at most ${max}`;
  return undefined;
}
