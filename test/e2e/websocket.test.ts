/** WebSockets through serve: the edge's upgrade path, auth before the upgrade, identity headers. */
import type { IncomingHttpHeaders } from "node:http";
import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket, { WebSocketServer } from "ws";
import { startRecordingUpstream, type RecordingUpstream } from "../support/upstream-server";
import { bearer, cli, inviteJson, startServe, testWranglerConfig, type Serve } from "./harness";

let upstream: RecordingUpstream;
let audio: WebSocketServer;
const upgrades: Array<{ url: string; headers: IncomingHttpHeaders }> = [];
let gateway: Serve;
let token: string;

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  audio = new WebSocketServer({ host: "127.0.0.1", port: 0, path: "/ws" });
  audio.on("connection", (socket, request) => {
    upgrades.push({ url: request.url ?? "", headers: request.headers });
    socket.on("message", (data) => socket.send(`echo:${String(data)}`));
  });
  await new Promise((resolve) => audio.once("listening", resolve));
  const audioPort = (audio.address() as { port: number }).port;
  gateway = await startServe({
    config: testWranglerConfig(upstream.port, {}, { audio: `ws://127.0.0.1:${audioPort}/ws` }),
    env: { HALO_GATE_SHUTDOWN_GRACE_MS: "1500" },
  });
  ({ token } = await inviteJson(gateway.stateDir, "wes", ["--scopes", "v2,audio"]));
});

afterAll(async () => {
  await gateway?.stop();
  audio?.close();
  await upstream?.close();
});

const wsUrl = (path: string) => `${gateway.url.replace(/^http/, "ws")}${path}`;

function open(url: string, headers: Record<string, string> = {}): Promise<{ socket: WebSocket } | { status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, { headers });
    socket.once("open", () => resolve({ socket }));
    socket.once("unexpected-response", (_request, response) => {
      let body = "";
      response.on("data", (chunk: Buffer) => (body += chunk));
      response.on("end", () => resolve({ status: response.statusCode ?? 0, body }));
    });
    socket.once("error", reject);
  });
}

describe("WebSocket /audio/ws through serve", () => {
  it("upgrades with a bearer token, carries messages both ways, and sets the identity headers", async () => {
    const result = await open(wsUrl("/audio/ws"), { ...bearer(token), "x-halo-user": "mallory" });
    if (!("socket" in result)) throw new Error(`upgrade refused: ${result.status} ${result.body}`);
    const reply = new Promise<string>((resolve) => result.socket.once("message", (data) => resolve(String(data))));
    result.socket.send("hello");
    expect(await reply).toBe("echo:hello");
    result.socket.close();
    const seen = upgrades.at(-1)!;
    expect(seen.url).toBe("/ws");
    expect(seen.headers["x-halo-user"]).toBe("wes");
    expect(seen.headers["authorization"]).toBeUndefined();
    expect(seen.headers["x-forwarded-for"]).toBe("127.0.0.1");
  });

  it("accepts a single-use ticket from POST /auth/ticket, as a browser would use it, and never forwards it", async () => {
    const minted = await fetch(`${gateway.url}/auth/ticket`, { method: "POST", headers: { ...bearer(token), "content-type": "application/json" }, body: '{"scope":"audio"}' });
    expect(minted.status).toBe(201);
    const { ticket } = (await minted.json()) as { ticket: string };
    const result = await open(wsUrl(`/audio/ws?ticket=${ticket}`));
    if (!("socket" in result)) throw new Error(`upgrade refused: ${result.status} ${result.body}`);
    const reply = new Promise<string>((resolve) => result.socket.once("message", (data) => resolve(String(data))));
    result.socket.send("from a browser");
    expect(await reply).toBe("echo:from a browser");
    result.socket.close();
    expect(upgrades.at(-1)?.url).toBe("/ws");
    expect(upgrades.at(-1)?.headers["x-halo-user"]).toBe("wes");
    const reused = await open(wsUrl(`/audio/ws?ticket=${ticket}`));
    expect("status" in reused && reused.status).toBe(401);
  });

  it("refuses an upgrade without credentials (401) or without the audio scope (403) before the upstream sees it", async () => {
    const before = upgrades.length;
    const anonymous = await open(wsUrl("/audio/ws"));
    expect("status" in anonymous && anonymous.status).toBe(401);
    const { token: textOnly } = await inviteJson(gateway.stateDir, "tex", ["--scopes", "v2"]);
    const wrongScope = await open(wsUrl("/audio/ws"), bearer(textOnly));
    expect("status" in wrongScope && wrongScope.status).toBe(403);
    // Raw bytes: a client library would normalise the `..` away before sending.
    const { hostname, port } = new URL(gateway.url);
    const raw = await new Promise<string>((resolve) => {
      const socket = connect(Number(port), hostname, () =>
        socket.write(`GET /studio/../audio/ws HTTP/1.1\r\nHost: g\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer ${token}\r\n\r\n`),
      );
      let data = "";
      socket.on("data", (chunk) => (data += chunk));
      socket.on("close", () => resolve(data));
    });
    expect(raw).toMatch(/^HTTP\/1\.1 400 /);
    expect(upgrades.length).toBe(before);
  });

  it("an open socket holds one of the user's slots: with streams = 1 a second is refused (429) and its ticket stays usable", async () => {
    const { token: single } = await inviteJson(gateway.stateDir, "solo", ["--scopes", "audio", "--streams", "1", "--rps", "100", "--burst", "100"]);
    const first = await open(wsUrl("/audio/ws"), bearer(single));
    if (!("socket" in first)) throw new Error(`upgrade refused: ${first.status} ${first.body}`);
    const second = await open(wsUrl("/audio/ws"), bearer(single));
    expect("status" in second && second.status).toBe(429);
    const minted = await fetch(`${gateway.url}/auth/ticket`, { method: "POST", headers: { ...bearer(single), "content-type": "application/json" }, body: '{"scope":"audio"}' });
    const { ticket } = (await minted.json()) as { ticket: string };
    const refused = await open(wsUrl(`/audio/ws?ticket=${ticket}`));
    expect("status" in refused && refused.status).toBe(429);
    // Closing the first frees the slot; the ticket refused above was not used up.
    const closed = new Promise<void>((resolve) => first.socket.once("close", () => resolve()));
    first.socket.close();
    await closed;
    let retried: Awaited<ReturnType<typeof open>> = { status: 0, body: "" };
    for (let attempt = 0; attempt < 20; attempt++) {
      retried = await open(wsUrl(`/audio/ws?ticket=${ticket}`));
      if ("socket" in retried || retried.status !== 429) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    if (!("socket" in retried)) throw new Error(`the ticket was used up by the refused upgrade: ${retried.status} ${retried.body}`);
    retried.socket.close();
  });

  it("revoke closes an open WebSocket within 5 s (close code 1008)", async () => {
    const { token: doomed } = await inviteJson(gateway.stateDir, "doomed", ["--scopes", "audio"]);
    const result = await open(wsUrl("/audio/ws"), bearer(doomed));
    if (!("socket" in result)) throw new Error(`upgrade refused: ${result.status} ${result.body}`);
    const closed = new Promise<number>((resolve) => result.socket.once("close", (code) => resolve(code)));
    expect((await cli(["revoke", "doomed", "--state", gateway.stateDir])).code).toBe(0);
    const revokedAt = Date.now();
    const code = await closed;
    const took = Date.now() - revokedAt;
    expect(code).toBe(1008);
    expect(took).toBeLessThanOrEqual(5_000);
    console.log(`revoke → open WebSocket closed in ${took} ms`);
  });

  it("does not hold up shutdown: an open WebSocket is cut after the grace period", async () => {
    const result = await open(wsUrl("/audio/ws"), bearer(token));
    if (!("socket" in result)) throw new Error("upgrade refused");
    const closed = new Promise<void>((resolve) => result.socket.once("close", () => resolve()));
    expect(await gateway.stop("SIGTERM")).toBe(0);
    await closed;
  });
});
