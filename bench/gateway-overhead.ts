/**
 * `npm run bench`: what the gateway costs, against what the box does today and against the least a
 * workerd gateway could cost — side by side in one run, on loopback only.
 *
 *   direct         nginx serving the models JSON: the upstream alone, the ceiling
 *   caddy          the box today: Caddy matching the bearer against 10 literal tokens → nginx
 *   floor          a bare workerd worker: SHA-256 of the bearer, set lookup, fetch → nginx
 *   serve          halo-gate serve, the production path: Node edge → workerd core (hash + D1 lookup,
 *                  per-user quota Durable Object, audit) → nginx
 *   serve-noquota  the same with `quotas = false`: serve − serve-noquota is the quota check's cost
 *
 * Load: wrk at each connection count, requests spread over each target's 10 bearers; the targets
 * run interleaved (A B C D E, repeated for every round) so that a disturbance of the shared machine
 * hits one round of every target rather than all rounds of one; cells are medians over the rounds,
 * with ratios to direct (what putting anything in front costs) and to floor (what halo-gate adds to
 * the cheapest workerd gateway). Also: SSE delivery through serve vs direct, serve's start-up time,
 * and the RSS of every process after the load. Every load is bounded in time; every process and
 * temp dir it starts is removed at the end, on error and on Ctrl-C.
 *
 *   npm run bench [-- --duration 5 --rounds 3 --connections 1,32]
 *
 * Needs nginx, caddy and wrk (bench/setup.sh installs the Debian packages when missing) and the
 * workerd binary from node_modules. Writes bench/RESULTS.md.
 */
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { cleanupAll, cleanupOnSignals, wasInterrupted, sleep, tempDir, treeRss } from "./lib/processes.ts";
import { machineLine, renderReport, type BenchData } from "./report.ts";
import { measureSse, SSE_EVENTS, startSseUpstream } from "./sse.ts";
import { startCaddy } from "./targets/caddy.ts";
import { startFloor, workerdBinary } from "./targets/floor.ts";
import { startNginx } from "./targets/nginx.ts";
import { startServe, startServeProcess } from "./targets/serve.ts";
import { MODELS_BODY, randomBearer, type Target } from "./targets/target.ts";
import { runWrk, wrkScript } from "./wrk.ts";

const DEFAULTS = { duration: 5, rounds: 3 };
const STARTS = 3;

function options() {
  const { values } = parseArgs({
    options: {
      duration: { type: "string", default: String(DEFAULTS.duration) },
      rounds: { type: "string", default: String(DEFAULTS.rounds) },
      connections: { type: "string", default: "1,32" },
    },
  });
  const durationS = Number(values.duration);
  const rounds = Number(values.rounds);
  const connections = values.connections.split(",").map(Number);
  if (!Number.isInteger(durationS) || durationS < 1 || durationS > 120) throw new Error("--duration: whole seconds, 1 to 120");
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 20) throw new Error("--rounds: 1 to 20 (3 or more for a median worth quoting)");
  if (connections.some((count) => !Number.isInteger(count) || count < 1 || count > 1000)) throw new Error("--connections: a list like 1,32");
  return { durationS, rounds, connections, short: durationS < DEFAULTS.duration || rounds < DEFAULTS.rounds };
}

/** nginx, caddy, wrk: installed from Debian by bench/setup.sh when missing (it does nothing otherwise). */
function ensureTools() {
  const setup = spawnSync("sh", [fileURLToPath(new URL("setup.sh", import.meta.url))], { stdio: "inherit" });
  if (setup.status !== 0) throw new Error("bench/setup.sh failed: nginx, caddy and wrk are needed");
}

/** Every token gets the models JSON; a wrong bearer gets 401 (except from direct, which checks nothing). */
async function preflight(target: Target) {
  for (const token of target.tokens) {
    const response = await fetch(target.url, { headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(10_000) });
    const body = await response.text();
    if (response.status !== 200 || body !== MODELS_BODY) throw new Error(`${target.name}: ${target.url} answered ${response.status} ${body.slice(0, 200)}`);
  }
  if (target.name === "direct") return;
  const refused = await fetch(target.url, { headers: { authorization: `Bearer ${randomBearer()}` }, signal: AbortSignal.timeout(10_000) });
  await refused.arrayBuffer();
  if (refused.status !== 401) throw new Error(`${target.name}: an unknown bearer got ${refused.status}, not 401`);
}

async function measureStartup(nginxPort: number, ssePort: number): Promise<number[]> {
  const stateDir = tempDir("halo-gate-bench-startup-");
  const times: number[] = [];
  for (let start = 0; start < STARTS; start++) {
    const { serve, startupMs } = await startServeProcess({ name: "serve (start-up)", nginxPort, ssePort, stateDir });
    await serve.stop();
    times.push(startupMs);
    console.log(`start-up ${start + 1}/${STARTS}: ${Math.round(startupMs)} ms`);
  }
  return times;
}

async function main() {
  const settings = options();
  cleanupOnSignals();
  ensureTools();
  const startedAt = new Date();
  const boxBearers = Array.from({ length: 10 }, randomBearer);

  const sseUpstream = await startSseUpstream();
  try {
    const nginx = await startNginx(boxBearers);
    const startupMs = await measureStartup(nginx.port, sseUpstream.port);
    const caddy = await startCaddy(nginx.port, boxBearers);
    const floor = await startFloor(nginx.port, boxBearers);
    const servePorts = { nginxPort: nginx.port, ssePort: sseUpstream.port };
    const serve = await startServe({ name: "serve", ...servePorts }, "halo-gate serve, quotas on (the production path), 10 invited users → nginx");
    const serveNoQuota = await startServe({ name: "serve-noquota", ...servePorts, overrides: { quotas: false } }, "the same with `quotas = false` in HALO_CONFIG → nginx");
    const targets: Target[] = [nginx, caddy, floor, serve, serveNoQuota];
    for (const target of targets) await preflight(target);

    const scripts = tempDir("halo-gate-bench-wrk-");
    const script = new Map(targets.map((target) => [target.name, wrkScript(scripts, target.name, new URL(target.url).pathname, target.tokens)]));
    const most = Math.max(...settings.connections);
    for (const target of targets) await runWrk(target.url, script.get(target.name)!, most, 1); // warm-up, not recorded

    const sseDirect = `http://127.0.0.1:${sseUpstream.port}/sse`;
    const sseServe = `${serve.origin}/lemon/sse`;
    const sseAuth = { authorization: `Bearer ${serve.tokens[0]}` };
    await measureSse(sseDirect, {}, 2); // warm-up (connections, JIT), not recorded
    await measureSse(sseServe, sseAuth, 2);

    const data: BenchData = { settings, targets, load: [], sse: [], startupMs, rss: [] };
    for (let round = 1; round <= settings.rounds; round++) {
      for (const connections of settings.connections) {
        for (const target of targets) {
          const result = await runWrk(target.url, script.get(target.name)!, connections, settings.durationS);
          data.load.push({ target: target.name, connections, round, result });
          const errors = result.non2xx + result.socketErrors;
          console.log(
            `round ${round}/${settings.rounds} c=${connections} ${target.name.padEnd(13)} ${Math.round(result.rps).toString().padStart(6)} req/s  p50 ${result.p50Ms.toFixed(2)} ms  p99 ${result.p99Ms.toFixed(2)} ms  errors ${errors}`,
          );
        }
      }
      await sleep(500); // let the last load's after-work (audit batches) settle
      const sse = { direct: await measureSse(sseDirect, {}), serve: await measureSse(sseServe, sseAuth) };
      data.sse.push(sse);
      console.log(`round ${round}/${settings.rounds} SSE (${SSE_EVENTS} events): first event direct ${sse.direct.firstEventMs.toFixed(2)} ms, serve ${sse.serve.firstEventMs.toFixed(2)} ms; per event direct ${sse.direct.perEventMs.toFixed(2)} ms, serve ${sse.serve.perEventMs.toFixed(2)} ms`);
    }
    data.rss = targets.map((target) => ({ target: target.name, processes: target.pids().flatMap(treeRss) }));

    const markdown = renderReport(data, machineLine(startedAt, workerdBinary()));
    console.log(`\n${markdown}`);
    const results = fileURLToPath(new URL("RESULTS.md", import.meta.url));
    writeFileSync(results, markdown);
    console.log(`written to ${results}`);
  } finally {
    await cleanupAll();
    await sseUpstream.close();
  }
}

main().catch(async (error: unknown) => {
  if (wasInterrupted()) return; // Ctrl-C: the signal handler cleans up and exits
  console.error(`bench: ${error instanceof Error ? error.message : String(error)}`);
  await cleanupAll();
  process.exit(1);
});
