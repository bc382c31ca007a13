/**
 * The fair queue (issue 12) under a hostile mesh peer: black box through the real `serve`, raw
 * sockets and real clients, loopback only, bounded in count and time. Each test has its own queued
 * route (max_in_flight 1) and its own users, so what one attack leaves behind cannot hide or cause
 * another's result. After each attack another user's fresh request on that route must complete
 * within the upstream's service time plus a small margin: nothing is left holding the slot.
 *
 * The upstream stands in for llama-server as test/support/slotted-upstream.ts does, except that a
 * streaming answer's headers come only after HEAD_DELAY_MS (a model loading, a long prompt being
 * processed), which is what leaves a client the time to leave before its response starts.
 */
import { createServer, request as httpRequest, type Server } from "node:http";
import { connect } from "node:net";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket, { WebSocketServer } from "ws";
import { bearer, inviteJson, startServe, testWranglerConfig, type Serve } from "./harness";

const HEAD_DELAY_MS = 400;
const SERVICE_MS = 400;
/** A fresh request on a free route: its service time plus this. */
const MARGIN_MS = 1_500;
const QUEUE_TIMEOUT = "6s";

interface Seen {
  route: string;
  user: string | null;
  stream: boolean;
  outcome: "running" | "completed" | "abandoned";
}

const seen: Seen[] = [];
let upstream: Server;
let audio: WebSocketServer;
let audioOpen = 0;
let gateway: Serve;
let port: number;
const tokens: Record<string, string> = {};

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const body = (stream = false) => JSON.stringify({ model: "m", messages: [{ role: "user", content: "hi" }], ...(stream ? { stream: true } : {}) });
const ROUTES = ["leak", "pipe", "ws", "me", "forge"] as const;

beforeAll(async () => {
  // One slot per route (the gateway keeps to max_in_flight 1); the route is the first path segment.
  upstream = createServer((request, response) => {
    let text = "";
    request.on("data", (chunk: Buffer) => (text += chunk));
    request.on("end", () => {
      const record: Seen = { route: (request.url ?? "").split("/")[1] ?? "", user: (request.headers["x-halo-user"] as string) ?? null, stream: /"stream":\s*true/.test(text), outcome: "running" };
      seen.push(record);
      response.on("close", () => {
        if (record.outcome === "running") record.outcome = response.writableFinished ? "completed" : "abandoned";
      });
      if (record.stream) {
        setTimeout(() => {
          if (response.destroyed) return;
          response.writeHead(200, { "content-type": "text/event-stream" });
          let sent = 0;
          const tick = setInterval(() => {
            if (response.destroyed) return clearInterval(tick);
            if (++sent < 4) return void response.write(`data: {"choices":[{"index":0,"delta":{"content":"t${sent}"}}]}\n\n`);
            clearInterval(tick);
            response.end("data: [DONE]\n\n");
          }, SERVICE_MS / 4);
        }, HEAD_DELAY_MS);
      } else {
        // `?hold=ms`: a long job, for the requests that keep a route busy while others queue.
        const hold = Number(new URL(request.url ?? "/", "http://upstream").searchParams.get("hold") ?? SERVICE_MS);
        setTimeout(() => {
          if (response.destroyed) return;
          const json = JSON.stringify({ object: "chat.completion", choices: [{ index: 0, message: { role: "assistant", content: "x" }, finish_reason: "stop" }] });
          response.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(json) }).end(json);
        }, hold);
      }
    });
  });
  await new Promise<void>((resolve) => upstream.listen(0, "127.0.0.1", resolve));
  const upstreamPort = (upstream.address() as AddressInfo).port;
  audio = new WebSocketServer({ host: "127.0.0.1", port: 0, path: "/ws" });
  audio.on("connection", (socket) => {
    audioOpen++;
    socket.on("close", () => audioOpen--);
  });
  await new Promise((resolve) => audio.once("listening", resolve));
  const audioPort = (audio.address() as AddressInfo).port;
  const routes = [
    ...ROUTES.filter((name) => name !== "ws").map((name) => ({ name, path: `/${name}`, upstream: `http://127.0.0.1:${upstreamPort}/${name}`, strip_prefix: true, auth: "bearer", max_in_flight: 1, queue_timeout: QUEUE_TIMEOUT })),
    { name: "ws", path: "/ws", upstream: `ws://127.0.0.1:${audioPort}`, strip_prefix: true, auth: "bearer_or_ticket", max_in_flight: 1, queue_timeout: QUEUE_TIMEOUT },
  ];
  gateway = await startServe({ config: testWranglerConfig(upstreamPort, { routes, max_users: 20, default_scopes: ["forge"] }), env: { HALO_GATE_SHUTDOWN_GRACE_MS: "3000" } });
  port = Number(new URL(gateway.url).port);
  for (const handle of ["holder", "victim", "other", "leaker", "piper", "socketeer", "fresh"]) {
    tokens[handle] = (await inviteJson(gateway.stateDir, handle, ["--scopes", ROUTES.join(","), "--streams", "1", "--rps", "1000", "--burst", "1000"])).token;
  }
}, 120_000);

afterAll(async () => {
  await gateway?.stop();
  audio?.close();
  upstream?.closeAllConnections();
  await new Promise((resolve) => upstream?.close(resolve));
});

interface Answer {
  status: number;
  body: string;
  ms: number;
}

/** A POST on a fresh connection; status 0 when the client gave up or was cut. */
function post(path: string, user: string, options: { stream?: boolean; signal?: AbortSignal; localAddress?: string; query?: string } = {}): Promise<Answer> {
  const started = Date.now();
  return new Promise((resolve) => {
    const call = httpRequest(
      `${gateway.url}${path}${options.query ?? ""}`,
      { method: "POST", agent: false, signal: options.signal, localAddress: options.localAddress, headers: { ...bearer(tokens[user]!), "content-type": "application/json" } },
      (response) => {
        let text = "";
        response.setEncoding("utf8");
        response.on("data", (chunk: string) => (text += chunk));
        response.on("end", () => resolve({ status: response.statusCode ?? 0, body: text, ms: Date.now() - started }));
        response.on("error", () => resolve({ status: 0, body: text, ms: Date.now() - started }));
      },
    );
    call.on("error", () => resolve({ status: 0, body: "", ms: Date.now() - started }));
    call.end(body(options.stream));
  });
}

const chat = (route: string, user: string, options: Parameters<typeof post>[2] = {}) => post(`/${route}/v1/chat/completions`, user, options);

async function me(user: string): Promise<{ in_flight: number; queue: { queued: number } }> {
  const response = await fetch(`${gateway.url}/api/me`, { headers: bearer(tokens[user]!) });
  return (await response.json()) as { in_flight: number; queue: { queued: number } };
}

/** Another user's fresh request on the route is served at once (nothing holds the slot). */
async function expectFree(route: string) {
  const answer = await chat(route, "other");
  expect(answer.status, answer.body).toBe(200);
  expect(answer.ms).toBeLessThan(SERVICE_MS + MARGIN_MS);
}

const running = (route: string, user: string) => expect.poll(() => seen.some((entry) => entry.route === route && entry.user === user && entry.outcome === "running"), { timeout: 5_000 }).toBe(true);

describe("the edge's /_halo/abandoned and x-halo-edge-request", () => {
  it("a client reaches /_halo/abandoned under no spelling (percent-encoded included)", async () => {
    for (const target of ["/_halo/abandoned", "/_halo/abandoned?x=1", "/_halo/%61bandoned", "/%5Fhalo/abandoned", "/_halo/abandone%64"]) {
      const answer = await rawAnswer(`POST ${target} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
      expect(answer.split("\r\n")[0], target).toBe("HTTP/1.1 404 Not Found");
    }
  });

  it("a forged request id (any spelling) does not take a queued request out of the queue", async () => {
    const holder = chat("forge", "holder", { query: "?hold=3000" });
    await running("forge", "holder");
    const id = "11111111-2222-3333-4444-555555555555";
    const forged = [`X-Halo-Edge-Request: ${id}`, `X_HALO_EDGE_REQUEST: ${id}`, `x-halo-edge-request: ${id}\r\nx-halo-edge-request: ${id}`, `x-halo-edge-request:${id}\r\nConnection: x-halo-edge-request`];
    const victim = rawAnswer(`POST /forge/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer ${tokens.victim}\r\nContent-Type: application/json\r\n${forged[0]}\r\nContent-Length: ${body().length}\r\nConnection: close\r\n\r\n${body()}`, 10_000);
    await expect.poll(async () => (await me("victim")).queue.queued, { timeout: 3_000 }).toBe(1);
    for (const header of forged) for (const target of ["/_halo/abandoned", "/_halo/%61bandoned"]) await rawAnswer(`POST ${target} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n${header}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
    expect((await me("victim")).queue.queued).toBe(1);
    expect((await holder).status).toBe(200);
    expect((await victim).split("\r\n")[0]).toBe("HTTP/1.1 200 OK");
  }, 20_000);
});

describe("clients that leave", () => {
  it("a streaming request whose client leaves before its response starts gives the upstream slot back", async () => {
    const abort = new AbortController();
    const leaving = chat("leak", "leaker", { stream: true, signal: abort.signal });
    // Granted at once, forwarded; the client leaves while the upstream prepares its answer.
    await running("leak", "leaker");
    abort.abort();
    expect((await leaving).status).toBe(0);
    await expect.poll(() => seen.find((entry) => entry.route === "leak" && entry.user === "leaker")?.outcome, { timeout: 3_000 }).not.toBe("running");
    await expectFree("leak");
    expect((await me("leaker")).in_flight).toBe(0);
  }, 20_000);

  it("pipelined requests queued behind one another leave the queue when their connection drops, and never reach the upstream", async () => {
    const holder = chat("pipe", "holder", { query: "?hold=3000" });
    await running("pipe", "holder");
    const one = `POST /pipe/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer ${tokens.piper}\r\nContent-Type: application/json\r\nContent-Length: ${body().length}\r\n\r\n${body()}`;
    const socket = connect({ port, host: "127.0.0.1", localAddress: "127.0.0.9" });
    socket.on("error", () => {});
    socket.write(one.repeat(3));
    await expect.poll(async () => (await me("piper")).queue.queued, { timeout: 3_000 }).toBe(3);
    socket.destroy();
    await expect.poll(async () => (await me("piper")).queue.queued, { timeout: 1_000, interval: 50 }).toBe(0);
    expect((await holder).status).toBe(200);
    await sleep(SERVICE_MS + 500);
    expect(seen.filter((entry) => entry.route === "pipe" && entry.user === "piper")).toEqual([]);
    await expectFree("pipe");
    // The edge no longer counts them against the peer: it can have its 32 requests in flight again.
    expect(await peerRefusals("127.0.0.9", 32)).toBe(0);
  }, 30_000);

  it("a WebSocket upgrade waiting in the queue leaves it at once when its client goes away", async () => {
    const holder = new WebSocket(`${gateway.url.replace(/^http/, "ws")}/ws/ws`, { headers: bearer(tokens.holder!) });
    await new Promise((resolve, reject) => {
      holder.once("open", resolve);
      holder.once("error", reject);
    });
    const socket = connect({ port, host: "127.0.0.1" });
    socket.on("error", () => {});
    socket.write(`GET /ws/ws HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer ${tokens.socketeer}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    await expect.poll(async () => (await me("socketeer")).queue.queued, { timeout: 3_000 }).toBe(1);
    socket.destroy();
    await expect.poll(async () => (await me("socketeer")).queue.queued, { timeout: 1_000, interval: 50 }).toBe(0);
    holder.close();
    await sleep(500);
    // Nobody opened an upstream socket for the client that left.
    expect(audioOpen).toBe(0);
  }, 20_000);
});

describe("/api/me on a queued route", () => {
  it("counts a request granted at once in in_flight (a user that never waited since serve started)", async () => {
    const call = chat("me", "fresh");
    await running("me", "fresh");
    expect((await me("fresh")).in_flight).toBe(1);
    expect((await call).status).toBe(200);
  }, 20_000);
});

function rawAnswer(bytes: string, timeoutMs = 3_000): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect({ port, host: "127.0.0.1" });
    let text = "";
    const timer = setTimeout(() => socket.destroy(), timeoutMs);
    socket.on("data", (chunk) => (text += chunk));
    socket.on("error", () => {});
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(text);
    });
    socket.write(bytes);
  });
}

/** How many of `count` requests held open at once from `localAddress` the edge refuses 429 (bodies pending on /auth/ticket). */
async function peerRefusals(localAddress: string, count: number): Promise<number> {
  const sockets = Array.from({ length: count }, () => {
    const socket = connect({ port, host: "127.0.0.1", localAddress });
    const state = { socket, text: "" };
    socket.on("data", (chunk) => (state.text += chunk));
    socket.on("error", () => {});
    socket.write(`POST /auth/ticket HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{`);
    return state;
  });
  await sleep(700);
  const refused = sockets.filter((state) => state.text.includes(" 429 ")).length;
  for (const state of sockets) state.socket.destroy();
  return refused;
}
