/** `halo-gate serve` end to end: the edge socket, forwarding, streaming, crash safety, cron, shutdown. */
import { readFileSync } from "node:fs";
import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { deliveredOneByOne, readTimedEvents } from "../support/sse";
import { startRecordingUpstream, type RecordingUpstream } from "../support/upstream-server";
import { bearer, cli, inviteJson, listeningPorts, startServe, testWranglerConfig, type Serve } from "./harness";

let upstream: RecordingUpstream;
let config: string;
let gateway: Serve;
let token: string;

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  config = testWranglerConfig(upstream.port);
  gateway = await startServe({ config });
  ({ token } = await inviteJson(gateway.stateDir, "alice", ["--scopes", "v2,sd,lemon"]));
});

afterAll(async () => {
  await gateway?.stop();
  await upstream?.close();
});

const seenWith = (marker: string) => upstream.recorded.filter((entry) => entry.headers["x-request-id"] === marker);

/** One raw HTTP/1.1 exchange, so nothing (client library or URL parser) normalises the bytes sent. */
function rawRequest(url: string, raw: string): Promise<string> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = connect(Number(port), hostname, () => socket.write(raw));
    let data = "";
    socket.setTimeout(5_000, () => socket.destroy());
    socket.on("data", (chunk) => (data += chunk));
    socket.on("close", () => resolve(data));
    socket.on("error", () => resolve(data));
  });
}

describe("serve: forwarding through the edge", () => {
  it("prints the listening line and serves health and info", async () => {
    expect(gateway.output()).toMatch(/halo-gate listening on http:\/\/127\.0\.0\.1:\d+/);
    expect((await fetch(`${gateway.url}/healthz`)).status).toBe(200);
  });

  it("forwards an authenticated request with the real peer address, whatever the client claims", async () => {
    const marker = `m-${Math.random()}`;
    const response = await fetch(`${gateway.url}/v2/v1/models?x=1`, {
      headers: {
        ...bearer(token),
        "x-request-id": marker,
        "MF-CF-Blob": JSON.stringify({ clientIp: "6.6.6.6" }),
        "CF-Connecting-IP": "6.6.6.6",
        "X-Forwarded-For": "6.6.6.6",
        "X-Halo-Client-Addr": "6.6.6.6",
        "X-Halo-Edge-Secret": "guess",
        x_halo_user: "root",
      },
    });
    expect(response.status).toBe(200);
    const [seen] = seenWith(marker);
    expect(seen?.target).toBe("/v1/models?x=1");
    expect(seen?.headers["x-forwarded-for"]).toBe("127.0.0.1");
    expect(seen?.headers["x-halo-user"]).toBe("alice");
    expect(JSON.stringify(seen?.rawHeaders)).not.toMatch(/6\.6\.6\.6|root|guess|edge-secret|client-addr|mf-cf-blob/i);
    expect(seen?.headers["authorization"]).toBeUndefined();
  });

  it.each([
    "/v2/../sd/x",
    "/v2/./v1/models",
    "/studio/../v2/v1/models",
    "/v2/%2e%2e/sd/x",
    "/v2/.%2E/sd/x",
    "/v2\\..\\sd\\x",
    "/v2/v1\\models",
    "/healthz/../v2/v1/models",
    "http://127.0.0.1/v2/v1/models",
    "*",
  ])("refuses the raw target %s with 400 before any upstream sees it", async (target) => {
    const marker = `m-${Math.random()}`;
    const reply = await rawRequest(gateway.url, `GET ${target} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer ${token}\r\nx-request-id: ${marker}\r\nConnection: close\r\n\r\n`);
    expect(reply).toMatch(/^HTTP\/1\.1 400 /);
    expect(reply).toContain('"error"');
    expect(seenWith(marker)).toHaveLength(0);
  });

  it.each([
    ["CONNECT 127.0.0.1:22 HTTP/1.1", 405],
    ["TRACE /v2/v1/models HTTP/1.1", 405],
    ["TRACK /v2/v1/models HTTP/1.1", 400],
    ["FOO /v2/v1/models HTTP/1.1", 400],
    ["DEBUG /v2/v1/models HTTP/1.1", 400],
  ])("answers %s with a 4xx, never a 5xx", async (line, status) => {
    const marker = `m-${Math.random()}`;
    const reply = await rawRequest(gateway.url, `${line}\r\nHost: gateway\r\nAuthorization: Bearer ${token}\r\nx-request-id: ${marker}\r\nConnection: close\r\n\r\n`);
    expect(reply.slice(0, 12)).toBe(`HTTP/1.1 ${status}`);
    expect(seenWith(marker)).toHaveLength(0);
  });

  it.each([
    ["NUL in a header value", "X-Test: a\u0000b"],
    ["bare CR in a header value", "X-Test: a\rb"],
    ["obs-fold continuation", "X-Test: a\r\n b"],
    ["space before the colon", "X-Test : a"],
  ])("refuses %s with 400", async (_name, header) => {
    const marker = `m-${Math.random()}`;
    const reply = await rawRequest(gateway.url, `GET /v2/v1/models HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer ${token}\r\nx-request-id: ${marker}\r\n${header}\r\nConnection: close\r\n\r\n`);
    expect(reply).toMatch(/^HTTP\/1\.1 400 /);
    expect(seenWith(marker)).toHaveLength(0);
  });

  it("has no admin paths on the mesh-facing socket", async () => {
    for (const path of ["/admin/users", "/admin/audit", "/metrics"]) {
      const response = await fetch(`${gateway.url}${path}`, { headers: bearer(token) });
      expect(response.status, path).toBe(404);
    }
  });

  it("delivers SSE through serve event by event", async () => {
    const response = await fetch(`${gateway.url}/v2/v1/sse?n=4&gap=300`, { headers: bearer(token) });
    const events = await readTimedEvents(response.body!);
    expect(events).toHaveLength(4);
    // Not buffered: every event reached the client before the upstream had even sent the next one.
    expect(deliveredOneByOne(events), JSON.stringify(events)).toBe(true);
  });

  it("the admin API refuses a missing or wrong operator token", async () => {
    const runtime = JSON.parse(await import("node:fs").then((fs) => fs.readFileSync(`${gateway.stateDir}/serve.json`, "utf8"))) as { admin: string };
    expect(runtime.admin).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect((await fetch(`${runtime.admin}/admin/users`)).status).toBe(401);
    expect((await fetch(`${runtime.admin}/admin/users`, { headers: bearer("hgop-wrong") })).status).toBe(401);
    const { statSync } = await import("node:fs");
    expect(statSync(`${gateway.stateDir}/operator-token`).mode & 0o777).toBe(0o600);
  });
});

describe("serve: lifecycle", () => {
  it("keeps every user, token and admin audit row across kill -9 under traffic", async () => {
    const upstreamPort = upstream.port;
    const own = await startServe({ config: testWranglerConfig(upstreamPort) });
    // Roomy limits: this test is about what survives; stranded slots have their own test.
    const users = await Promise.all(["u1", "u2", "u3"].map((handle) => inviteJson(own.stateDir, handle, ["--streams", "100", "--rps", "1000", "--burst", "1000"])));
    await cli(["revoke", "u3", "--state", own.stateDir]);
    const traffic = Array.from({ length: 30 }, (_, index) =>
      fetch(`${own.url}/v2/v1/sse?n=5&gap=100`, { headers: bearer(users[index % 2]!.token) }).then((response) => response.text()).catch(() => "dropped"),
    );
    await new Promise((resolve) => setTimeout(resolve, 150));
    own.process.kill("SIGKILL");
    await own.exited;
    await Promise.all(traffic);
    const again = await startServe({ stateDir: own.stateDir, config: testWranglerConfig(upstreamPort) });
    try {
      const list = JSON.parse((await cli(["list", "--json", "--state", own.stateDir])).stdout) as Array<{ handle: string; status: string }>;
      expect(list.map((user) => [user.handle, user.status])).toEqual([["u1", "active"], ["u2", "active"], ["u3", "revoked"]]);
      expect((await fetch(`${again.url}/v2/v1/models`, { headers: bearer(users[0]!.token) })).status).toBe(200);
      expect((await fetch(`${again.url}/v2/v1/models`, { headers: bearer(users[2]!.token) })).status).toBe(401);
      const audit = (await cli(["audit", "--state", own.stateDir])).stdout.trim().split("\n").map((line) => JSON.parse(line) as { action: string; handle: string });
      expect(audit.filter((event) => event.action === "invite").map((event) => event.handle).sort()).toEqual(["u1", "u2", "u3"]);
      expect(audit.some((event) => event.action === "revoke" && event.handle === "u3")).toBe(true);
    } finally {
      await again.stop();
    }
  });

  it("finishes in-flight requests on SIGTERM, then exits 0", async () => {
    const own = await startServe({ config: testWranglerConfig(upstream.port) });
    const { token: own_token } = await inviteJson(own.stateDir, "sigterm");
    const inFlight = fetch(`${own.url}/v2/v1/sse?n=4&gap=250`, { headers: bearer(own_token) }).then((response) => response.text());
    await new Promise((resolve) => setTimeout(resolve, 200));
    const code = await own.stop("SIGTERM");
    expect(code).toBe(0);
    expect((await inFlight).match(/data:/g)).toHaveLength(4);
    expect(own.output()).toContain("halo-gate: stopped");
  });

  it("fires crons on its own: --cron marks an expired token and writes an audit row", async () => {
    const own = await startServe({ config: testWranglerConfig(upstream.port), args: ["--bind", "127.0.0.1:0", "--cron", "* * * * * *"] });
    try {
      await inviteJson(own.stateDir, "shortlived", ["--ttl", "1s"]);
      let events: Array<{ kind: string; action: string; handle: string }> = [];
      const deadline = Date.now() + 15_000;
      while (Date.now() < deadline && !events.some((event) => event.kind === "cron")) {
        await new Promise((resolve) => setTimeout(resolve, 500));
        const out = (await cli(["audit", "--state", own.stateDir])).stdout.trim();
        events = out ? out.split("\n").map((line) => JSON.parse(line) as { kind: string; action: string; handle: string }) : [];
      }
      expect(events.filter((event) => event.kind === "cron")).toEqual([expect.objectContaining({ action: "expire", handle: "shortlived" })]);
      const list = JSON.parse((await cli(["list", "--json", "--state", own.stateDir])).stdout) as Array<{ status: string }>;
      expect(list[0]?.status).toBe("expired");
    } finally {
      await own.stop();
    }
  });

  it("exits 1 when its workerd core dies, so a service manager restarts it", async () => {
    const own = await startServe({ config: testWranglerConfig(upstream.port) });
    const runtime = JSON.parse(readFileSync(`${own.stateDir}/serve.json`, "utf8")) as { workerd_pids: number[] };
    expect(runtime.workerd_pids.length).toBeGreaterThan(0);
    for (const pid of runtime.workerd_pids) process.kill(pid, "SIGKILL");
    expect(await own.exited).toBe(1);
    expect(own.output()).toContain("the workerd core exited unexpectedly");
  });

  it("the only listener on its bind address is the gateway socket, and it is not reachable on another loopback address", async () => {
    const own = await startServe({ config: testWranglerConfig(upstream.port), args: ["--bind", "127.0.0.2:0"] });
    try {
      const port = Number(new URL(own.url).port);
      expect(listeningPorts("127.0.0.2")).toEqual([port]);
      expect((await fetch(`http://127.0.0.2:${port}/healthz`)).status).toBe(200);
      await expect(fetch(`http://127.0.0.1:${port}/healthz`)).rejects.toThrow();
    } finally {
      await own.stop();
    }
  });
});
