/**
 * The quota day: it ends at midnight in the configured IANA timezone (DST-safe: the next midnight
 * is found by searching for the instant the local date changes, not by adding 24 h).
 */
const formatters = new Map<string, Intl.DateTimeFormat>();

/** `YYYY-MM-DD` of `time` in `timeZone`. */
export function dayKey(time: number, timeZone: string): string {
  let formatter = formatters.get(timeZone);
  if (!formatter) {
    formatter = new Intl.DateTimeFormat("en-CA", { timeZone, year: "numeric", month: "2-digit", day: "2-digit" });
    formatters.set(timeZone, formatter);
  }
  return formatter.format(time);
}

/** The first instant (ms) after `time` that belongs to the next local day. */
export function nextMidnight(time: number, timeZone: string): number {
  const today = dayKey(time, timeZone);
  let low = time;
  let high = time + 27 * 3_600_000; // no local day is longer than 25 h
  while (high - low > 1) {
    const middle = Math.floor((low + high) / 2);
    if (dayKey(middle, timeZone) === today) low = middle;
    else high = middle;
  }
  return high;
}

export interface QuotaDay {
  key: string;
  /** First instant (ms) of the next day. */
  endsAt: number;
}

/** The last day computed per timezone, with the instant it was computed from. */
const current = new Map<string, { day: QuotaDay; from: number }>();

/**
 * The quota day of `time`, computed once per day and timezone (issue 8: `admit` used to format ~27
 * dates per call finding the next midnight). Valid from the instant it was computed until the day
 * ends; a clock that goes backwards (tests pin it) recomputes.
 */
export function quotaDay(time: number, timeZone: string): QuotaDay {
  const cached = current.get(timeZone);
  if (cached && time >= cached.from && time < cached.day.endsAt) return cached.day;
  const day = { key: dayKey(time, timeZone), endsAt: nextMidnight(time, timeZone) };
  current.set(timeZone, { day, from: time });
  return day;
}
