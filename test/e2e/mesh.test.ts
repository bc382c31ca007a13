/**
 * Mesh-bound tokens (issue 10) end to end: real `serve`s (one under mesh.identity = "enforce", one
 * under "warn", both with trust_loopback = false) whose edge asks a fake tailscaled speaking the
 * LocalAPI over a unix socket. The devices are loopback addresses the clients bind (`localAddress`):
 * 127.0.0.2, .8 and .9 are alice's (Headscale user 1), .3 is bob's (user 2), .4 a tagged node, anything
 * else unknown to tailscaled. Plus invite/update --mesh-user, and with a fake headscale on PATH.
 */
import { request as httpRequest } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket, { WebSocketServer } from "ws";
import { startRecordingUpstream, type RecordingUpstream } from "../support/upstream-server";
import { fakeHeadscale, fakeTailscaled, type FakeTailscaled } from "./fakes";
import { cli, inviteJson, startServe, testWranglerConfig, type Serve } from "./harness";

const ALICE = "127.0.0.2";
const ALICE_TABLET = "127.0.0.8";
const ALICE_PHONE = "127.0.0.9";
const BOB = "127.0.0.3";
const CI = "127.0.0.4";
const STRANGER = "127.0.0.5";

let upstream: RecordingUpstream;
let audio: WebSocketServer;
let tailscaled: FakeTailscaled;
let enforce: Serve;
let warn: Serve;
const tokens: Record<string, Record<string, string>> = { enforce: {}, warn: {} };

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  audio = new WebSocketServer({ host: "127.0.0.1", port: 0, path: "/ws" });
  await new Promise((resolve) => audio.once("listening", resolve));
  tailscaled = await fakeTailscaled(
    { BackendState: "Running" },
    {
      [ALICE]: { node: "alice-laptop", user: { id: 1, login: "alice" } },
      [ALICE_TABLET]: { node: "alice-tablet", user: { id: 1, login: "alice" } },
      [ALICE_PHONE]: { node: "alice-phone", user: { id: 1, login: "alice" } },
      [BOB]: { node: "bob-phone", user: { id: 2, login: "bob" } },
      [CI]: { node: "ci-runner", tags: ["tag:ci"] },
    },
  );
  const config = (identity: string) =>
    testWranglerConfig(
      upstream.port,
      { mesh: { login_server: "https://hs.example", identity, tailscaled_socket: tailscaled.socket, trust_loopback: false } },
      { audio: `ws://127.0.0.1:${(audio.address() as { port: number }).port}/ws` },
    );
  [enforce, warn] = await Promise.all([startServe({ config: config("enforce") }), startServe({ config: config("warn") })]);
  for (const [name, gateway] of [["enforce", enforce], ["warn", warn]] as const) {
    tokens[name]!.alice = (await inviteJson(gateway.stateDir, "alice", ["--scopes", "v2,audio", "--mesh-user", "1"])).token;
    tokens[name]!.bob = (await inviteJson(gateway.stateDir, "bob", ["--mesh-user", "2"])).token;
  }
});

afterAll(async () => {
  await Promise.all([enforce?.stop(), warn?.stop()]);
  audio?.close();
  await tailscaled?.close();
  await upstream?.close();
});

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** One request from a device (the local address it binds), on a fresh connection. */
function send(gateway: Serve, path: string, from: string, options: { token?: string; method?: string; body?: string; headers?: Record<string, string> } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { ...options.headers, ...(options.token ? { authorization: `Bearer ${options.token}` } : {}), ...(options.body ? { "content-type": "application/json" } : {}) };
    const call = httpRequest(`${gateway.url}${path}`, { method: options.method ?? "GET", localAddress: from, agent: false, headers }, (response) => {
      let body = "";
      response.setEncoding("utf8");
      response.on("data", (chunk: string) => (body += chunk));
      response.on("end", () => resolve({ status: response.statusCode ?? 0, headers: response.headers, body }));
    });
    call.on("error", reject);
    call.end(options.body);
  });
}

const errorCode = (answer: Answer) => (JSON.parse(answer.body) as { error?: { code?: string } }).error?.code;

async function auditOf(gateway: Serve): Promise<Array<{ action: string; handle: string | null; client: string | null; reason: string | null; status: number | null; detail?: Record<string, unknown> }>> {
  // Auth decisions are written within about a second.
  await new Promise((resolve) => setTimeout(resolve, 1_300));
  const result = await cli(["audit", "--state", gateway.stateDir]);
  return result.stdout.trim().split("\n").filter(Boolean).map((line) => JSON.parse(line));
}

async function listed(gateway: Serve, handle: string): Promise<Record<string, unknown> | undefined> {
  const users = JSON.parse((await cli(["list", "--json", "--state", gateway.stateDir])).stdout) as Array<Record<string, unknown>>;
  return users.find((user) => user.handle === handle);
}

describe('mesh.identity = "enforce"', () => {
  it("a token from its owner's device is admitted; from another user's device, a tagged node or a stranger, refused with 403", async () => {
    const own = await send(enforce, "/v2/v1/models", ALICE, { token: tokens.enforce!.alice });
    expect(own.status, own.body).toBe(200);
    expect((await send(enforce, "/v2/v1/models", BOB, { token: tokens.enforce!.bob })).status).toBe(200);

    for (const device of [BOB, CI, STRANGER]) {
      const refused = await send(enforce, "/v2/v1/models", device, { token: tokens.enforce!.alice });
      expect(refused.status, device).toBe(403);
      expect(errorCode(refused)).toBe("mesh_mismatch");
      expect(JSON.parse(refused.body).error.message).toMatch(/own device/);
    }
    // The edge asked tailscaled with the real peer address and port, as its LocalAPI wants.
    expect(tailscaled.whoisCalls.some((addr) => new RegExp(`^${BOB.replace(/\./g, "\\.")}:\\d+$`).test(addr))).toBe(true);
    expect(tailscaled.hosts.every((host) => host === "local-tailscaled.sock")).toBe(true);
  });

  it("a request without credentials never waits for tailscaled; a credentialed one does, once: answers are cached per address", async () => {
    // The edge starts a new peer's lookup when its connection is accepted. With tailscaled slow to
    // answer, a request without credentials gets its 401 while that lookup is still unanswered...
    const unanswered = () => [...tailscaled.pendingWhois].filter((addr) => addr.startsWith("127.0.0.6:"));
    tailscaled.slow(5_000);
    try {
      const answer = await send(enforce, "/v2/v1/models", "127.0.0.6");
      expect(answer.status).toBe(401);
      expect(unanswered()).toHaveLength(1);
      // The edge gives up on that lookup after its 1 s timeout (and logs tailscaled as not answering).
      await expect.poll(unanswered, { timeout: 5_000 }).toEqual([]);
    } finally {
      tailscaled.slow(0);
    }
    // ...while a credentialed request from a new device of alice's is answered only after tailscaled
    // answered its lookup (ordering, not timing: the fake records each answer as it sends it).
    tailscaled.slow(300);
    try {
      const first = await send(enforce, "/v2/v1/models", ALICE_PHONE, { token: tokens.enforce!.alice });
      expect(first.status, first.body).toBe(200);
      expect(tailscaled.answeredWhois.filter((addr) => addr.startsWith(`${ALICE_PHONE}:`))).toHaveLength(1);
    } finally {
      tailscaled.slow(0);
    }
    // The next ones (new connections, well within the cache's 10 s) find the answer cached:
    // tailscaled is not asked again.
    const before = tailscaled.whoisCalls.length;
    for (let index = 0; index < 3; index++) expect((await send(enforce, "/v2/v1/models", ALICE_PHONE, { token: tokens.enforce!.alice })).status).toBe(200);
    expect(tailscaled.whoisCalls.slice(before).filter((addr) => addr.startsWith(`${ALICE_PHONE}:`))).toEqual([]);
  });

  it("tickets are checked when minted and when used, and the WebSocket opens only from the owner's device", async () => {
    const mint = (from: string) => send(enforce, "/auth/ticket", from, { token: tokens.enforce!.alice, method: "POST", body: JSON.stringify({ scope: "audio" }) });
    expect((await mint(BOB)).status).toBe(403);
    const minted = await mint(ALICE);
    expect(minted.status).toBe(201);
    const { ticket } = JSON.parse(minted.body) as { ticket: string };
    const open = (from: string) =>
      new Promise<number>((resolve, reject) => {
        const socket = new WebSocket(`${enforce.url.replace(/^http/, "ws")}/audio/ws?ticket=${ticket}`, { localAddress: from });
        socket.once("open", () => {
          socket.close();
          resolve(101);
        });
        socket.once("unexpected-response", (_request, response) => resolve(response.statusCode ?? 0));
        socket.once("error", reject);
      });
    expect(await open(BOB)).toBe(403);
    // The refusal did not use the ticket up: its owner still can.
    expect(await open(ALICE)).toBe(101);
  });

  it("list shows the mesh user and the device a token was last used from; the audit log the refusals with the device", async () => {
    expect(await listed(enforce, "alice")).toMatchObject({ mesh_user: "1", last_device: "alice-laptop" });
    const wide = await cli(["list", "--wide", "--state", enforce.stateDir]);
    expect(wide.stdout).toMatch(/MESH USER/);
    expect(wide.stdout).toMatch(/LAST DEVICE/);
    const refused = (await auditOf(enforce)).filter((event) => event.action === "deny" && event.reason === "mesh_mismatch" && event.handle === "alice");
    expect(refused.find((event) => event.client === BOB)).toMatchObject({ status: 403, detail: { device: "bob-phone", mesh: "other_user" } });
    expect(refused.find((event) => event.client === CI)).toMatchObject({ detail: { device: "ci-runner", mesh: "tagged" } });
    expect(refused.find((event) => event.client === STRANGER)).toMatchObject({ detail: { mesh: "unknown" } });
    const usage = JSON.parse((await cli(["usage", "--json", "--state", enforce.stateDir])).stdout) as { users: Array<{ handle: string; mesh: { refused: number } }> };
    expect(usage.users.find((user) => user.handle === "alice")?.mesh.refused).toBeGreaterThanOrEqual(5);
  });

  it("a client cannot say whose device it is: its own x-halo-mesh* headers, in any spelling, are dropped", async () => {
    const forged: Array<Record<string, string>> = [
      { "x-halo-mesh": "loopback" },
      { "X-Halo-Mesh": "user", "X-Halo-Mesh-User": "1", "X-Halo-Mesh-Node": "alice-laptop" },
      { x_halo_mesh: "loopback" },
    ];
    for (const headers of forged) {
      const refused = await send(enforce, "/v2/v1/models", BOB, { token: tokens.enforce!.alice, headers });
      expect(refused.status, JSON.stringify(headers)).toBe(403);
      expect(errorCode(refused)).toBe("mesh_mismatch");
    }
  });

  it("tailscaled down: 503 with Retry-After (fail-closed), and back to normal once it answers again", async () => {
    await tailscaled.down();
    try {
      const refused = await send(enforce, "/v2/v1/models", ALICE_TABLET, { token: tokens.enforce!.alice });
      expect(refused.status).toBe(503);
      expect(errorCode(refused)).toBe("mesh_unavailable");
      expect(refused.headers["retry-after"]).toBe("5");
    } finally {
      await tailscaled.up();
    }
    // The "could not answer" is cached for 1 s only.
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    expect((await send(enforce, "/v2/v1/models", ALICE_TABLET, { token: tokens.enforce!.alice })).status).toBe(200);
    expect(enforce.output()).toMatch(/mesh identity: tailscaled at \S+ does not answer \((ENOENT|ECONNREFUSED)\)/);
    expect(enforce.output()).toMatch(/mesh identity: enforce: .*owners from tailscaled at/);
  });
});

describe('mesh.identity = "warn"', () => {
  it("a token from another user's device is admitted, and audited as mesh_mismatch with the device; usage counts it", async () => {
    const answer = await send(warn, "/v2/v1/models", BOB, { token: tokens.warn!.alice });
    expect(answer.status).toBe(200);
    expect((await send(warn, "/v2/v1/models", ALICE, { token: tokens.warn!.alice })).status).toBe(200);
    const events = (await auditOf(warn)).filter((event) => event.handle === "alice" && event.action === "allow");
    expect(events.find((event) => event.client === BOB)).toMatchObject({ reason: "mesh_mismatch", status: 200, detail: { device: "bob-phone", mesh: "other_user" } });
    expect(events.find((event) => event.client === ALICE)).toMatchObject({ reason: null, detail: { device: "alice-laptop" } });
    const usage = JSON.parse((await cli(["usage", "--json", "--state", warn.stateDir])).stdout) as { users: Array<{ handle: string; mesh: { warned: number; refused: number } }> };
    expect(usage.users.find((user) => user.handle === "alice")?.mesh).toEqual({ warned: 1, refused: 0 });
    expect((await cli(["usage", "--wide", "--state", warn.stateDir])).stdout).toContain("MESH WARN/DENY");
  });
});

describe("binding tokens to mesh users", () => {
  it("invite records the Headscale user it created; --mesh-user NAME is resolved with headscale, a number taken as is", async () => {
    const headscale = fakeHeadscale();
    const invited = await cli(["invite", "carol", "--state", warn.stateDir], headscale.env);
    expect(invited.code, invited.stderr).toBe(0);
    const carolId = String(headscale.database().users.find((user) => user.name === "carol")!.id);
    expect(await listed(warn, "carol")).toMatchObject({ mesh_user: carolId });

    const updated = await cli(["update", "bob", "--mesh-user", "someone-else", "--state", warn.stateDir], headscale.env);
    expect(updated.code, updated.stderr).toBe(0);
    expect(updated.stdout).toContain("mesh user 1");
    expect((await cli(["update", "bob", "--mesh-user", "2", "--state", warn.stateDir])).stdout).toContain("mesh user 2");

    const unknown = await cli(["invite", "dora", "--mesh-user", "nosuch", "--state", warn.stateDir], headscale.env);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain("Headscale has no user of that name");
    expect(await listed(warn, "dora")).toBeUndefined(); // refused before a token existed

    const noHeadscale = await cli(["update", "bob", "--mesh-user", "bob", "--state", warn.stateDir], { PATH: "/usr/bin:/bin" });
    expect(noHeadscale.code).toBe(1);
    expect(noHeadscale.stderr).toContain("give the numeric id");
  });

  it("list names the active users without a mesh user, on stderr", async () => {
    await inviteJson(warn.stateDir, "erin");
    const list = await cli(["list", "--state", warn.stateDir]);
    expect(list.stderr).toContain("mesh.identity = warn: no mesh user recorded for erin");
    expect(list.stderr).not.toContain("alice");
  });
});
