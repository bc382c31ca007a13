/**
 * What the gateway costs, measured in one run on this machine and reported as ratios:
 *   direct      — the upstream alone (the floor)
 *   core-open   — the worker on workerd, no-auth /studio route, no edge (miniflare direct socket)
 *   core        — the same with bearer auth (hash + D1 lookup): core vs core-open is the auth cost
 *   serve       — the production path: Node edge → workerd core → upstream, bearer token, quotas on
 *   serve-noquota, core-noquota — the same with `quotas = false` (isolates the quota check's cost)
 *   serve-open  — the same path on the no-auth /studio route (isolates the auth cost)
 *   workerd-edge — the rejected edge: a standalone workerd edge worker in front of the same core
 * Each load is bounded (DURATION_S seconds per scenario) and stays on loopback.
 *   npm run bench [-- --duration 4 --connections 1,16]
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import autocannon from "autocannon";
import { parse, stringify } from "smol-toml";
import { freeLoopbackPort } from "../test/support/ports";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const { values } = parseArgs({ options: { duration: { type: "string", default: "4" }, connections: { type: "string", default: "1,16" } } });
const DURATION_S = Math.min(30, Number(values.duration));
const CONNECTIONS = values.connections.split(",").map(Number);


function startUpstream(): Promise<{ server: Server; port: number }> {
  const server = createServer((request, response) => {
    request.resume();
    response.writeHead(200, { "content-type": "application/json" });
    response.end('{"object":"list","data":[{"id":"bench-model"}]}');
  });
  server.keepAliveTimeout = 10_000;
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve({ server, port: (server.address() as { port: number }).port })));
}

function rssKb(pid: number): number {
  try {
    return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

async function run(url: string, headers: Record<string, string>, connections: number) {
  const result = await autocannon({ url, headers, connections, duration: DURATION_S, pipelining: 1 });
  const non2xx = result.non2xx + result.errors;
  return { rps: result.requests.average, p50: result.latency.p50, p99: result.latency.p99, bad: non2xx };
}

interface Gateway {
  url: string;
  core: string;
  token: string;
  stop(): Promise<void>;
  rss(): { edgeMb: number; workerdMb: number };
  startupMs: number;
}

async function startGateway(upstreamPort: number, overrides: Record<string, unknown>): Promise<Gateway> {
  const state = mkdtempSync(join(tmpdir(), "halo-gate-bench-"));
  const toml = parse(readFileSync(join(ROOT, "wrangler.toml"), "utf8")) as Record<string, unknown> & { vars: { HALO_CONFIG: Record<string, unknown> & { routes: Array<{ upstream: string }> } } };
  for (const route of toml.vars.HALO_CONFIG.routes) route.upstream = route.upstream.replace(/:\/\/127\.0\.0\.1:\d+/, `://127.0.0.1:${upstreamPort}`);
  Object.assign(toml.vars.HALO_CONFIG, overrides);
  toml.main = join(ROOT, "src/index.ts");
  const config = join(state, "wrangler.toml");
  writeFileSync(config, stringify(toml));

  const bin = join(ROOT, "bin/halo-gate.mjs");
  const started = performance.now();
  const serve = spawn(process.execPath, [bin, "serve", "--state", state, "--config", config, "--bind", "127.0.0.1:0", "--admin-bind", "127.0.0.1:0"], { stdio: ["ignore", "pipe", "inherit"] });
  const url = await new Promise<string>((resolve) => {
    let out = "";
    serve.stdout!.on("data", (chunk) => {
      out += chunk;
      const match = /listening on (\S+)/.exec(out);
      if (match) resolve(match[1]!);
    });
  });
  const startupMs = performance.now() - started;
  const runtime = JSON.parse(readFileSync(join(state, "serve.json"), "utf8")) as { core: string; workerd_pids: number[] };
  const invite = await new Promise<string>((resolve) => {
    const child = spawn(process.execPath, [bin, "invite", "bench", "--json", "--rps", "10000", "--burst", "100000", "--streams", "1000", "--state", state]);
    let out = "";
    child.stdout.on("data", (chunk) => (out += chunk));
    child.on("close", () => resolve(out));
  });
  if (!invite.startsWith("{")) {
    serve.kill("SIGTERM");
    throw new Error(`invite failed: ${invite}`);
  }
  return {
    url,
    core: runtime.core,
    token: (JSON.parse(invite) as { token: string }).token,
    startupMs,
    rss: () => ({ edgeMb: Math.round(rssKb(serve.pid!) / 1024), workerdMb: Math.round(runtime.workerd_pids.reduce((sum, pid) => sum + rssKb(pid), 0) / 1024) }),
    stop: async () => {
      serve.kill("SIGTERM");
      await new Promise((resolve) => serve.on("exit", resolve));
    },
  };
}

async function main() {
  const upstream = await startUpstream();
  const withQuotas = await startGateway(upstream.port, {});
  const withoutQuotas = await startGateway(upstream.port, { quotas: false });
  const edge = await startWorkerdEdge(withQuotas.core);
  const auth = (gateway: Gateway) => ({ authorization: `Bearer ${gateway.token}` });
  const scenarios: Array<[string, string, Record<string, string>]> = [
    ["direct", `http://127.0.0.1:${upstream.port}/v1/models`, {}],
    ["core-open", `${withQuotas.core}/studio/v1/models`, {}],
    ["core-noquota", `${withoutQuotas.core}/v2/v1/models`, auth(withoutQuotas)],
    ["core", `${withQuotas.core}/v2/v1/models`, auth(withQuotas)],
    ["serve-open", `${withQuotas.url}/studio/v1/models`, {}],
    ["serve-noquota", `${withoutQuotas.url}/v2/v1/models`, auth(withoutQuotas)],
    ["serve", `${withQuotas.url}/v2/v1/models`, auth(withQuotas)],
    ["workerd-edge", `${edge.url}/v2/v1/models`, auth(withQuotas)],
  ];
  const rows: Array<Record<string, string | number>> = [];
  try {
    for (const connections of CONNECTIONS) {
      const measured = new Map<string, number>();
      for (const [name, url, headers] of scenarios) {
        const result = await run(url, headers, connections);
        measured.set(name, result.rps);
        rows.push({ scenario: name, connections, "req/s": Math.round(result.rps), "vs direct": (result.rps / measured.get("direct")!).toFixed(3), "p50 ms": result.p50, "p99 ms": result.p99, "non-2xx": result.bad });
      }
      const ratio = (a: string, b: string) => (measured.get(a)! / measured.get(b)!).toFixed(2);
      console.log(
        `c=${connections}: quotas on/off ${ratio("serve", "serve-noquota")} (serve), ${ratio("core", "core-noquota")} (core); ` +
          `auth/open ${ratio("core-noquota", "core-open")} (core); Node edge/workerd edge ${ratio("serve", "workerd-edge")}; serve/core ${ratio("serve", "core")}`,
      );
    }
    console.table(rows);
    const rss = withQuotas.rss();
    console.log(`serve start-up to "listening": ${Math.round(withQuotas.startupMs)} ms (includes bundling the worker); RSS after the run: edge/launcher ${rss.edgeMb} MB + workerd ${rss.workerdMb} MB; ${DURATION_S} s per scenario`);
    console.log(`rejected workerd edge: start-up to first answer ${Math.round(edge.startupMs)} ms; RSS after the run ${Math.round(rssKb(edge.process.pid!) / 1024)} MB (in addition to the same core)`);
  } finally {
    edge.process.kill("SIGKILL");
  }
  await withQuotas.stop();
  await withoutQuotas.stop();
  upstream.server.closeAllConnections();
  upstream.server.close();
}

/** The rejected design: a standalone workerd edge worker that forwards to the core. */
async function startWorkerdEdge(core: string): Promise<{ url: string; process: ChildProcess; startupMs: number }> {
  const dir = mkdtempSync(join(tmpdir(), "halo-gate-edge-"));
  const port = await freeLoopbackPort();
  writeFileSync(
    join(dir, "edge.js"),
    `export default { async fetch(request, env) {
      const headers = new Headers();
      for (const [name, value] of request.headers) if (!/^(x[-_]halo[-_]|mf-|cf-)/i.test(name)) headers.append(name, value);
      headers.set("x-halo-client-addr", String(request.cf?.clientIp ?? "unknown").replace(/:\\d+$/, ""));
      const url = new URL(request.url);
      return env.CORE.fetch(new Request("http://core" + url.pathname + url.search, { method: request.method, headers, body: request.body }));
    } };`,
  );
  const { host, port: corePort } = new URL(core);
  writeFileSync(
    join(dir, "edge.capnp"),
    `using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [ (name = "edge", worker = .edge), (name = "core", external = (address = "${host.split(":")[0]}:${corePort}", http = ())) ],
  sockets = [ (name = "http", address = "127.0.0.1:${port}", http = (), service = "edge") ]
);
const edge :Workerd.Worker = (
  modules = [ (name = "edge.js", esModule = embed "edge.js") ],
  compatibilityDate = "2026-04-20",
  bindings = [ (name = "CORE", service = "core") ]
);`,
  );
  const started = performance.now();
  const workerd = spawn(join(ROOT, "node_modules/.bin/workerd"), ["serve", join(dir, "edge.capnp")], { stdio: "ignore" });
  for (let attempt = 0; attempt < 400; attempt++) {
    try {
      await fetch(`http://127.0.0.1:${port}/healthz`);
      break;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }
  return { url: `http://127.0.0.1:${port}`, process: workerd, startupMs: performance.now() - started };
}

await main();
