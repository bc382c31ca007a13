/**
 * The contention bench's numbers and its markdown: per run, what each user got done, how evenly
 * (Jain's fairness index), how long requests waited for the upstream, the 429s the clients saw, and
 * how many requests the upstream had open at once.
 */
import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import type { CallRecord } from "./client.ts";
import type { RateLimits, UserPlan } from "./gateway.ts";
import type { SlottedStats } from "../../test/support/slotted-upstream.ts";

/** Nearest-rank percentile (p in 0–100); NaN for no values. */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

/** Jain's fairness index: (Σx)² / (n·Σx²) — 1 when all equal, 1/n when one gets everything. */
export function jain(values: number[]): number {
  const sum = values.reduce((total, value) => total + value, 0);
  const squares = values.reduce((total, value) => total + value * value, 0);
  return squares === 0 ? NaN : (sum * sum) / (values.length * squares);
}

export interface RunSpec {
  id: "a" | "b";
  /** null: no `max_in_flight` on the route (today's behaviour). */
  maxInFlight: number | null;
  label: string;
}

export interface UserResult {
  handle: string;
  loops: number;
  streams: number | null;
  completed: number;
  refusals429: number;
  gaveUp: number;
  errors: number;
  waitP50: number;
  waitP95: number;
}

export interface RunResult {
  spec: RunSpec;
  /** ran: measured; unsupported: this build refuses the run's config (the queue has not landed); failed: anything else. */
  status: "ran" | "unsupported" | "failed";
  /** What the reader must know about this run (why it did not run; that the queue looked inactive…). */
  notes: string[];
  users: UserResult[];
  completed: number;
  minPerUser: number;
  maxPerUser: number;
  jain: number;
  waitP50: number;
  waitP95: number;
  /** Where the queue wait came from: the gateway's header, or end-to-end latency − service time. */
  waitSource: "x-halo-queue-wait-ms" | "latency − service" | "mixed" | "none";
  latencyP50: number;
  latencyP95: number;
  refusals429: number;
  /** 429s by error code (`rate_limit_exceeded`, `queue_timeout`, …). */
  codes429: Record<string, number>;
  gaveUp: number;
  errors: number;
  /** A few of the errors, for the notes. */
  errorSamples: string[];
  /** Completed responses that carried `x-halo-queue-wait-ms`. */
  withHeader: number;
  upstream: { maxConcurrent: number; maxRunning: number; maxWaiting: number; served: number; waitP50: number; waitP95: number } | null;
}

export const emptyResult = (spec: RunSpec, status: RunResult["status"], notes: string[]): RunResult => ({
  spec,
  status,
  notes,
  users: [],
  completed: 0,
  minPerUser: NaN,
  maxPerUser: NaN,
  jain: NaN,
  waitP50: NaN,
  waitP95: NaN,
  waitSource: "none",
  latencyP50: NaN,
  latencyP95: NaN,
  refusals429: 0,
  codes429: {},
  gaveUp: 0,
  errors: 0,
  errorSamples: [],
  withHeader: 0,
  upstream: null,
});

/** A completed call's queue wait: the gateway's header when present, else its last attempt's latency less the service time. */
const queueWait = (record: CallRecord, serviceMs: number) => record.queueWaitHeaderMs ?? Math.max(0, record.attemptMs - serviceMs);

export function summarise(spec: RunSpec, plan: UserPlan[], records: CallRecord[], upstream: SlottedStats, since: number): RunResult {
  const completed = records.filter((record) => record.outcome === "completed");
  const users: UserResult[] = plan.map((user) => {
    const mine = records.filter((record) => record.handle === user.handle);
    const done = mine.filter((record) => record.outcome === "completed");
    const waits = done.map((record) => queueWait(record, upstream.serviceMs));
    return {
      handle: user.handle,
      loops: user.loops,
      streams: user.streams,
      completed: done.length,
      refusals429: mine.reduce((sum, record) => sum + record.refusals429, 0),
      gaveUp: mine.filter((record) => record.outcome === "gave_up").length,
      errors: mine.filter((record) => !["completed", "gave_up"].includes(record.outcome)).length,
      waitP50: percentile(waits, 50),
      waitP95: percentile(waits, 95),
    };
  });
  const counts = users.map((user) => user.completed);
  const waits = completed.map((record) => queueWait(record, upstream.serviceMs));
  const withHeader = completed.filter((record) => record.queueWaitHeaderMs !== null).length;
  const codes429: Record<string, number> = {};
  for (const record of records) for (const code of record.codes429) codes429[code] = (codes429[code] ?? 0) + 1;
  const failures = records.filter((record) => !["completed", "gave_up"].includes(record.outcome));
  const served = upstream.requests.filter((request) => request.arrival >= since);
  const upstreamWaits = served.filter((request) => request.start !== null).map((request) => request.start! - request.arrival);
  return {
    spec,
    status: "ran",
    notes: [],
    users,
    completed: completed.length,
    minPerUser: Math.min(...counts),
    maxPerUser: Math.max(...counts),
    jain: jain(counts),
    waitP50: percentile(waits, 50),
    waitP95: percentile(waits, 95),
    waitSource: completed.length === 0 ? "none" : withHeader === completed.length ? "x-halo-queue-wait-ms" : withHeader === 0 ? "latency − service" : "mixed",
    latencyP50: percentile(completed.map((record) => record.totalMs), 50),
    latencyP95: percentile(completed.map((record) => record.totalMs), 95),
    refusals429: users.reduce((sum, user) => sum + user.refusals429, 0),
    codes429,
    gaveUp: users.reduce((sum, user) => sum + user.gaveUp, 0),
    errors: failures.length,
    errorSamples: [...new Set(failures.map((record) => `${record.outcome}${record.status === null ? "" : ` ${record.status}`}${record.errorCode ? ` ${record.errorCode}` : ""}${record.failure ? `: ${record.failure}` : ""}`))].slice(0, 5),
    withHeader,
    upstream: {
      maxConcurrent: upstream.maxConcurrent,
      maxRunning: upstream.maxRunning,
      maxWaiting: upstream.maxWaiting,
      served: served.filter((request) => request.outcome === "completed").length,
      waitP50: percentile(upstreamWaits, 50),
      waitP95: percentile(upstreamWaits, 95),
    },
  };
}

const ms = (value: number) => (Number.isNaN(value) ? "–" : value < 10 ? value.toFixed(1) : String(Math.round(value)));
const num = (value: number) => (Number.isNaN(value) || !Number.isFinite(value) ? "–" : String(value));

export function machineLine(date: Date): string {
  let cpu = "unknown CPU";
  try {
    cpu = /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1]?.trim() ?? cpu;
  } catch {
    // not Linux
  }
  return `nproc ${availableParallelism()} · ${cpu} · node ${process.version} · ${date.toISOString()}`;
}

export interface ReportSettings {
  slots: number;
  serviceMs: number;
  durationS: number;
  maxPerLoop: number;
  attemptTimeoutMs: number;
  maxRetries: number;
  rates: RateLimits;
  plan: UserPlan[];
}

export function renderSection(results: RunResult[], settings: ReportSettings, machine: string): string {
  const { plan } = settings;
  const flooders = plan.filter((user) => user.loops > 1);
  const others = plan.filter((user) => user.loops === 1);
  const capacity = (settings.slots * 1000) / settings.serviceMs;
  const lines: string[] = [];
  lines.push(`## Contention: ${plan.length} users on a ${settings.slots}-slot LLM upstream (issue 12)`, "");
  lines.push(`Machine: ${machine}`, "");
  lines.push(
    `Upstream: test/support/slotted-upstream.ts, a llama-server \`-np ${settings.slots}\` stand-in — ${settings.slots} slots, ${settings.serviceMs} ms per request ` +
      `(capacity ≈ ${ms(capacity)} req/s), requests beyond the slots wait in its own FIFO. ` +
      `Load: non-streaming chat completions on \`/v2\`, back to back, for ${settings.durationS} s (at most ${settings.maxPerLoop} per loop; an attempt is bounded by ${settings.attemptTimeoutMs / 1000} s). ` +
      `${flooders.map((user) => `**${user.handle}**: ${user.loops} loops, \`--streams ${user.streams ?? "(config)"}\``).join("; ")}; ` +
      `${others.length} others (${others[0]?.handle}…${others.at(-1)?.handle}): 1 loop each, streams ${others[0]?.streams ?? "1 (the config's default)"}. ` +
      `${settings.rates ? `Every user \`--rps ${settings.rates.rps} --burst ${settings.rates.burst}\`, so the request bucket never binds and only concurrency is measured.` : "Rate limits: the config's `limits` (`--rps config`), so the request bucket may refuse too."} ` +
      `A 429 is retried like the OpenAI SDK does (\`retry-after-ms\`, else \`Retry-After\`, else backoff; at most ${settings.maxRetries} retries, then "gave up"). All on loopback.`,
    "",
  );
  lines.push(
    "Queue wait: `x-halo-queue-wait-ms` when the response carries it, else the last attempt's end-to-end latency minus the service time " +
      "(which then also holds the gateway's own overhead, a few ms). Latency: first send to answer, 429 back-off included. req/s: completed ÷ the load's duration (the upstream's capacity is the ceiling). " +
      "Jain: Jain's fairness index over the users' completed requests (1 = equal shares, 0.1 = one user gets everything). " +
      "Upstream open: the most requests the upstream had at once, waiting in its FIFO or in a slot — what the gateway let through; its own wait is slot start − arrival there.",
    "",
  );
  lines.push("| run | route | status | completed | req/s | per user min / max | Jain | queue wait p50 / p95 ms | wait from | latency p50 / p95 ms | 429s seen | gave up | errors | upstream max open (running) | upstream's own wait p50 / p95 ms |");
  lines.push("|---|---|---|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|");
  for (const result of results) {
    const { spec } = result;
    const route = spec.maxInFlight === null ? "no `max_in_flight` (today)" : `\`max_in_flight = ${spec.maxInFlight}\``;
    if (result.status !== "ran") {
      lines.push(`| ${spec.id} | ${route} | **${result.status === "unsupported" ? "not supported by this build" : "failed"}** | – | – | – | – | – | – | – | – | – | – | – | – |`);
      continue;
    }
    const codes = Object.entries(result.codes429).map(([code, count]) => `${code} ${count}`).join(", ");
    const upstream = result.upstream;
    lines.push(
      `| ${spec.id} | ${route} | ran | ${result.completed} | ${(result.completed / settings.durationS).toFixed(1)} | ${num(result.minPerUser)} / ${num(result.maxPerUser)} | ${Number.isNaN(result.jain) ? "–" : result.jain.toFixed(3)} | ` +
        `${ms(result.waitP50)} / ${ms(result.waitP95)} | ${result.waitSource} | ${ms(result.latencyP50)} / ${ms(result.latencyP95)} | ` +
        `${result.refusals429}${codes ? ` (${codes})` : ""} | ${result.gaveUp} | ${result.errors} | ` +
        `${upstream ? `${upstream.maxConcurrent} (${upstream.maxRunning})` : "–"} | ${upstream ? `${ms(upstream.waitP50)} / ${ms(upstream.waitP95)}` : "–"} |`,
    );
  }
  lines.push("");
  const ran = results.filter((result) => result.status === "ran");
  if (ran.length > 0) {
    lines.push("Per user: completed requests · 429s seen · queue wait p50 / p95 ms.", "");
    lines.push(`| user | loops | streams | ${ran.map((result) => `${result.spec.id}: completed | ${result.spec.id}: 429s | ${result.spec.id}: wait p50 / p95`).join(" | ")} |`);
    lines.push(`|---|--:|--:|${ran.map(() => "--:|--:|--:|").join("")}`);
    for (const user of plan) {
      const cells = ran.map((result) => {
        const row = result.users.find((candidate) => candidate.handle === user.handle);
        return row ? `${row.completed} | ${row.refusals429} | ${ms(row.waitP50)} / ${ms(row.waitP95)}` : "– | – | –";
      });
      lines.push(`| ${user.handle} | ${user.loops} | ${user.streams ?? "1 (config)"} | ${cells.join(" | ")} |`);
    }
    lines.push("");
  }
  const notes = results.flatMap((result) => [
    ...result.notes.map((note) => `- **${result.spec.id}**: ${note}`),
    ...result.errorSamples.map((sample) => `- **${result.spec.id}** error: ${sample}`),
  ]);
  if (notes.length > 0) lines.push(...notes, "");
  return lines.join("\n");
}
