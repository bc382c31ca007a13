/**
 * `npm run bench:mesh` (issue 10): what the mesh identity check adds per request, cached and
 * uncached, through the real `halo-gate serve`.
 *
 *   gateways  two serves with the same config (test/e2e/harness.ts `testWranglerConfig`) except
 *             `mesh.identity`: "enforce" and "off"; both `trust_loopback = false`, so loopback
 *             peers are looked up like mesh peers. Each has its own fake tailscaled speaking the
 *             LocalAPI on a unix socket (test/e2e/fakes.ts, each in a child process of its own, as
 *             tailscaled is), with the same table, so the whois calls of each serve are counted
 *             apart ("off" must make none). The fake sends every answer from `setTimeout(…, 0)`,
 *             which Node runs after ≥ 1 ms; the real tailscaled answers from memory. By default
 *             (`--fake-answer immediate`) the fake's process runs such 0 ms timers as setImmediate;
 *             `--fake-answer timer` leaves the fake as shipped. The report also times one whois
 *             round trip alone against a fake of each kind, for scale.
 *   owner     `alice`, invited on each with `--mesh-user 1` (and `--rps 10000 --burst 100000`, so
 *             the request bucket never binds). Her devices: 127.0.0.2 (alice-laptop), the pool
 *             127.0.1.1 … 127.0.4.250 (all alice-laptop too: a known device whose cache entry
 *             expired) and 127.0.5.1 … 127.0.8.250 (a different device of hers each, so every
 *             request also changes the token's `last_device`). 127.0.0.3 is bob's (a sanity check:
 *             "enforce" refuses alice's token from it with 403, "off" admits it).
 *   load      c=1, `GET /v2/v1/models` with alice's bearer (upstream: test/support/upstream-server.ts),
 *             interleaved request by request between the two serves, the order swapped every pair
 *             (E O, O E, …) so neither is always first. Each request is timed by the client from
 *             `request()` to the end of the response, connect and TLS handshake included.
 *
 * Cases, per transport (plain HTTP, then `serve --tls` on a new pair of serves):
 *   cached, kept-alive      one connection per serve from 127.0.0.2, --cached requests each after
 *                           --warmup; the positive answer is cached 10 s, so about one whois per 10 s
 *   cached, fresh conns     a new connection per request from 127.0.0.2 (--fresh each)
 *   uncached, fresh conns   every request from a new address of the first pool (--fresh each; the
 *                           same addresses against "off"); one whois per request under "enforce"
 *   uncached, new device    the same from the second pool: every request is also a device change
 *
 * Reported per case: p50 / p95 of each serve, the added time enforce − off at p50 and at p95 (the
 * difference of the two quantiles), the median of the paired differences (each enforce request
 * minus the "off" request next to it) with its 95 % confidence interval (sign test), and the whois
 * calls each fake saw. The markdown table goes to stdout and bench/MESH.md.
 *
 * Bounded: every request by a 10 s timeout, every case by its count, the whole run by --budget
 * (cases past it are cut short or skipped, and say so). Loopback only. Serves, fakes and temp dirs
 * are ended and removed at the end, on error and on Ctrl-C.
 *
 *   npm run bench:mesh [-- --cached 2000 --fresh 600 --warmup 200 --transports plain,tls --budget 170 --fake-answer immediate]
 */
import { fork, type ChildProcess } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { Agent as HttpAgent, request as httpRequest, type RequestOptions } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import { availableParallelism, loadavg } from "node:os";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { setImmediate } from "node:timers";
import { parseArgs } from "node:util";
import { fakeTailscaled, type FakeNode } from "../test/e2e/fakes.ts";
import { inviteJson, startServe, testWranglerConfig, type Serve } from "../test/e2e/harness.ts";
import { startRecordingUpstream, type RecordingUpstream } from "../test/support/upstream-server.ts";

const OUT = fileURLToPath(new URL("MESH.md", import.meta.url));
const PATH = "/v2/v1/models";
const REQUEST_TIMEOUT_MS = 10_000;
const ALICE = "127.0.0.2";
const BOB = "127.0.0.3";
/** Addresses 127.0.<from>.1 … 127.0.<to>.250. */
const pool = (from: number, to: number) => Array.from({ length: (to - from + 1) * 250 }, (_, index) => `127.0.${from + Math.floor(index / 250)}.${(index % 250) + 1}`);
/** alice-laptop's addresses (a known device, its cache entry expired). */
const SAME_DEVICE = pool(1, 4);
/** One device of alice's per address. */
const NEW_DEVICE = pool(5, 8);
/** The last addresses of each pool warm the uncached path up; the rest are measured. */
const POOL_WARMUP = 50;

type Transport = "plain" | "tls";

interface Gateway {
  mode: "enforce" | "off";
  serve: Serve;
  config: string;
  tailscaled: Tailscaled;
  host: string;
  port: number;
  token: string;
  keepAlive: HttpAgent;
}

interface Sample {
  status: number;
  ms: number;
  reused: boolean;
  body: string;
}

interface CaseResult {
  transport: Transport;
  name: string;
  planned: number;
  enforce: number[];
  off: number[];
  errors: string[];
  whoisEnforce: number;
  whoisOff: number;
  newConnections: { enforce: number; off: number };
  note?: string;
}

function options() {
  const { values } = parseArgs({
    options: {
      cached: { type: "string", default: "2000" },
      fresh: { type: "string", default: "600" },
      warmup: { type: "string", default: "200" },
      transports: { type: "string", default: "plain,tls" },
      budget: { type: "string", default: "170" },
      "fake-answer": { type: "string", default: "immediate" },
    },
  });
  const cached = Number(values.cached);
  const fresh = Number(values.fresh);
  const warmup = Number(values.warmup);
  const budgetS = Number(values.budget);
  const transports = values.transports.split(",").map((name) => name.trim());
  if (!Number.isInteger(cached) || cached < 10 || cached > 20_000) throw new Error("--cached: 10 to 20000");
  if (!Number.isInteger(fresh) || fresh < 10 || fresh > SAME_DEVICE.length - POOL_WARMUP) throw new Error(`--fresh: 10 to ${SAME_DEVICE.length - POOL_WARMUP}`);
  if (!Number.isInteger(warmup) || warmup < 0 || warmup > 5_000) throw new Error("--warmup: 0 to 5000");
  if (!Number.isFinite(budgetS) || budgetS < 20 || budgetS > 1_800) throw new Error("--budget: seconds, 20 to 1800");
  if (transports.length === 0 || transports.some((name) => name !== "plain" && name !== "tls")) throw new Error("--transports: plain, tls or plain,tls");
  const fakeAnswer = values["fake-answer"];
  if (fakeAnswer !== "immediate" && fakeAnswer !== "timer") throw new Error("--fake-answer: immediate (the fake answers whois at once) or timer (as test/e2e/fakes.ts ships: through setTimeout(…, 0), at least 1 ms)");
  return { cached, fresh, warmup, budgetS, transports: transports as Transport[], fakeAnswer: fakeAnswer as FakeAnswer };
}

// ---- the fakes, the serves and their cleanup ----------------------------------------------------

const whoisTable: Record<string, FakeNode> = {
  [ALICE]: { node: "alice-laptop", user: { id: 1, login: "alice" } },
  [BOB]: { node: "bob-phone", user: { id: 2, login: "bob" } },
  ...Object.fromEntries(SAME_DEVICE.map((address) => [address, { node: "alice-laptop", user: { id: 1, login: "alice" } }])),
  ...Object.fromEntries(NEW_DEVICE.map((address, index) => [address, { node: `alice-device-${index + 1}`, user: { id: 1, login: "alice" } }])),
};

const dirs = new Set<string>();
const gateways = new Set<Gateway>();
let upstream: RecordingUpstream | undefined;
const fakes: Tailscaled[] = [];

/**
 * How the fake answers whois. test/e2e/fakes.ts sends every answer from `setTimeout(…, delayMs)`,
 * with delayMs 0 unless a test slows it down, and Node runs a 0 ms timer after at least 1 ms: the
 * fake as shipped puts a ≥ 1 ms floor under every whois that the real tailscaled (an in-memory
 * lookup) does not have. "immediate" (the default) runs those 0 ms timers through setImmediate in
 * the fake's process, which holds nothing else; "timer" leaves the fake as it is.
 */
type FakeAnswer = "immediate" | "timer";

/** A fake tailscaled (test/e2e/fakes.ts) in a child process of its own, as tailscaled is. */
interface Tailscaled {
  socket: string;
  /** How many whois calls it has answered so far. */
  whoisCount(): Promise<number>;
  close(): Promise<void>;
}

type FakeMessage = { socket: string } | { whois: number };

/** Child mode (`--fake-tailscaled ANSWER`): one fake tailscaled; tells its socket, answers "count", ends on "close". */
async function fakeChild(answer: FakeAnswer) {
  if (answer === "immediate") {
    const timer = globalThis.setTimeout;
    const patched = (callback: (...args: unknown[]) => void, ms?: number, ...args: unknown[]) => (ms ? timer(callback, ms, ...args) : setImmediate(callback, ...args));
    globalThis.setTimeout = patched as unknown as typeof globalThis.setTimeout;
  }
  const fake = await fakeTailscaled({ BackendState: "Running" }, whoisTable);
  process.on("message", (message) => {
    if (message === "count") process.send!({ whois: fake.whoisCalls.length } satisfies FakeMessage);
    if (message === "close") void fake.close().finally(() => process.exit(0));
  });
  // The parent gone (even killed): end too.
  process.on("disconnect", () => void fake.close().finally(() => process.exit(0)));
  process.send!({ socket: fake.socket } satisfies FakeMessage);
}

async function startTailscaled(answer: FakeAnswer): Promise<Tailscaled> {
  // tsx's loader comes along in process.execArgv.
  const child: ChildProcess = fork(fileURLToPath(import.meta.url), ["--fake-tailscaled", answer], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const next = () =>
    new Promise<FakeMessage>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("fake tailscaled: no answer in 10 s")), 10_000);
      child.once("message", (message) => {
        clearTimeout(timer);
        resolve(message as FakeMessage);
      });
      void exited.then(() => reject(new Error("fake tailscaled exited")));
    });
  const first = await next();
  if (!("socket" in first)) throw new Error("fake tailscaled: unexpected first message");
  dirs.add(dirname(first.socket));
  const handle: Tailscaled = {
    socket: first.socket,
    async whoisCount() {
      const answer = next();
      child.send("count");
      const message = await answer;
      if (!("whois" in message)) throw new Error("fake tailscaled: unexpected answer");
      return message.whois;
    },
    async close() {
      if (child.exitCode === null && child.signalCode === null) {
        if (child.connected) child.send("close");
        const timer = setTimeout(() => child.kill("SIGKILL"), 3_000);
        await exited;
        clearTimeout(timer);
      }
    },
  };
  fakes.push(handle);
  return handle;
}

async function startGateway(mode: Gateway["mode"], transport: Transport, tailscaled: Tailscaled, upstreamPort: number): Promise<Gateway> {
  const config = testWranglerConfig(upstreamPort, { mesh: { login_server: "https://hs.example", identity: mode, tailscaled_socket: tailscaled.socket, trust_loopback: false } });
  dirs.add(dirname(config));
  const serve = await startServe({ config, args: ["--bind", "127.0.0.1:0", ...(transport === "tls" ? ["--tls"] : [])], env: { HALO_GATE_SHUTDOWN_GRACE_MS: "2000" } });
  dirs.add(serve.stateDir);
  const url = new URL(serve.url);
  const gateway: Gateway = {
    mode,
    serve,
    config,
    tailscaled,
    host: url.hostname,
    port: Number(url.port),
    token: "",
    keepAlive: transport === "tls" ? new HttpsAgent({ keepAlive: true, maxSockets: 1, rejectUnauthorized: false }) : new HttpAgent({ keepAlive: true, maxSockets: 1 }),
  };
  gateways.add(gateway);
  gateway.token = (await inviteJson(serve.stateDir, "alice", ["--mesh-user", "1", "--rps", "10000", "--burst", "100000"])).token;
  return gateway;
}

async function stopGateway(gateway: Gateway) {
  gateways.delete(gateway);
  gateway.keepAlive.destroy();
  await gateway.serve.stop();
}

async function cleanup() {
  await Promise.all([...gateways].map(stopGateway));
  await Promise.all(fakes.map((fake) => fake.close()));
  await upstream?.close();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  dirs.clear();
}

// ---- the client ---------------------------------------------------------------------------------

/** One timed GET from `from` (its local address): on the kept-alive connection, or a fresh one. */
function timedGet(gateway: Gateway, transport: Transport, from: string, fresh: boolean): Promise<Sample> {
  const init: RequestOptions & { rejectUnauthorized?: boolean } = {
    host: gateway.host,
    port: gateway.port,
    path: PATH,
    method: "GET",
    localAddress: from,
    agent: fresh ? false : gateway.keepAlive,
    headers: { authorization: `Bearer ${gateway.token}` },
    ...(transport === "tls" ? { rejectUnauthorized: false } : {}),
  };
  return new Promise((resolve) => {
    const started = performance.now();
    const call = (transport === "tls" ? httpsRequest : httpRequest)(init, (response) => {
      let body = "";
      response.setEncoding("utf8");
      response.on("data", (chunk: string) => {
        if (body.length < 300) body += chunk;
      });
      response.on("end", () => resolve({ status: response.statusCode ?? 0, ms: performance.now() - started, reused: call.reusedSocket, body }));
      response.on("error", (error) => resolve({ status: 0, ms: performance.now() - started, reused: call.reusedSocket, body: error.message }));
    });
    call.setTimeout(REQUEST_TIMEOUT_MS, () => call.destroy(new Error(`no answer in ${REQUEST_TIMEOUT_MS} ms`)));
    call.on("error", (error) => resolve({ status: 0, ms: performance.now() - started, reused: false, body: error.message }));
    call.end();
  });
}

/**
 * `count` pairs, c=1: request i goes to both serves from `source(i)`, enforce first in even pairs,
 * off first in odd ones. Stops early past `deadline`.
 */
async function runPairs(pair: [Gateway, Gateway], transport: Transport, count: number, source: (index: number) => string, fresh: boolean, deadline: number) {
  const times = { enforce: [] as number[], off: [] as number[] };
  const newConnections = { enforce: 0, off: 0 };
  const errors: string[] = [];
  for (let index = 0; index < count && performance.now() < deadline; index++) {
    const from = source(index);
    const order = index % 2 === 0 ? pair : ([pair[1], pair[0]] as const);
    const answers: Partial<Record<Gateway["mode"], Sample>> = {};
    for (const gateway of order) {
      const sample = await timedGet(gateway, transport, from, fresh);
      if (!sample.reused) newConnections[gateway.mode]++;
      if (sample.status !== 200) errors.push(`${gateway.mode} from ${from}: ${sample.status} ${sample.body.slice(0, 160)}`);
      answers[gateway.mode] = sample;
    }
    // A pair counts only when both answered 200: the paired differences stay paired.
    if (answers.enforce?.status === 200 && answers.off?.status === 200) {
      times.enforce.push(answers.enforce.ms);
      times.off.push(answers.off.ms);
    }
    if (errors.length > 20) throw new Error(`too many failed requests:\n${errors.join("\n")}`);
  }
  return { times, errors, newConnections };
}

/**
 * Context: one whois round trip alone, as the edge asks it (Node's http client, a kept-alive
 * connection on the unix socket, `Host: local-tailscaled.sock`), sequential, after warm-up.
 */
async function whoisAlone(tailscaled: Tailscaled, count: number, deadline: number): Promise<number[]> {
  const agent = new HttpAgent({ keepAlive: true, maxSockets: 1 });
  const times: number[] = [];
  try {
    for (let index = 0; index < count + 50 && performance.now() < deadline; index++) {
      const address = SAME_DEVICE[index % SAME_DEVICE.length]!;
      const started = performance.now();
      const status = await new Promise<number>((resolve) => {
        const call = httpRequest({ socketPath: tailscaled.socket, agent, path: `/localapi/v0/whois?addr=${encodeURIComponent(`${address}:40000`)}`, headers: { host: "local-tailscaled.sock" }, timeout: REQUEST_TIMEOUT_MS }, (response) => {
          response.resume();
          response.on("end", () => resolve(response.statusCode ?? 0));
        });
        call.on("timeout", () => call.destroy());
        call.on("error", () => resolve(0));
        call.end();
      });
      if (status !== 200) throw new Error(`whois alone: ${status}`);
      if (index >= 50) times.push(performance.now() - started);
    }
  } finally {
    agent.destroy();
  }
  return times;
}

// ---- statistics and the report ------------------------------------------------------------------

const sorted = (values: number[]) => [...values].sort((a, b) => a - b);
/** Nearest-rank quantile. */
function quantile(values: number[], q: number): number {
  const ordered = sorted(values);
  if (ordered.length === 0) return NaN;
  return ordered[Math.min(ordered.length - 1, Math.max(0, Math.ceil(q * ordered.length) - 1))]!;
}

/** Median of the paired differences and its distribution-free 95 % interval (sign test). */
function pairedMedian(a: number[], b: number[]): { median: number; low: number; high: number } {
  const differences = sorted(a.map((value, index) => value - b[index]!));
  const n = differences.length;
  if (n === 0) return { median: NaN, low: NaN, high: NaN };
  const k = Math.max(0, Math.floor((n - 1.96 * Math.sqrt(n)) / 2));
  return { median: quantile(differences, 0.5), low: differences[k]!, high: differences[n - 1 - k]! };
}

const ms = (value: number) => (Number.isNaN(value) ? "–" : value.toFixed(2));
const signed = (value: number) => (Number.isNaN(value) ? "–" : `${value >= 0 ? "+" : "−"}${Math.abs(value).toFixed(2)}`);

function table(results: CaseResult[]): string {
  const lines = [
    "| transport | case | pairs | enforce p50 / p95 ms | off p50 / p95 ms | **added p50** ms | **added p95** ms | paired Δ median [95 % CI] ms | whois calls enforce / off | new conns enforce / off | errors |",
    "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
  ];
  for (const result of results) {
    const n = result.enforce.length;
    const [e50, e95, o50, o95] = [quantile(result.enforce, 0.5), quantile(result.enforce, 0.95), quantile(result.off, 0.5), quantile(result.off, 0.95)];
    const paired = pairedMedian(result.enforce, result.off);
    const pairs = n === result.planned ? String(n) : `${n} of ${result.planned}${result.note ? ` (${result.note})` : ""}`;
    lines.push(
      `| ${result.transport} | ${result.name} | ${pairs} | ${ms(e50)} / ${ms(e95)} | ${ms(o50)} / ${ms(o95)} | **${signed(e50 - o50)}** | **${signed(e95 - o95)}** | ${signed(paired.median)} [${signed(paired.low)}, ${signed(paired.high)}] | ${result.whoisEnforce} / ${result.whoisOff} | ${result.newConnections.enforce} / ${result.newConnections.off} | ${result.errors.length} |`,
    );
  }
  return lines.join("\n");
}

function machineLine(): string {
  const cpu = /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1]?.trim() ?? "unknown CPU";
  return `nproc ${availableParallelism()} · ${cpu} · node ${process.version} · ${new Date().toISOString()}`;
}

const load = () =>
  loadavg()
    .map((value) => value.toFixed(2))
    .join(" ");

// ---- the run ------------------------------------------------------------------------------------

async function main() {
  const settings = options();
  const started = performance.now();
  const deadline = started + settings.budgetS * 1_000;
  const loadBefore = load();
  upstream = await startRecordingUpstream();
  const [enforceFake, offFake] = await Promise.all([startTailscaled(settings.fakeAnswer), startTailscaled(settings.fakeAnswer)]);

  const results: CaseResult[] = [];
  const skipped: string[] = [];
  for (const transport of settings.transports) {
    if (deadline - performance.now() < 40_000) {
      skipped.push(`${transport}: not run, less than 40 s of the --budget left`);
      continue;
    }
    const startAt = performance.now();
    const [enforce, off] = await Promise.all([startGateway("enforce", transport, enforceFake, upstream.port), startGateway("off", transport, offFake, upstream.port)]);
    console.error(`bench:mesh: ${transport}: serves up in ${((performance.now() - startAt) / 1000).toFixed(1)} s (${enforce.serve.url}, ${off.serve.url})`);
    const pair: [Gateway, Gateway] = [enforce, off];

    // Sanity: enforce really checks (bob's device is refused alice's token), off does not.
    for (const [gateway, expected] of [[enforce, 403], [off, 200]] as const) {
      const answer = await timedGet(gateway, transport, BOB, true);
      if (answer.status !== expected) throw new Error(`sanity: ${gateway.mode} answered ${answer.status} (not ${expected}) to alice's token from bob's device: ${answer.body}`);
    }

    const runCase = async (name: string, planned: number, warmup: number, source: (index: number) => string, warmupSource: (index: number) => string, fresh: boolean) => {
      if (performance.now() >= deadline) {
        skipped.push(`${transport} / ${name}: not run, --budget spent`);
        return;
      }
      await runPairs(pair, transport, warmup, warmupSource, fresh, deadline);
      const before = { enforce: await enforceFake.whoisCount(), off: await offFake.whoisCount() };
      const caseStarted = performance.now();
      const run = await runPairs(pair, transport, planned, source, fresh, deadline);
      const result: CaseResult = {
        transport,
        name,
        planned,
        enforce: run.times.enforce,
        off: run.times.off,
        errors: run.errors,
        whoisEnforce: (await enforceFake.whoisCount()) - before.enforce,
        whoisOff: (await offFake.whoisCount()) - before.off,
        newConnections: run.newConnections,
        ...(run.times.enforce.length + run.errors.length < planned ? { note: "cut: --budget" } : {}),
      };
      results.push(result);
      console.error(`bench:mesh: ${transport} / ${name}: ${result.enforce.length} pairs in ${((performance.now() - caseStarted) / 1000).toFixed(1)} s, whois ${result.whoisEnforce} / ${result.whoisOff}`);
    };

    const measured = (addresses: string[]) => (index: number) => addresses[index]!;
    const warming = (addresses: string[]) => (index: number) => addresses[addresses.length - POOL_WARMUP + (index % POOL_WARMUP)]!;
    await runCase("cached, kept-alive connection", settings.cached, settings.warmup, () => ALICE, () => ALICE, false);
    await runCase("cached, fresh connections", settings.fresh, Math.min(settings.warmup, 50), () => ALICE, () => ALICE, true);
    await runCase("uncached, fresh connections", settings.fresh, POOL_WARMUP, measured(SAME_DEVICE), warming(SAME_DEVICE), true);
    await runCase("uncached, fresh conns, new device each", settings.fresh, POOL_WARMUP, measured(NEW_DEVICE), warming(NEW_DEVICE), true);

    await Promise.all([stopGateway(enforce), stopGateway(off)]);
  }
  // For scale: the whois round trip alone, against a fake answering as in the run and one answering the other way.
  const otherAnswer: FakeAnswer = settings.fakeAnswer === "immediate" ? "timer" : "immediate";
  const other = await startTailscaled(otherAnswer);
  const alone = { [settings.fakeAnswer]: await whoisAlone(enforceFake, 500, deadline + 10_000), [otherAnswer]: await whoisAlone(other, 500, deadline + 15_000) } as Record<FakeAnswer, number[]>;

  const elapsedS = (performance.now() - started) / 1_000;
  const markdown = [
    "# `npm run bench:mesh` — results",
    "",
    "> Written by bench/mesh-identity.ts (`npm run bench:mesh`); each run replaces this file. What the bench does and why: the comment at the top of bench/mesh-identity.ts.",
    "",
    "## What the mesh identity check adds per request (issue 10)",
    "",
    `Machine: ${machineLine()} · load average before ${loadBefore}, after ${load()} · run took ${elapsedS.toFixed(0)} s`,
    "",
    `Two \`halo-gate serve\`s, identical but for \`mesh.identity\` ("enforce" vs "off"; both \`trust_loopback = false\`), each with its own fake tailscaled (test/e2e/fakes.ts) on a unix socket in a process of its own, answering whois ${settings.fakeAnswer === "immediate" ? "at once (`--fake-answer immediate`: the fake's `setTimeout(…, 0)` run as setImmediate, see below)" : "as it ships (`--fake-answer timer`: through `setTimeout(…, 0)`, ≥ 1 ms per answer)"}. c=1, \`GET ${PATH}\` with a valid bearer, interleaved request by request (order swapped every pair), timed by the client from \`request()\` to the end of the response (connect and TLS handshake included). Warm-up: ${settings.warmup} pairs before the kept-alive case, ${Math.min(settings.warmup, 50)} before the cached fresh one, ${POOL_WARMUP} pairs from addresses set aside before each uncached case. All on loopback; source addresses 127.0.x.y bound by the client (\`localAddress\`).`,
    "",
    "- **cached, kept-alive connection**: one connection per serve from 127.0.0.2 (alice-laptop); its positive answer is cached 10 s, so enforce asks tailscaled about once per 10 s",
    "- **cached, fresh connections**: a new connection per request, from 127.0.0.2",
    "- **uncached, fresh connections**: each pair from a new address (127.0.1.1 …), all alice-laptop: a known device whose cache entry expired; one whois per request under enforce",
    "- **uncached, fresh conns, new device each**: the same from 127.0.5.1 …, each a different device of alice's, so each request also changes the token's `last_device` (written at once)",
    "",
    "**added p50 / p95** = enforce's quantile − off's. **paired Δ median**: median over pairs of (enforce − the off request next to it), with a distribution-free 95 % interval. A pair counts only when both answered 200.",
    "",
    table(results),
    "",
    `For scale, one whois round trip alone, from this process to a fake tailscaled in its own process (Node http client, kept-alive unix socket connection, as the edge asks; 500 sequential after warm-up), p50 / p95: answering at once ${ms(quantile(alone.immediate, 0.5))} / ${ms(quantile(alone.immediate, 0.95))} ms; answering through the fake's \`setTimeout(…, 0)\` as test/e2e/fakes.ts ships ${ms(quantile(alone.timer, 0.5))} / ${ms(quantile(alone.timer, 0.95))} ms. The real tailscaled answers whois from memory, with no such timer: the uncached rows above ${settings.fakeAnswer === "immediate" ? "are the closer estimate" : "carry the fake's timer (rerun with `--fake-answer immediate`)"}.`,
    ...(skipped.length ? ["", ...skipped.map((line) => `- ${line}`)] : []),
    "",
  ].join("\n");
  console.log(markdown);
  writeFileSync(OUT, markdown);
  console.error(`bench:mesh: wrote ${OUT}`);
  const failed = results.some((result) => result.errors.length > 0 || result.whoisOff > 0);
  return failed ? 1 : 0;
}

/** Ctrl-C / SIGTERM: end everything started, then exit 130 / 143. Returns "was it interrupted?". */
function cleanUpOnSignals(): () => boolean {
  let interrupted = false;
  for (const [signal, code] of [["SIGINT", 130], ["SIGTERM", 143]] as const) {
    process.on(signal, () => {
      if (interrupted) return;
      interrupted = true;
      console.error(`\nbench:mesh: ${signal}: stopping everything it started…`);
      void cleanup().finally(() => process.exit(code));
    });
  }
  return () => interrupted;
}

const childAt = process.argv.indexOf("--fake-tailscaled");
if (childAt !== -1) {
  void fakeChild(process.argv[childAt + 1] === "timer" ? "timer" : "immediate");
} else {
  const interrupted = cleanUpOnSignals();
  main()
    .then(async (code) => {
      await cleanup();
      process.exit(code);
    })
    .catch(async (error: unknown) => {
      if (!interrupted()) console.error(`bench:mesh: ${(error as Error).stack ?? String(error)}`);
      await cleanup();
      process.exit(interrupted() ? 130 : 1);
    });
}
