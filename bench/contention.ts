/**
 * `npm run bench:contention` (issue 12): what one user flooding the LLM route does to everyone
 * else's share of a llama-server with N slots, without the gateway's fair queue and with it.
 *
 *   upstream  test/support/slotted-upstream.ts, in this process: 4 slots, 200 ms per request, the
 *             rest waiting in its own FIFO — llama-server `-np 4` as far as a gateway can tell.
 *   run a     `halo-gate serve` with the v2 route as shipped: no `max_in_flight` (today). Every
 *             request within its user's caps goes straight to the upstream and waits there, first
 *             come first served, so a user's share is its share of the requests in flight.
 *   run b     the same with `max_in_flight = 4` on the route: requests beyond the slots (or beyond
 *             their user's `streams`) wait in the gateway's round-robin queue across users.
 *   users     10 (the config's max_users): `flooder` invited with `--streams 8` runs 8 client loops,
 *             user1…user9 (streams 1, the config's default) one loop each; every user gets
 *             `--rps 1000 --burst 1000` so the request bucket never binds and the runs measure
 *             concurrency alone (`--rps config` keeps the config's rps 5 / burst 10 instead).
 *   load      each loop sends non-streaming chat completions back to back for 20 s (and at most
 *             --max-per-loop); a 429 is retried as the OpenAI SDK does it (client.ts).
 *
 * Per run: completed requests per user, min / max and Jain's fairness index over users, queue wait
 * p50 / p95 (`x-halo-queue-wait-ms` when present, else latency − service time), the 429s the clients
 * saw, and the most requests the upstream had open at once. The markdown goes to
 * bench/CONTENTION.md and stdout.
 *
 * On a build without the queue, run b cannot happen: serve refuses a config with `max_in_flight` (its
 * schema is strict, "…max_in_flight: unknown key"), and the report says "not supported by this
 * build"; if serve accepts the key but no response carries `x-halo-queue-wait-ms`, the report says
 * the queue was not active; either way it also says whether the upstream ever had more than
 * `max_in_flight` requests open. Exit status: 0 when run a ran and run b ran or was not supported by
 * this build; 1 otherwise (the report is still written).
 *
 * Every loop is bounded in count and time, every attempt by a timeout, the whole bench by a
 * deadline; only loopback addresses; serve, the CLI and temp dirs are ended and removed at the end,
 * on error and on Ctrl-C (bench/lib/processes.ts).
 *
 *   npm run bench:contention [-- --duration 20 --service-ms 200 --runs a,b --rps 1000 --max-per-loop 500]
 */
import { setMaxListeners } from "node:events";
import { writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { startSlottedUpstream, type SlottedUpstream } from "../test/support/slotted-upstream.ts";
import { agent, chat, MAX_RETRIES, type CallRecord } from "./contention/client.ts";
import { contentionConfig, inviteUsers, startGateway, type RateLimits, type UserPlan } from "./contention/gateway.ts";
import { emptyResult, machineLine, renderSection, summarise, type RunResult, type RunSpec } from "./contention/report.ts";
import { cleanUpOnSignals, cleanupAll } from "./lib/processes.ts";

const SLOTS = 4;
const MAX_IN_FLIGHT = 4;
/** The gateway's default `queue_timeout` is 30 s; an attempt may wait that long, then be served. */
const ATTEMPT_TIMEOUT_MS = 60_000;
/** After a failure other than a 429 (a 502, a reset), a loop pauses instead of spinning. */
const ERROR_PAUSE_MS = 500;
const OUT = fileURLToPath(new URL("CONTENTION.md", import.meta.url));

const PLAN: UserPlan[] = [{ handle: "flooder", loops: 8, streams: 8 }, ...Array.from({ length: 9 }, (_, index) => ({ handle: `user${index + 1}`, loops: 1, streams: null }))];

const RUNS: Record<"a" | "b", RunSpec> = {
  a: { id: "a", maxInFlight: null, label: "no max_in_flight (today)" },
  b: { id: "b", maxInFlight: MAX_IN_FLIGHT, label: `max_in_flight = ${MAX_IN_FLIGHT}` },
};

function options() {
  const { values } = parseArgs({
    options: {
      duration: { type: "string", default: "20" },
      "service-ms": { type: "string", default: "200" },
      runs: { type: "string", default: "a,b" },
      rps: { type: "string", default: "1000" },
      "max-per-loop": { type: "string", default: "500" },
    },
  });
  const durationS = Number(values.duration);
  const serviceMs = Number(values["service-ms"]);
  const maxPerLoop = Number(values["max-per-loop"]);
  const runs = values.runs.split(",").map((run) => run.trim());
  if (!Number.isInteger(durationS) || durationS < 1 || durationS > 300) throw new Error("--duration: whole seconds, 1 to 300");
  if (!Number.isInteger(serviceMs) || serviceMs < 10 || serviceMs > 5_000) throw new Error("--service-ms: 10 to 5000");
  if (!Number.isInteger(maxPerLoop) || maxPerLoop < 1 || maxPerLoop > 10_000) throw new Error("--max-per-loop: 1 to 10000");
  if (runs.length === 0 || runs.some((run) => run !== "a" && run !== "b")) throw new Error("--runs: a, b or a,b");
  let rates: RateLimits = null;
  if (values.rps !== "config") {
    const rps = Number(values.rps);
    if (!Number.isInteger(rps) || rps < 1 || rps > 10_000) throw new Error("--rps: 1 to 10000, or `config` for the config's limits");
    rates = { rps, burst: rps };
  }
  return { durationS, serviceMs, maxPerLoop, runs: [...new Set(runs)] as Array<"a" | "b">, rates };
}

const settings = options();
const started = Date.now();
const log = (message: string) => console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)} s] ${message}`);

/** Aborted on Ctrl-C and on the deadline: loops, waits and requests end early. */
const stop = new AbortController();
// Every request in flight listens on it (AbortSignal.any): 17 at a time, more than the default 10.
setMaxListeners(0, stop.signal);
let upstream: SlottedUpstream | null = null;
let cleanedUp: Promise<void> | null = null;
function cleanup(): Promise<void> {
  cleanedUp ??= (async () => {
    stop.abort();
    await upstream?.close().catch(() => {});
    await cleanupAll();
    await agent.close().catch(() => {});
  })();
  return cleanedUp;
}
const interrupted = cleanUpOnSignals("bench:contention", cleanup);
// Per run: serve's start (≤ 60 s), invites and warm-up, the load, the last attempts' bound, stop.
const DEADLINE_MS = settings.runs.length * (settings.durationS * 1000 + ATTEMPT_TIMEOUT_MS + 150_000);
const deadline = setTimeout(() => {
  console.error(`bench:contention: FAIL: not done within ${DEADLINE_MS / 1000} s; stopping everything it started…`);
  void cleanup().finally(() => process.exit(1));
}, DEADLINE_MS);

const pause = (ms: number) =>
  new Promise<void>((resolve) => {
    if (stop.signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      stop.signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    stop.signal.addEventListener("abort", done, { once: true });
  });

/** One user's loop: back-to-back calls until `until`, at most `maxPerLoop`. */
async function loop(origin: string, token: string, handle: string, index: number, until: number, records: CallRecord[]) {
  for (let count = 0; count < settings.maxPerLoop && !stop.signal.aborted && Date.now() < until; count++) {
    const record = await chat({ origin, token, handle, loop: index, attemptTimeoutMs: ATTEMPT_TIMEOUT_MS, stop: stop.signal });
    records.push(record);
    if (record.outcome !== "completed" && record.outcome !== "gave_up") await pause(ERROR_PAUSE_MS);
  }
}

/** serve exited before listening: this build does not know `max_in_flight` (unsupported), or something else broke (failed). */
function startFailure(spec: RunSpec, error: unknown): RunResult {
  const text = error instanceof Error ? error.message : String(error);
  // The strict schema's refusal: "HALO_CONFIG.routes[0].max_in_flight: unknown key". Any other
  // complaint about max_in_flight means the key is known, so the build is broken, not early.
  const mention = text.split("\n").find((line) => /max_in_flight\b.*unknown key|unrecognized key.*max_in_flight\b/i.test(line));
  if (spec.maxInFlight !== null && mention) {
    return emptyResult(spec, "unsupported", [
      `serve refused to start with \`max_in_flight = ${spec.maxInFlight}\` on the v2 route: this build's config schema does not know the key — the fair queue has not landed. Serve said: \`${mention.trim().slice(0, 240)}\``,
    ]);
  }
  return emptyResult(spec, "failed", [`serve did not start: \`${text.split("\n").filter(Boolean).slice(0, 6).join(" ⏎ ").slice(0, 600)}\``]);
}

/** What a run's numbers mean for the queue: active or not, the cap held or not. */
function checks(spec: RunSpec, result: RunResult): string[] {
  const notes: string[] = [];
  const upstreamOpen = result.upstream?.maxConcurrent ?? 0;
  if (spec.maxInFlight === null) {
    if (result.withHeader > 0) notes.push(`${result.withHeader} of ${result.completed} completed responses carried \`x-halo-queue-wait-ms\` although the route has no \`max_in_flight\`.`);
    return notes;
  }
  if (result.withHeader === 0) {
    notes.push(
      "serve accepted `max_in_flight`, but no response carried `x-halo-queue-wait-ms`: the queue is not active in this build, so this run measured today's behaviour (queue wait from latency − service).",
    );
  } else if (result.withHeader < result.completed) {
    notes.push(`only ${result.withHeader} of ${result.completed} completed responses carried \`x-halo-queue-wait-ms\` (every response of a queued route should).`);
  }
  if (upstreamOpen > spec.maxInFlight) notes.push(`the upstream had ${upstreamOpen} requests open at once, above \`max_in_flight = ${spec.maxInFlight}\`: the cap was not enforced.`);
  else notes.push(`the upstream never had more than ${upstreamOpen} requests open at once (\`max_in_flight = ${spec.maxInFlight}\` held).`);
  return notes;
}

async function run(spec: RunSpec): Promise<RunResult> {
  log(`run ${spec.id} (${spec.label}): slotted upstream ${SLOTS} slots × ${settings.serviceMs} ms`);
  upstream = await startSlottedUpstream({ slots: SLOTS, serviceMs: settings.serviceMs });
  try {
    const config = contentionConfig(upstream.port, spec.maxInFlight);
    let gateway: Awaited<ReturnType<typeof startGateway>>;
    try {
      gateway = await startGateway(config, `serve-${spec.id}`);
    } catch (error) {
      if (stop.signal.aborted) throw error;
      const result = startFailure(spec, error);
      log(`run ${spec.id}: ${result.status === "unsupported" ? "NOT SUPPORTED by this build" : "FAILED"}: ${result.notes[0]}`);
      return result;
    }
    const { serve, stateDir } = gateway;
    try {
      log(`run ${spec.id}: serve on ${serve.origin} (started in ${(serve.startupMs / 1000).toFixed(1)} s); inviting ${PLAN.length} users`);
      const tokens = await inviteUsers(stateDir, PLAN, settings.rates);
      // One request per user, one at a time, outside the measurement: the first request's costs
      // (compiling, the first D1 lookups) are not contention.
      for (const user of PLAN) {
        const warm = await chat({ origin: serve.origin, token: tokens.get(user.handle)!, handle: user.handle, loop: -1, attemptTimeoutMs: ATTEMPT_TIMEOUT_MS, stop: stop.signal });
        if (warm.outcome !== "completed") throw new Error(`run ${spec.id}: warm-up request of ${user.handle} ended ${warm.outcome} ${warm.status ?? ""} ${warm.errorCode ?? ""} ${warm.failure ?? ""}`);
      }
      const since = Date.now();
      const until = since + settings.durationS * 1000;
      const records: CallRecord[] = [];
      log(`run ${spec.id}: load for ${settings.durationS} s: ${PLAN.map((user) => `${user.handle}×${user.loops}`).join(" ")}`);
      await Promise.all(PLAN.flatMap((user) => Array.from({ length: user.loops }, (_, index) => loop(serve.origin, tokens.get(user.handle)!, user.handle, index, until, records))));
      if (stop.signal.aborted) throw new Error("stopped");
      // Every call has returned; the upstream ends its side within moments.
      for (let waited = 0; upstream.stats().current > 0 && waited < 5_000; waited += 50) await pause(50);
      const result = summarise(spec, PLAN, records, upstream.stats(), since);
      result.notes.push(...checks(spec, result));
      log(`run ${spec.id}: ${result.completed} completed, Jain ${result.jain.toFixed(3)}, ${result.refusals429} × 429, upstream max open ${result.upstream?.maxConcurrent}`);
      return result;
    } finally {
      await serve.managed.stop();
    }
  } finally {
    await upstream.close();
    upstream = null;
  }
}

async function main(): Promise<number> {
  const results: RunResult[] = [];
  for (const id of settings.runs) {
    try {
      results.push(await run(RUNS[id]));
    } catch (error) {
      if (stop.signal.aborted) throw error;
      // A run that broke after serve started (a warm-up refused, the CLI failing): reported, and
      // the other run's numbers are still written.
      const message = error instanceof Error ? error.message : String(error);
      log(`run ${id}: FAILED: ${message}`);
      results.push(emptyResult(RUNS[id], "failed", [`the run broke: \`${message.split("\n").filter(Boolean).slice(0, 6).join(" ⏎ ").slice(0, 600)}\``]));
    }
  }
  const section = renderSection(
    results,
    { slots: SLOTS, serviceMs: settings.serviceMs, durationS: settings.durationS, maxPerLoop: settings.maxPerLoop, attemptTimeoutMs: ATTEMPT_TIMEOUT_MS, maxRetries: MAX_RETRIES, rates: settings.rates, plan: PLAN },
    machineLine(new Date()),
  );
  const document = [
    "# `npm run bench:contention` — results",
    "",
    "> Written by bench/contention.ts (`npm run bench:contention`); each run replaces this file. What the bench does and why: the comment at the top of bench/contention.ts.",
    "",
    section,
  ].join("\n");
  writeFileSync(OUT, document);
  console.log(`\n${section}`);
  console.log(`written to ${OUT}`);
  // Run b may be "not supported by this build" (the queue has not landed); anything else is a failure.
  return results.every((result) => result.status === "ran" || (result.status === "unsupported" && result.spec.id === "b")) ? 0 : 1;
}

let code = 1;
try {
  code = await main();
} catch (error) {
  if (!interrupted()) console.error(`bench:contention: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
} finally {
  clearTimeout(deadline);
  if (!interrupted()) {
    await cleanup();
    process.exit(code);
  }
}
