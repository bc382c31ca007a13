/**
 * `npm run soak` (issue 8, item 8): about two minutes of realistic load with failures injected, on
 * loopback only, then assertions; prints tables and exits 1 if any check fails.
 *
 *   setup    a fake LLM upstream (bench/soak/upstream.ts, its own process: OpenAI chat completions,
 *            SSE with a final usage chunk on `stream_options.include_usage`, JSON with usage
 *            otherwise); `halo-gate serve` with a fresh state dir and a config whose v2 route points
 *            at it; 10 users invited with 1 stream, rps 4 / burst 4 and a large daily quota.
 *   phase 1  (85 s) each user streams chat completions back to back (fetch, SSE read by hand; 20 %
 *            JSON, a quarter of the streams without include_usage, 10–50 deltas 30 ms apart), and
 *            every ~3 s while its stream runs a burst over its caps: 3 more POSTs (over `streams`:
 *            must be 429) and 8 GET /v2/v1/models at once (over the bucket of 4: at most 4 admitted).
 *            35 s in, the upstream is killed (SIGKILL) and restarted on the same port 10 s later:
 *            meanwhile requests must get 502/504, cut streams end with the gateway's error event.
 *   P        quiesce, then `usage --json`, `list --json`, `audit`.
 *   phase 2  (8 s) the same load, then `kill -9` of serve mid-stream; a probe checks that the port
 *            refuses connections (no 5xx, no hang) until serve is restarted on the same state dir
 *            and port. R: the same snapshot.
 *   phase 3  (20 s) the same load on the restarted serve; F: the same snapshot.
 *
 * Checks (bench/soak/checks.ts): no 5xx but 502/504, and those only during the outage; no hang (every
 * request is bounded by a timeout, and a timeout is a failure); every over-cap request 429 and none
 * within the caps; tokens in `usage` = what the clients saw and the upstream reported — exactly for
 * phases 1 and 3, within stated bounds across the kill -9; users, tokens and audit rows intact after
 * the restart, one audit row per request; RSS of serve's processes (Node + workerd + helpers) below
 * `--rss-limit-mb` (600); the killed serve's orphaned workerd ended by the restart.
 *
 * Every loop is bounded in count and time, the whole run by a 178 s deadline; every process it
 * starts is ended at the end, on error and on Ctrl-C (bench/lib/processes.ts, plus the orphaned
 * workerd of the killed serve, tracked by pid and start time).
 *
 *   npm run soak [-- --seed N --rss-limit-mb 600 --short]   (--short: ~45 s, for working on the soak itself)
 */
import { setMaxListeners } from "node:events";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { cleanUpOnSignals, cleanupAll, descendants, tempDir } from "./lib/processes.ts";
import { runChecks, table, type BurstGroup, type RssReport, type Snapshot, type SoakData, type Windows } from "./soak/checks.ts";
import { agent, send, type RequestRecord } from "./soak/client.ts";
import { auditEvents, cliJson, processStart, recordedWorkerd, serveRss, soakConfig, startServe, startUpstream, stillRunning, type ListedUser, type Serve, type Upstream, type UserUsage } from "./soak/gateway.ts";
import type { UpstreamLogLine } from "./soak/upstream.ts";

const USERS = 10;
const LIMITS = { rps: 4, burst: 4, streams: 1, daily_tokens: 100_000_000 };
const TIMING = {
  phase1Ms: 85_000,
  outageAtMs: 35_000,
  outageMs: 10_000,
  phase2Ms: 8_000,
  /** How long serve stays dead after the kill -9 before it is started again. */
  downMs: 1_500,
  phase3Ms: 20_000,
  /** After the last request: the auth audit is flushed within ~1 s, releases within milliseconds. */
  settleMs: 2_000,
  /** The whole run, setup to snapshots; past it everything is stopped and the soak fails. */
  deadlineMs: 178_000,
};
const GAP_MS = 30;
const BURST_EVERY_MS = 3_000;
const BURST_POSTS = 3;
const BURST_GETS = 8;
/** Each user's loop sends at most this many requests per phase (it is bounded by time long before). */
const MAX_REQUESTS_PER_LOOP = 1_000;
const REQUEST_TIMEOUT_MS = 15_000;
const BURST_TIMEOUT_MS = 10_000;
const PROBE_TIMEOUT_MS = 3_000;

const { values: flags } = parseArgs({ options: { seed: { type: "string" }, "rss-limit-mb": { type: "string", default: "600" }, short: { type: "boolean", default: false } } });
// --short: a 45 s run of the same script, for working on it (not a soak).
if (flags.short) Object.assign(TIMING, { phase1Ms: 30_000, outageAtMs: 8_000, phase2Ms: 5_000, phase3Ms: 8_000 });
const seed = flags.seed === undefined ? Date.now() % 2 ** 31 : Number(flags.seed);
const rssLimitMb = Number(flags["rss-limit-mb"]);

/** mulberry32: the run's choices (shapes, lengths) are reproducible from the printed seed. */
let state = seed >>> 0;
function random(): number {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
}

const t0 = Date.now();
const log = (message: string) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(5)} s] ${message}`);

/** Aborted on Ctrl-C, on the deadline and at the end: loops stop, pauses and requests end early. */
const stop = new AbortController();
// Every request in flight listens on it (AbortSignal.any): ~25 at a time, more than the default 10.
setMaxListeners(0, stop.signal);
const pause = (ms: number) =>
  new Promise<void>((resolve) => {
    if (stop.signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      stop.signal.removeEventListener("abort", done);
      resolve();
    }
    stop.signal.addEventListener("abort", done, { once: true });
  });

/**
 * Processes checked (and, if need be, ended) after cleanup: the killed serve's workerd and helpers,
 * which outlive their parent, and at the end the restarted serve's tree and the upstream.
 */
const tracked: Array<{ pid: number; start: string; name: string }> = [];
let cleanedUp: Promise<void> | null = null;
function cleanup(): Promise<void> {
  const killTracked = () => {
    for (const entry of tracked) if (stillRunning(entry)) process.kill(entry.pid, "SIGKILL");
  };
  cleanedUp ??= (async () => {
    stop.abort();
    // An orphaned workerd still writes to the state dir: end it before the temp dirs are removed.
    killTracked();
    await new Promise((resolve) => setTimeout(resolve, 100));
    try {
      await cleanupAll();
    } catch (error) {
      // A dir that a dying process was still writing to: once more, after it is gone.
      console.error(`soak: cleanup: ${(error as Error).message}; retrying`);
      await new Promise((resolve) => setTimeout(resolve, 500));
      await cleanupAll();
    }
    killTracked();
    await agent.close().catch(() => {});
  })();
  return cleanedUp;
}
const interrupted = cleanUpOnSignals("soak", cleanup);
const deadline = setTimeout(() => {
  console.error(`soak: FAIL: not done within the ${TIMING.deadlineMs / 1000} s deadline; stopping everything it started…`);
  void cleanup().finally(() => process.exit(1));
}, TIMING.deadlineMs);

interface Context {
  origin: string;
  tokens: string[];
  records: RequestRecord[];
  bursts: BurstGroup[];
  pendingBursts: Array<Promise<void>>;
  burstBusy: boolean;
  burstsUntil: number;
  lastBurst: number[];
}

/** One user's back-to-back requests until `until` (and at most MAX_REQUESTS_PER_LOOP). */
async function userLoop(ctx: Context, user: number, phase: number, until: number) {
  for (let count = 0; count < MAX_REQUESTS_PER_LOOP && !stop.signal.aborted && Date.now() < until; count++) {
    const shape = random() < 0.2 ? "json" : "sse";
    const record = await send({
      origin: ctx.origin,
      token: ctx.tokens[user - 1]!,
      user,
      kind: shape === "json" ? "json" : "stream",
      phase,
      shape,
      n: 10 + Math.floor(random() * 41),
      gapMs: GAP_MS,
      askedUsage: shape === "sse" && random() < 0.75,
      timeoutMs: REQUEST_TIMEOUT_MS,
      stop: stop.signal,
      onFirstDelta: (covering) => maybeBurst(ctx, user, phase, covering),
    });
    ctx.records.push(record);
    // After a failure (e.g. 502 during the outage), wait a little: the user would retry, not spin.
    if (record.outcome !== "completed") await pause(600);
  }
}

/**
 * While `covering` (this user's stream) runs: 3 more POSTs (over `streams` 1) and 8 GETs (over the
 * bucket of 4), all at once. One burst at a time across users, so the soak's own requests in flight
 * (10 streams + 11) stay under the edge's 32 per peer address. Only streams long enough for the
 * bucket to refill before they end (≥ 30 deltas × 30 ms) carry a burst, so the user's next request
 * is within its caps again.
 */
function maybeBurst(ctx: Context, user: number, phase: number, covering: RequestRecord) {
  const now = Date.now();
  if (ctx.burstBusy || stop.signal.aborted || covering.n < 30 || now > ctx.burstsUntil || now - ctx.lastBurst[user - 1]! < BURST_EVERY_MS) return;
  ctx.burstBusy = true;
  ctx.lastBurst[user - 1] = now;
  const common = { origin: ctx.origin, token: ctx.tokens[user - 1]!, user, phase, gapMs: GAP_MS, timeoutMs: BURST_TIMEOUT_MS, stop: stop.signal };
  const posts = Array.from({ length: BURST_POSTS }, () => send({ ...common, kind: "burst-post", shape: "sse", n: 5, askedUsage: true }));
  const gets = Array.from({ length: BURST_GETS }, () => send({ ...common, kind: "burst-get", shape: "models", n: 0, askedUsage: false }));
  ctx.pendingBursts.push(
    Promise.all([Promise.all(posts), Promise.all(gets)])
      .then(([postRecords, getRecords]) => {
        for (const record of [...postRecords, ...getRecords]) record.coveringId = covering.id;
        ctx.records.push(...postRecords, ...getRecords);
        ctx.bursts.push({ user, covering, posts: postRecords, gets: getRecords });
      })
      .finally(() => {
        ctx.burstBusy = false;
      }),
  );
}

async function runLoad(ctx: Context, phase: number, durationMs: number): Promise<void> {
  const until = Date.now() + durationMs;
  ctx.burstsUntil = until - 1_500;
  await Promise.all(Array.from({ length: USERS }, (_, index) => userLoop(ctx, index + 1, phase, until)));
  await Promise.all(ctx.pendingBursts);
  ctx.pendingBursts = [];
}

async function snapshot(stateDir: string): Promise<Snapshot> {
  const [usage, list, audit] = await Promise.all([
    cliJson<{ users: UserUsage[] }>(stateDir, ["usage", "--json"]),
    cliJson<ListedUser[]>(stateDir, ["list", "--json"]),
    auditEvents(stateDir),
  ]);
  return { usage: usage.users, list, audit };
}

async function main(): Promise<number> {
  log(`soak: seed ${seed}; ${USERS} users, limits ${JSON.stringify(LIMITS)}; RSS limit ${rssLimitMb} MB`);
  const work = tempDir("halo-gate-soak-");
  const stateDir = join(work, "state");
  const upstreamLog = join(work, "upstream.ndjson");

  let upstream: Upstream = await startUpstream(0, upstreamLog);
  log(`upstream listening on 127.0.0.1:${upstream.port} (pid ${upstream.managed.child.pid})`);
  const config = soakConfig(upstream.port, { upstream_timeout: "5s" });
  let serve: Serve = await startServe(stateDir, config, 0, "serve#1");
  log(`serve#1 (pid ${serve.managed.child.pid}) listening on ${serve.origin}, ready in ${Math.round(serve.startupMs)} ms`);

  // RSS of the running serve's process tree, every 2 s; the peak and the last sample are reported.
  const rss = new Map<Serve, RssReport>();
  const sampleRss = () => {
    if (serve.managed.child.exitCode !== null || serve.managed.child.signalCode !== null) return; // killed: nothing to measure
    const { processes, totalMb } = serveRss(serve);
    if (processes.length === 0) return;
    const report = rss.get(serve) ?? { name: `${serve.managed.name} (pid ${serve.managed.child.pid})`, peakMb: 0, final: [] };
    report.peakMb = Math.max(report.peakMb, totalMb);
    report.final = processes;
    rss.set(serve, report);
  };
  const sampler = setInterval(sampleRss, 2_000);

  try {
    const handles = Array.from({ length: USERS }, (_, index) => `soak-${index + 1}`);
    // Two at a time: ten CLIs at once only compete for the 2 cores with serve.
    const invited: Array<{ token: string }> = [];
    for (let index = 0; index < handles.length; index += 2) {
      invited.push(
        ...(await Promise.all(
          handles.slice(index, index + 2).map((handle) =>
            cliJson<{ token: string }>(stateDir, ["invite", handle, "--json", "--scopes", "v2", "--rps", String(LIMITS.rps), "--burst", String(LIMITS.burst), "--streams", String(LIMITS.streams), "--daily-tokens", String(LIMITS.daily_tokens)]),
          ),
        )),
      );
    }
    const baseline = (await cliJson<{ users: UserUsage[] }>(stateDir, ["usage", "--json"])).users;
    log(`invited ${handles.join(", ")}`);

    const ctx: Context = { origin: serve.origin, tokens: invited.map((entry) => entry.token), records: [], bursts: [], pendingBursts: [], burstBusy: false, burstsUntil: 0, lastBurst: handles.map((_, index) => Date.now() - BURST_EVERY_MS + index * 300) };
    const windows: Windows = { upstreamKilledAt: 0, upstreamBackAt: 0, serveKilledAt: 0, serveReadyAt: 0 };

    // Phase 1: load and bursts; the upstream is killed 35 s in and restarted on its port 10 s later.
    log(`phase 1: ${TIMING.phase1Ms / 1000} s of load; upstream outage at +${TIMING.outageAtMs / 1000} s for ${TIMING.outageMs / 1000} s`);
    const outage = (async () => {
      await pause(TIMING.outageAtMs);
      if (stop.signal.aborted) return;
      upstream.managed.child.kill("SIGKILL");
      windows.upstreamKilledAt = Date.now();
      await upstream.managed.exited;
      log(`upstream killed (SIGKILL); restarting it on port ${upstream.port} in ${TIMING.outageMs / 1000} s`);
      await pause(TIMING.outageMs - (Date.now() - windows.upstreamKilledAt));
      if (stop.signal.aborted) return;
      upstream = await startUpstream(upstream.port, upstreamLog);
      windows.upstreamBackAt = Date.now();
      log(`upstream back on port ${upstream.port} (pid ${upstream.managed.child.pid}) after ${((windows.upstreamBackAt - windows.upstreamKilledAt) / 1000).toFixed(1)} s`);
    })();
    await Promise.all([runLoad(ctx, 1, TIMING.phase1Ms), outage]);
    log(`phase 1 done: ${ctx.records.length} requests`);
    await pause(TIMING.settleMs);
    const P = await snapshot(stateDir);
    sampleRss();
    log(`P: usage, list, audit (${P.audit.length} audit rows)`);

    // Phase 2: load, then kill -9 serve in the middle of it.
    log(`phase 2: ${TIMING.phase2Ms / 1000} s of load, then kill -9 serve`);
    const load2 = runLoad(ctx, 2, TIMING.phase2Ms);
    await pause(TIMING.phase2Ms);
    sampleRss(); // serve#1's last sample, under load
    const killedPid = serve.managed.child.pid!;
    const killedWorkerd = recordedWorkerd(stateDir);
    for (const child of descendants(killedPid)) tracked.push({ pid: child.pid, start: child.start, name: child.comm });
    const recordsAtKill = ctx.records.length;
    serve.managed.child.kill("SIGKILL");
    windows.serveKilledAt = Date.now();
    await serve.managed.exited;
    log(`kill -9 serve#1 (pid ${killedPid}); left behind: ${tracked.filter(stillRunning).map((entry) => `${entry.name} ${entry.pid}`).join(", ") || "nothing"}`);
    // While serve is down: one probe every 250 ms; each must be refused or answered, never hang.
    let probing = true;
    const prober = (async () => {
      for (let count = 0; probing && count < 400 && !stop.signal.aborted; count++) {
        ctx.records.push(await send({ origin: ctx.origin, token: ctx.tokens[0]!, user: 1, kind: "probe", phase: 2, shape: "models", n: 0, gapMs: 0, askedUsage: false, timeoutMs: PROBE_TIMEOUT_MS, stop: stop.signal }));
        await pause(250);
      }
    })();
    await load2;
    log(`phase 2 load ended: ${ctx.records.length - recordsAtKill} requests ended after the kill`);
    await pause(TIMING.downMs - (Date.now() - windows.serveKilledAt));
    serve = await startServe(stateDir, config, serve.port, "serve#2");
    windows.serveReadyAt = Date.now();
    probing = false;
    await prober;
    log(`serve#2 (pid ${serve.managed.child.pid}) listening on ${serve.origin} (same port), ready in ${Math.round(serve.startupMs)} ms; ${((windows.serveReadyAt - windows.serveKilledAt) / 1000).toFixed(1)} s down`);
    const orphanReport = killedWorkerd.map((orphan) => ({ pid: orphan.pid, goneAfterRestart: !stillRunning(orphan) }));
    await pause(TIMING.settleMs);
    const R = await snapshot(stateDir);
    log(`R: usage, list, audit (${R.audit.length} audit rows)`);

    // Phase 3: load on the restarted serve.
    log(`phase 3: ${TIMING.phase3Ms / 1000} s of load on serve#2`);
    await runLoad(ctx, 3, TIMING.phase3Ms);
    sampleRss();
    await pause(TIMING.settleMs);
    const F = await snapshot(stateDir);
    sampleRss();
    log(`F: usage, list, audit (${F.audit.length} audit rows); ${ctx.records.length} requests in all`);
    clearInterval(sampler);
    // Checked once cleanup is done: the restarted serve, its children and the upstream must be gone too.
    for (const pid of [serve.managed.child.pid, upstream.managed.child.pid]) {
      const start = pid === undefined ? undefined : processStart(pid);
      if (pid !== undefined && start !== undefined) tracked.push({ pid, start, name: pid === serve.managed.child.pid ? "serve#2" : "upstream" });
    }
    for (const child of descendants(serve.managed.child.pid!)) tracked.push({ pid: child.pid, start: child.start, name: child.comm });

    const logged = new Map<string, UpstreamLogLine>();
    if (existsSync(upstreamLog)) {
      for (const line of readFileSync(upstreamLog, "utf8").split("\n")) {
        if (!line) continue;
        const entry = JSON.parse(line) as UpstreamLogLine;
        logged.set(entry.id, entry);
      }
    }
    const data: SoakData = { handles, limits: LIMITS, records: ctx.records, bursts: ctx.bursts, upstreamLog: logged, windows, baseline, P, R, F, rss: [...rss.values()], rssLimitMb, orphans: orphanReport };
    const { checks, tokenRows, requestRows, burstRows } = runChecks(data);
    const at = (time: number) => `+${((time - t0) / 1000).toFixed(1)} s`;

    console.log(`\ntimeline: upstream killed ${at(windows.upstreamKilledAt)}, back ${at(windows.upstreamBackAt)}; serve kill -9 ${at(windows.serveKilledAt)}, back ${at(windows.serveReadyAt)}`);
    console.log("\nrequests (outcome: HTTP status, or how it ended; p50/p99: ms to the response head)\n" + table(["phase", "kind", "count", "outcomes", "p50/p99"], requestRows));
    console.log("\nbursts over the caps\n" + table(["burst request", "count", "statuses"], burstRows));
    console.log(
      "\ntokens per user (usage --json vs the clients' view; phase 2 ends with the kill -9)\n" +
        table(["user", "p1 expected", "P − start", "", "p2 completed", "p2 cut (max)", "R − P − completed", "", "p3 expected", "F − R", "", "F"], tokenRows) +
        "\n(p1/p3 expected: from what the clients saw, and the upstream's usage for streams that did not ask for it; must be equal." +
        "\n p2 cut: requests the kill -9 cut, and the most they could be charged; R − P − completed: what was charged for them, in [0, max].)",
    );
    console.log("\nRSS of serve's processes (from /proc/PID/status VmRSS)\n" + table(["serve", "peak MB", "processes at the last sample"], data.rss.map((report) => [report.name, report.peakMb.toFixed(0), report.final.map((entry) => `${entry.name} ${entry.rssMb.toFixed(0)} MB`).join(", ")])));
    console.log("\nchecks\n" + table(["check", "result", "detail"], checks.map((entry) => [entry.name, entry.ok ? "PASS" : "FAIL", entry.detail])));
    const failed = checks.filter((entry) => !entry.ok);
    console.log(failed.length ? `\nsoak: FAIL (${failed.length} of ${checks.length} checks)` : `\nsoak: PASS (${checks.length} checks, ${ctx.records.length} requests, ${((Date.now() - t0) / 1000).toFixed(0)} s)`);
    return failed.length ? 1 : 0;
  } finally {
    clearInterval(sampler);
  }
}

let exitCode = 1;
try {
  exitCode = await main();
} catch (error) {
  if (!interrupted()) console.error(`soak: FAIL: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
}
clearTimeout(deadline);
if (!interrupted()) {
  await cleanup();
  // What the soak started must be gone: serve, its workerd (also the orphaned one), the upstream.
  await new Promise((resolve) => setTimeout(resolve, 200));
  const left = tracked.filter(stillRunning);
  console.log(left.length ? `soak: FAIL: still running after cleanup: ${left.map((entry) => `${entry.name} ${entry.pid}`).join(", ")}` : `soak: every process it started has ended (${tracked.length} checked by pid and start time, besides serve's own cleanup)`);
  if (left.length) exitCode = 1;
  process.exit(exitCode);
}
