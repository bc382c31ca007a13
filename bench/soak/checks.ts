/**
 * What the soak asserts, from what the clients saw, what the upstream logged, and what the admin
 * CLI reports (`usage --json`, `list --json`, `audit`) at three snapshots:
 *
 *   P  after phase 1 (load, bursts, the upstream outage), quiesced: no request in flight;
 *   R  right after the restart that followed the `kill -9` (phase 2's load was cut by it);
 *   F  after phase 3 (load on the restarted serve), quiesced.
 *
 * Each check is a row of the final table; any failed row makes the soak exit 1.
 */
import type { RequestRecord } from "./client.ts";
import type { AuditEvent, ListedUser, UserUsage } from "./gateway.ts";
import type { UpstreamLogLine } from "./upstream.ts";

export interface Windows {
  upstreamKilledAt: number;
  upstreamBackAt: number;
  serveKilledAt: number;
  serveReadyAt: number;
}

export interface Snapshot {
  usage: UserUsage[];
  list: ListedUser[];
  audit: AuditEvent[];
}

export interface BurstGroup {
  user: number;
  covering: RequestRecord;
  posts: RequestRecord[];
  gets: RequestRecord[];
}

export interface RssReport {
  name: string;
  peakMb: number;
  final: Array<{ pid: number; name: string; rssMb: number }>;
}

export interface SoakData {
  handles: string[];
  limits: { rps: number; burst: number; streams: number; daily_tokens: number };
  records: RequestRecord[];
  bursts: BurstGroup[];
  upstreamLog: Map<string, UpstreamLogLine>;
  windows: Windows;
  /** usage right after the invites (every user at 0). */
  baseline: UserUsage[];
  P: Snapshot;
  R: Snapshot;
  F: Snapshot;
  rss: RssReport[];
  rssLimitMb: number;
  /** workerd pids of the killed serve, and whether each was gone once the new serve was up. */
  orphans: Array<{ pid: number; goneAfterRestart: boolean }>;
}

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

/** Upstream-side slack in the kill -9 bound: prompt tokens are 5 + (body length % 23) ≤ 27. */
const MAX_PROMPT_TOKENS = 27;
/** Time between the upstream's restart and the last request that may still get 502/504 from it. */
const OUTAGE_GRACE_MS = 1_000;

const isChat = (record: RequestRecord) => record.kind === "stream" || record.kind === "json" || record.kind === "burst-post";
const isSse = (record: RequestRecord) => record.kind === "stream" || record.kind === "burst-post";
/** The status the gateway ends the request with (and audits): an SSE stream cut by the upstream ends 502. */
const finalStatus = (record: RequestRecord) => (record.outcome === "interrupted" ? 502 : record.status);

/**
 * The tokens the gateway should charge for one request, from what the client saw (the gateway
 * charges `usage.total_tokens` when the upstream sent one, else the streamed content deltas; a
 * refused or failed request charges nothing):
 * - not 200 (429, 502 before any byte): 0;
 * - completed, with usage the client asked for (JSON body, or the SSE usage chunk): that total;
 * - a completed stream that did NOT ask for usage: the gateway asked the upstream for it and dropped
 *   the chunk, so the client cannot see it — the upstream's log (joined by `x-request-id`) says what it
 *   reported, and that is what must be charged;
 * - a stream cut by the upstream outage (the gateway's `stream_interrupted` event) or otherwise cut:
 *   the usage if it had already arrived, else the content deltas the client received (the gateway
 *   forwards every event it reads, in order, before its error event, so it read the same deltas).
 */
export function expectedCharge(record: RequestRecord, upstreamLog: Map<string, UpstreamLogLine>): number {
  if (!isChat(record) || record.status !== 200) return 0;
  if (record.outcome === "completed") {
    if (record.kind === "json" || record.askedUsage) return record.usage ?? 0;
    return upstreamLog.get(record.id)?.usage ?? record.deltas;
  }
  return record.usage ?? record.deltas;
}

const sum = (values: number[]) => values.reduce((total, value) => total + value, 0);
const byUser = (records: RequestRecord[], user: number) => records.filter((record) => record.user === user);
const tokensOf = (usage: UserUsage[], handle: string) => usage.find((entry) => entry.handle === handle)?.tokens_today ?? Number.NaN;

function histogram(values: Array<number | string | null>): string {
  const counts = new Map<string, number>();
  for (const value of values) counts.set(String(value), (counts.get(String(value)) ?? 0) + 1);
  return [...counts]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([key, count]) => `${key}×${count}`)
    .join(" ");
}

/** Audit rows of auth decisions for one handle: allow statuses (one row each) and the denial count. */
function auditOf(audit: AuditEvent[], handle: string, exclude: Set<number> = new Set()) {
  const rows = audit.filter((event) => event.kind === "auth" && event.handle === handle && event.route === "v2");
  const allows = rows.filter((event) => event.action === "allow" && !exclude.has(event.id));
  const denials = sum(rows.filter((event) => event.action === "deny" && event.reason?.startsWith("quota:")).map((event) => event.count));
  return { allows: allows.map((event) => event.status), denials };
}

export function runChecks(data: SoakData): { checks: Check[]; tokenRows: string[][]; requestRows: string[][]; burstRows: string[][] } {
  const checks: Check[] = [];
  const check = (name: string, ok: boolean, detail: string) => checks.push({ name, ok, detail });
  const { records, windows, upstreamLog } = data;
  const inOutage = (record: RequestRecord) => record.startedAt >= windows.upstreamKilledAt - 2_000 && record.startedAt <= windows.upstreamBackAt + OUTAGE_GRACE_MS && record.endedAt >= windows.upstreamKilledAt;
  const inKillWindow = (record: RequestRecord) => record.endedAt >= windows.serveKilledAt && record.startedAt <= windows.serveReadyAt;

  // 1. Statuses: no 5xx but 502/504, and those only during the upstream outage.
  const fivexx = records.filter((record) => record.status !== null && record.status >= 500);
  const other5xx = fivexx.filter((record) => record.status !== 502 && record.status !== 504);
  check("no 5xx other than 502/504", other5xx.length === 0, other5xx.length ? `${histogram(other5xx.map((record) => record.status))}: ${other5xx.slice(0, 3).map((record) => `${record.id} ${record.errorCode}`).join(", ")}` : `${fivexx.length} 5xx, all 502/504 (no 503 was seen at all, so none needed justifying)`);
  const outageFailures = records.filter((record) => (record.status === 502 || record.status === 504 || record.outcome === "interrupted") && !inOutage(record));
  const outage502 = records.filter((record) => (record.status === 502 || record.status === 504) && inOutage(record));
  const outageInterrupted = records.filter((record) => record.outcome === "interrupted" && inOutage(record));
  check("502/504 only during the upstream outage", outageFailures.length === 0, outageFailures.length ? `${outageFailures.length} outside it: ${outageFailures.slice(0, 3).map((record) => `${record.id} ${record.status} ${record.errorCode} at +${record.startedAt - windows.upstreamKilledAt} ms`).join(", ")}` : `${outage502.length} × 502/504 and ${outageInterrupted.length} stream(s) cut with stream_interrupted during the ${Math.round((windows.upstreamBackAt - windows.upstreamKilledAt) / 1000)} s outage`);
  check("the outage was exercised", outage502.length >= 10, `${outage502.length} requests answered 502/504 while the upstream was down (at least 10 expected)`);
  const duringOutage = records.filter((record) => record.startedAt >= windows.upstreamKilledAt + 500 && record.startedAt <= windows.upstreamBackAt - 500 && record.kind !== "probe");
  const badOutage = duringOutage.filter((record) => record.status !== 502 && record.status !== 504);
  check("every request during the outage: 502/504", badOutage.length === 0, badOutage.length ? `${badOutage.length}: ${histogram(badOutage.map((record) => record.status ?? record.outcome))}` : `${duringOutage.length} requests sent while the upstream was down, all 502/504`);
  const timeouts = records.filter((record) => record.outcome === "timeout");
  check("no request hung (each bounded by a timeout)", timeouts.length === 0, timeouts.length ? `${timeouts.length} timed out: ${timeouts.slice(0, 3).map((record) => `${record.id} ${record.failure}`).join(", ")}` : "0 timeouts");
  const connFailures = records.filter((record) => (record.outcome === "conn_error" || record.outcome === "cut") && !inKillWindow(record));
  const killCut = records.filter((record) => (record.outcome === "conn_error" || record.outcome === "cut") && inKillWindow(record));
  check("connection failures only across the kill -9", connFailures.length === 0, connFailures.length ? `${connFailures.length} outside it: ${connFailures.slice(0, 3).map((record) => `${record.id} ${record.failure}`).join(", ")}` : `${killCut.length} request(s) cut or refused between the kill -9 and the restart (${histogram(killCut.map((record) => record.outcome))})`);
  const probes = records.filter((record) => record.kind === "probe");
  const badProbes = probes.filter((record) => record.status !== null && record.status >= 500 && record.status !== 502 && record.status !== 504);
  check("while serve was down: refused connections, no 5xx", badProbes.length === 0 && probes.length > 0, `${probes.length} probes: ${histogram(probes.map((record) => record.status ?? (record.failure?.match(/\((\w+)\)$/)?.[1] ?? record.outcome)))}`);

  // 2. Quotas: every over-cap request 429; nothing within the caps refused.
  const covered = data.bursts.flatMap((group) => group.posts.filter((post) => group.covering.endedAt > post.endedAt).map((post) => ({ post, group })));
  const coveredBad = covered.filter(({ post }) => post.status !== 429 || !post.errorMessage?.startsWith("Too many requests in flight"));
  const uncovered = sum(data.bursts.map((group) => group.posts.length)) - covered.length;
  check("over the streams cap: every extra POST 429", coveredBad.length === 0 && covered.length > 0, coveredBad.length ? `${coveredBad.length} of ${covered.length}: ${histogram(coveredBad.map(({ post }) => post.status))} (200 = admitted while the user's stream ran)` : `${covered.length} POSTs sent while the user's stream was running: all 429 (concurrency); ${uncovered} sent as the stream ended are not counted`);
  const getGroups = data.bursts.filter((group) => group.gets.length > 0);
  const getBad = getGroups.filter((group) => {
    const ok = group.gets.filter((get) => get.status === 200).length;
    const refused = group.gets.filter((get) => get.status === 429 && get.errorMessage?.startsWith("Rate limit reached") && get.retryAfter !== null).length;
    return ok > data.limits.burst || ok + refused !== group.gets.length;
  });
  const overBucket = sum(getGroups.map((group) => group.gets.length - data.limits.burst));
  const getRefused = sum(getGroups.map((group) => group.gets.filter((get) => get.status === 429).length));
  check("over the rate bucket: every request past the burst 429", getBad.length === 0 && getGroups.length > 0, getBad.length ? `${getBad.length} of ${getGroups.length} bursts had more than ${data.limits.burst} admitted or another answer: ${getBad.slice(0, 2).map((group) => histogram(group.gets.map((get) => get.status))).join(" | ")}` : `${getGroups.length} bursts of ${getGroups[0]?.gets.length ?? 0} GETs: at most ${data.limits.burst} admitted each; ${getRefused} × 429 (rate, with Retry-After) ≥ ${overBucket} over the bucket`);
  const perUserBursts = data.handles.map((_, index) => covered.filter(({ group }) => group.user === index + 1).length);
  check("every user was burst over its caps", perUserBursts.every((count) => count >= 3), `covered POSTs per user: ${perUserBursts.join(" ")} (at least 3 each)`);
  const mainRefused = records.filter((record) => (record.kind === "stream" || record.kind === "json") && record.status === 429);
  check("no 429 for requests within the caps", mainRefused.length === 0, mainRefused.length ? `${mainRefused.length} back-to-back requests got 429: ${mainRefused.slice(0, 3).map((record) => `${record.id} ${record.errorMessage?.slice(0, 60)}`).join(", ")}` : "0 of the users' back-to-back requests refused");
  const edge429 = records.filter((record) => record.errorCode === "too_many_requests");
  check("no edge per-peer 429 (the soak stays under it)", edge429.length === 0, `${edge429.length}`);

  // 3. Tokens: what usage says vs what the client saw and the upstream reported.
  const leaked = records.filter((record) => isSse(record) && !record.askedUsage && record.usage !== null);
  check("no usage chunk the client did not ask for", leaked.length === 0, `${records.filter((record) => isSse(record) && !record.askedUsage && record.outcome === "completed").length} completed streams without include_usage; ${leaked.length} saw a usage chunk`);
  const mismatched = records.filter((record) => {
    if (!isChat(record) || record.outcome !== "completed") return false;
    const line = upstreamLog.get(record.id);
    if (!line || line.user !== data.handles[record.user - 1]) return true; // and the gateway named the right user
    if (record.kind === "json" || record.askedUsage) return line.usage !== record.usage;
    return line.usage === null || line.deltas !== record.deltas; // the gateway asked for usage on the client's behalf
  });
  const completedChats = records.filter((record) => isChat(record) && record.outcome === "completed").length;
  check("client-seen usage = upstream-reported usage", mismatched.length === 0, mismatched.length ? `${mismatched.length} of ${completedChats}: ${mismatched.slice(0, 3).map((record) => `${record.id} client ${record.usage} upstream ${upstreamLog.get(record.id)?.usage ?? "no log line"}`).join(", ")}` : `${completedChats} completed completions: usage identical on both sides (joined by x-request-id), X-Halo-User right`);

  const tokenRows: string[][] = [];
  const phase1Bad: string[] = [];
  const phase2Bad: string[] = [];
  const phase3Bad: string[] = [];
  data.handles.forEach((handle, index) => {
    const user = index + 1;
    const mine = byUser(records, user);
    const base = tokensOf(data.baseline, handle);
    const p = tokensOf(data.P.usage, handle);
    const r = tokensOf(data.R.usage, handle);
    const f = tokensOf(data.F.usage, handle);
    const expected1 = sum(mine.filter((record) => record.phase === 1).map((record) => expectedCharge(record, upstreamLog)));
    const phase2 = mine.filter((record) => record.phase === 2);
    // Phase 2 ends with the kill -9. Requests that completed before it were charged at their release
    // (the day's tokens are written then; workerd outlives the killed serve until the restart ends it),
    // so they are the lower bound. Requests the kill cut — mid-stream, or sent but unanswered — are
    // charged NOTHING if the core never released them (user-quota.ts: "a crash: the tokens of the
    // streams it cut are never charged"), or the deltas the core had read when the orphaned workerd saw
    // the edge's connections close, which can be more than the client received (the upstream kept
    // streaming to workerd). Exact equality is therefore impossible across the kill -9; asserted:
    // P + completed ≤ R ≤ P + completed + Σ(n + max prompt tokens) of the cut requests, and P exact.
    const completed2 = sum(phase2.filter((record) => record.outcome === "completed").map((record) => expectedCharge(record, upstreamLog)));
    const cut2 = phase2.filter((record) => isChat(record) && record.outcome !== "completed" && record.status !== 429 && record.status !== 502 && record.status !== 504);
    const cutMax = sum(cut2.map((record) => record.n + MAX_PROMPT_TOKENS));
    const expected3 = sum(mine.filter((record) => record.phase === 3).map((record) => expectedCharge(record, upstreamLog)));
    const ok1 = p - base === expected1;
    const ok2 = r >= p + completed2 && r <= p + completed2 + cutMax;
    const ok3 = f - r === expected3;
    if (!ok1) phase1Bad.push(`${handle}: usage +${p - base}, expected ${expected1}`);
    if (!ok2) phase2Bad.push(`${handle}: R ${r} not in [${p + completed2}, ${p + completed2 + cutMax}]`);
    if (!ok3) phase3Bad.push(`${handle}: usage +${f - r}, expected ${expected3}`);
    tokenRows.push([handle, String(expected1), String(p - base), ok1 ? "=" : "≠", String(completed2), `${cut2.length} (≤${cutMax})`, String(r - p - completed2), ok2 ? "in" : "OUT", String(expected3), String(f - r), ok3 ? "=" : "≠", String(f)]);
  });
  check("tokens before the kill -9 (P) = expected, exactly", phase1Bad.length === 0, phase1Bad.length ? phase1Bad.join("; ") : `all ${data.handles.length} users`);
  check("tokens across the kill -9 (R) within bounds", phase2Bad.length === 0, phase2Bad.length ? phase2Bad.join("; ") : "P + completed ≤ R ≤ P + completed + cut requests' maximum, every user");
  check("tokens after the restart (F − R) = expected, exactly", phase3Bad.length === 0, phase3Bad.length ? phase3Bad.join("; ") : `all ${data.handles.length} users`);
  const days = new Set([...data.baseline, ...data.P.usage, ...data.R.usage, ...data.F.usage].map((entry) => entry.day));
  check("one quota day throughout", days.size === 1, [...days].join(", "));

  // 4. Users, tokens and audit rows intact after the restart.
  const identity = (user: ListedUser) => JSON.stringify([user.handle, user.status, user.token_id, user.token_hint, user.scopes, user.issued_at, user.expires_at, user.revoked_at, user.limits]);
  const listP = data.P.list.map(identity).sort();
  const sameR = JSON.stringify(listP) === JSON.stringify(data.R.list.map(identity).sort());
  const sameF = JSON.stringify(listP) === JSON.stringify(data.F.list.map(identity).sort());
  const allActive = data.F.list.length === data.handles.length && data.F.list.every((user) => user.status === "active");
  check("users and tokens intact after the restart", sameR && sameF && allActive, `${data.F.list.length} users, all active: ${allActive}; handle, token id/hint, scopes, issued/expires, limits identical at P, R, F: ${sameR && sameF}`);
  const listTokens = data.F.list.every((user) => user.tokens_today === tokensOf(data.F.usage, user.handle));
  check("list's tokens_today = usage's", listTokens, listTokens ? "every user, at F" : data.F.list.map((user) => `${user.handle} ${user.tokens_today}/${tokensOf(data.F.usage, user.handle)}`).join(" "));
  const servedAfter = data.handles.map((_, index) => records.filter((record) => record.user === index + 1 && record.phase === 3 && record.kind === "stream" && record.outcome === "completed").length);
  check("every token still works after the restart", servedAfter.every((count) => count > 0), `completed streams per user after the restart: ${servedAfter.join(" ")}`);

  const rAudit = new Map(data.R.audit.map((event) => [event.id, event]));
  const lost = data.P.audit.filter((event) => {
    const later = rAudit.get(event.id);
    if (!later) return true;
    const { count: countP, ...restP } = event;
    const { count: countR, ...restR } = later;
    // An aggregated denial row keeps counting identical denials of its minute, so it may only grow.
    return JSON.stringify(restP) !== JSON.stringify(restR) || countR < countP;
  });
  check("audit rows before the kill -9 intact after it", lost.length === 0 && data.P.audit.length > 0, lost.length ? `${lost.length} of ${data.P.audit.length} rows missing or changed` : `all ${data.P.audit.length} rows of P found unchanged at R (and ${data.R.audit.length} rows at R, ${data.F.audit.length} at F)`);
  const auditBad: string[] = [];
  const rIds = new Set(data.R.audit.map((event) => event.id));
  data.handles.forEach((handle, index) => {
    const mine = byUser(records, index + 1);
    for (const [phase, audit, exclude, before] of [
      [1, data.P.audit, new Set<number>(), 0],
      [3, data.F.audit, rIds, auditOf(data.R.audit, handle).denials],
    ] as const) {
      const inPhase = mine.filter((record) => record.phase === phase && record.status !== null);
      const client = { allows: histogram(inPhase.filter((record) => record.status !== 429).map(finalStatus)), denials: inPhase.filter((record) => record.status === 429).length };
      const rows = auditOf(audit, handle, exclude);
      const logged = { allows: histogram(rows.allows), denials: rows.denials - before };
      if (client.allows !== logged.allows || client.denials !== logged.denials) auditBad.push(`${handle} phase ${phase}: client allow ${client.allows} deny ${client.denials}, audit allow ${logged.allows} deny ${logged.denials}`);
    }
  });
  check("one audit row per request (statuses match)", auditBad.length === 0, auditBad.length ? auditBad.slice(0, 3).join("; ") : "phase 1 (at P) and phase 3 (F − R): every user's allow rows have the statuses the clients got, deny counts = their 429s");

  // 5. Processes.
  for (const report of data.rss) check(`RSS of ${report.name} ≤ ${data.rssLimitMb} MB`, report.peakMb <= data.rssLimitMb, `peak ${report.peakMb.toFixed(0)} MB; at its last sample: ${report.final.map((entry) => `${entry.name} ${entry.pid} ${entry.rssMb.toFixed(0)} MB`).join(", ")}`);
  check("the killed serve's workerd was ended by the restart", data.orphans.length > 0 && data.orphans.every((orphan) => orphan.goneAfterRestart), data.orphans.map((orphan) => `workerd ${orphan.pid}: ${orphan.goneAfterRestart ? "gone" : "STILL RUNNING"}`).join(", ") || "no workerd pid was recorded");

  // Tables.
  const requestRows: string[][] = [];
  for (const phase of [1, 2, 3]) {
    for (const kind of ["stream", "json", "burst-post", "burst-get", "probe"] as const) {
      const group = records.filter((record) => record.phase === phase && record.kind === kind);
      if (group.length === 0) continue;
      const outcomes = histogram(group.map((record) => (record.outcome === "completed" ? 200 : record.outcome === "refused" ? record.status : (record.outcome))));
      const latency = group.filter((record) => record.headersAt !== null).map((record) => record.headersAt! - record.startedAt).sort((a, b) => a - b);
      const p50 = latency.length ? latency[Math.floor(latency.length / 2)]! : 0;
      const p99 = latency.length ? latency[Math.min(latency.length - 1, Math.floor(latency.length * 0.99))]! : 0;
      requestRows.push([String(phase), kind, String(group.length), outcomes, `${p50}/${p99}`]);
    }
  }
  const burstRows = [
    ["POST while the stream runs", String(covered.length), histogram(covered.map(({ post }) => post.status))],
    ["POST as the stream ended (not counted)", String(uncovered), histogram(data.bursts.flatMap((group) => group.posts.filter((post) => group.covering.endedAt <= post.endedAt).map((post) => post.status)))],
    [`GET ×${getGroups[0]?.gets.length ?? 0} vs burst ${data.limits.burst}`, String(sum(getGroups.map((group) => group.gets.length))), histogram(getGroups.flatMap((group) => group.gets.map((get) => get.status)))],
  ];
  return { checks, tokenRows, requestRows, burstRows };
}

export function table(header: string[], rows: string[][]): string {
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => (row[column] ?? "").length)));
  const line = (cells: string[]) => cells.map((cell, column) => cell.padEnd(widths[column]!)).join("  ").trimEnd();
  return [line(header), line(widths.map((width) => "-".repeat(width))), ...rows.map(line)].join("\n");
}
