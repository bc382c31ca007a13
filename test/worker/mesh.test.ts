/**
 * Mesh-bound tokens (issue 10): the decision table (mesh.identity off / warn / enforce × what the
 * edge said of the peer × the user's recorded mesh user), with the edge's `x-halo-mesh*` headers
 * set by hand, as serve's edge sets them from tailscaled's whois. What `warn` records (audit rows,
 * usage counters), what `enforce` answers (403 mesh_mismatch, 503 mesh_unavailable), that a request
 * failing authentication never gets as far, and the same check on tickets and `/api/me`.
 */
import { env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import type { AuditRow } from "../../src/audit/audit-log";
import { parseConfig } from "../../src/shared/config";
import { meshVerdict, type MeshPeer } from "../../src/shared/mesh-identity";
import { userQuotaStub, usageSnapshot } from "../../src/quota/durable-object-quota";
import { bearer, gatewayClient, revokeAsAdmin, seedToken, testConfig } from "./helpers";

const ROOMY = { rps: 1000, burst: 1000, streams: 100, daily_tokens: 1_000_000 };
const OWNER = "7";

/** The edge's headers for a peer. */
const PEERS = {
  own: { "x-halo-mesh": "user", "x-halo-mesh-user": OWNER, "x-halo-mesh-node": "alice-laptop" },
  other: { "x-halo-mesh": "user", "x-halo-mesh-user": "8", "x-halo-mesh-node": "bob-phone" },
  tagged: { "x-halo-mesh": "tagged", "x-halo-mesh-node": "ci-runner" },
  unknown: { "x-halo-mesh": "unknown" },
  unavailable: { "x-halo-mesh": "unavailable" },
  loopback: { "x-halo-mesh": "loopback" },
  // The edge did not say (it only looks for requests with credentials): fail-closed.
  absent: { "x-halo-mesh": "" },
  // Garbage is no better than nothing.
  forged: { "x-halo-mesh": "user", "x-halo-mesh-user": "7; DROP", "x-halo-mesh-node": "x" },
} as const;
type PeerName = keyof typeof PEERS;

let nextAddress = 1;

async function user(meshUser: string | null, scopes = ["v2", "audio"]) {
  const seeded = await seedToken({ scopes, limits: ROOMY });
  if (meshUser !== null) await env.DB.prepare("UPDATE users SET mesh_user = ?2 WHERE handle = ?1").bind(seeded.handle, meshUser).run();
  return seeded;
}

const configFor = (identity: "off" | "warn" | "enforce", extra: Record<string, unknown> = {}) => testConfig({ mesh: { identity, ...extra } });

/** One request from `peer` with the user's token; its response and the audit rows it left. */
async function call(identity: "off" | "warn" | "enforce", peer: PeerName, token: string, tokenId: string, path = "/v2/v1/models", extra: Record<string, unknown> = {}) {
  const client = `100.64.9.${nextAddress++}`;
  const response = await gatewayClient(configFor(identity, extra))(path, { headers: { ...bearer(token), ...PEERS[peer], "x-halo-client-addr": client } });
  const { results } = await env.DB.prepare("SELECT * FROM audit WHERE kind = 'auth' AND token_id = ?1 AND client = ?2 ORDER BY id").bind(tokenId, client).all<AuditRow>();
  return { response, rows: results };
}

const rowSummary = (row: AuditRow | undefined) => row && { action: row.action, reason: row.reason, status: row.status, detail: row.detail === null ? null : (JSON.parse(row.detail) as Record<string, unknown>) };

describe("the decision table (meshVerdict)", () => {
  const verdict = (mode: "warn" | "enforce", peer: MeshPeer, meshUser: string | null, allowTagged = false) => meshVerdict({ mode, allowTagged, peer }, meshUser);
  const own: MeshPeer = { kind: "user", user: OWNER, device: "alice-laptop" };
  const other: MeshPeer = { kind: "user", user: "8", device: "bob-phone" };
  const tagged: MeshPeer = { kind: "tagged", device: "ci-runner" };

  it.each([
    ["own device", own, OWNER, { kind: "match", device: "alice-laptop" }, { kind: "match", device: "alice-laptop" }],
    ["another user's device", other, OWNER, { kind: "warn", finding: "other_user", device: "bob-phone" }, { kind: "refuse", finding: "other_user", device: "bob-phone" }],
    ["a tagged node", tagged, OWNER, { kind: "warn", finding: "tagged", device: "ci-runner" }, { kind: "refuse", finding: "tagged", device: "ci-runner" }],
    ["an address tailscaled does not know", { kind: "unknown" }, OWNER, { kind: "warn", finding: "unknown", device: null }, { kind: "refuse", finding: "unknown", device: null }],
    ["tailscaled not answering", { kind: "unavailable" }, OWNER, { kind: "warn", finding: "unavailable", device: null }, { kind: "refuse", finding: "unavailable", device: null }],
    ["a trusted loopback peer", { kind: "loopback" }, OWNER, { kind: "match", device: "loopback" }, { kind: "match", device: "loopback" }],
    ["a user without a mesh user, from a mesh device", own, null, { kind: "warn", finding: "unbound", device: "alice-laptop" }, { kind: "refuse", finding: "unbound", device: "alice-laptop" }],
    ["a user without a mesh user, from loopback", { kind: "loopback" }, null, { kind: "match", device: "loopback" }, { kind: "match", device: "loopback" }],
  ] as const)("%s: warn and enforce", (_name, peer, meshUser, warn, enforce) => {
    expect(verdict("warn", peer as MeshPeer, meshUser)).toEqual(warn);
    expect(verdict("enforce", peer as MeshPeer, meshUser)).toEqual(enforce);
  });

  it("mesh.allow_tagged admits tagged nodes, and nothing else", () => {
    expect(verdict("enforce", tagged, OWNER, true)).toEqual({ kind: "match", device: "ci-runner" });
    expect(verdict("enforce", other, OWNER, true).kind).toBe("refuse");
    expect(verdict("enforce", { kind: "unknown" }, OWNER, true).kind).toBe("refuse");
  });
});

describe("through the gateway, with the edge's headers set by hand", () => {
  it("off: every peer is admitted and nothing mesh is recorded", async () => {
    const { token, tokenId } = await user(OWNER);
    for (const peer of Object.keys(PEERS) as PeerName[]) {
      const { response, rows } = await call("off", peer, token, tokenId);
      expect(response.status, peer).toBe(200);
      expect(rowSummary(rows[0]), peer).toEqual({ action: "allow", reason: null, status: 200, detail: null });
    }
  });

  it.each([
    ["own", null, { device: "alice-laptop" }],
    ["loopback", null, { device: "loopback" }],
    ["other", "mesh_mismatch", { device: "bob-phone", mesh: "other_user" }],
    ["tagged", "mesh_mismatch", { device: "ci-runner", mesh: "tagged" }],
    ["unknown", "mesh_mismatch", { mesh: "unknown" }],
    ["unavailable", "mesh_unavailable", { mesh: "unavailable" }],
    ["absent", "mesh_unavailable", { mesh: "unavailable" }],
    ["forged", "mesh_unavailable", { mesh: "unavailable" }],
  ] as const)("warn, peer %s: admitted; the audit row is an allow with reason %s and the device", async (peer, reason, detail) => {
    const { token, tokenId } = await user(OWNER);
    const { response, rows } = await call("warn", peer, token, tokenId);
    expect(response.status).toBe(200);
    expect(rows.map(rowSummary)).toEqual([{ action: "allow", reason, status: 200, detail }]);
  });

  it.each([
    ["own", 200, null],
    ["loopback", 200, null],
    ["other", 403, "mesh_mismatch"],
    ["tagged", 403, "mesh_mismatch"],
    ["unknown", 403, "mesh_mismatch"],
    ["unavailable", 503, "mesh_unavailable"],
    ["absent", 503, "mesh_unavailable"],
    ["forged", 503, "mesh_unavailable"],
  ] as const)("enforce, peer %s: %i %s", async (peer, status, code) => {
    const { token, tokenId } = await user(OWNER);
    const { response, rows } = await call("enforce", peer, token, tokenId);
    expect(response.status).toBe(status);
    const body = (await response.json()) as { error?: { code: string; type: string; message: string } };
    if (code === null) {
      expect(rowSummary(rows[0])).toMatchObject({ action: "allow", reason: null, status: 200 });
      return;
    }
    expect(body.error).toMatchObject({ code, type: status === 403 ? "permission_error" : "server_error" });
    if (status === 403) expect(body.error!.message).toMatch(/your own device/);
    if (status === 503) expect(response.headers.get("retry-after")).toBe("5");
    expect(rows.map(rowSummary)).toEqual([{ action: "deny", reason: code, status, detail: expect.objectContaining({ mesh: expect.any(String) }) }]);
  });

  it("enforce tells the user which device it saw", async () => {
    const { token, tokenId } = await user(OWNER);
    const { response } = await call("enforce", "other", token, tokenId);
    expect(((await response.json()) as { error: { message: string } }).error.message).toContain("(bob-phone)");
  });

  it("a user without a recorded mesh user: refused under enforce (saying how to fix it), recorded under warn, fine from loopback", async () => {
    const { token, tokenId, handle } = await user(null);
    const refused = await call("enforce", "own", token, tokenId);
    expect(refused.response.status).toBe(403);
    const message = ((await refused.response.json()) as { error: { message: string } }).error.message;
    expect(message).toContain(`halo-gate update ${handle} --mesh-user`);
    expect(rowSummary(refused.rows[0])).toMatchObject({ reason: "mesh_mismatch", detail: { mesh: "unbound", device: "alice-laptop" } });
    const warned = await call("warn", "own", token, tokenId);
    expect(warned.response.status).toBe(200);
    expect(rowSummary(warned.rows[0])).toMatchObject({ action: "allow", reason: "mesh_mismatch", detail: { mesh: "unbound" } });
    expect((await call("enforce", "loopback", token, tokenId)).response.status).toBe(200);
  });

  it("mesh.allow_tagged = true admits a tagged node under enforce", async () => {
    const { token, tokenId } = await user(OWNER);
    expect((await call("enforce", "tagged", token, tokenId, "/v2/v1/models", { allow_tagged: true })).response.status).toBe(200);
    expect((await call("enforce", "other", token, tokenId, "/v2/v1/models", { allow_tagged: true })).response.status).toBe(403);
  });

  it("a new mesh user reaches the user's object before the admin call returns", async () => {
    const { token, tokenId, handle } = await user("8");
    expect((await call("enforce", "own", token, tokenId)).response.status).toBe(403);
    await env.DB.prepare("UPDATE users SET mesh_user = ?2 WHERE handle = ?1").bind(handle, OWNER).run();
    await userQuotaStub(env.USER_QUOTA, handle).reload(); // what the admin API does after every update
    expect((await call("enforce", "own", token, tokenId)).response.status).toBe(200);
  });

  it("usage counts what warn admitted and enforce refused", async () => {
    const { token, tokenId, handle } = await user(OWNER);
    await call("warn", "other", token, tokenId);
    await call("warn", "unknown", token, tokenId);
    await call("warn", "own", token, tokenId);
    await call("enforce", "other", token, tokenId);
    await call("enforce", "unavailable", token, tokenId);
    const { metrics } = await usageSnapshot(env.USER_QUOTA, handle, Date.now(), "UTC");
    expect(metrics.mesh).toEqual({ warned: 2, refused: 2 });
    expect(metrics.status).toMatchObject({ "4xx": 1, "5xx": 1 });
  });

  it("records the device a token was last used from, beside last_used_at", async () => {
    const { token, tokenId } = await user(OWNER);
    await call("warn", "own", token, tokenId);
    const first = await env.DB.prepare("SELECT last_used_at, last_device FROM tokens WHERE token_id = ?1").bind(tokenId).first<{ last_used_at: number; last_device: string }>();
    expect(first).toMatchObject({ last_device: "alice-laptop" });
    // Another device within the minute is written at once; an unknown peer keeps the one recorded.
    await call("warn", "other", token, tokenId);
    await call("warn", "unknown", token, tokenId);
    expect((await env.DB.prepare("SELECT last_device FROM tokens WHERE token_id = ?1").bind(tokenId).first<{ last_device: string }>())?.last_device).toBe("bob-phone");
  });
});

describe("never consulted for a request that fails authentication first", () => {
  it("no credentials, a bad token, a revoked token, a wrong scope: the usual answers, whatever the peer", async () => {
    const enforce = gatewayClient(configFor("enforce"));
    const unavailable = { ...PEERS.unavailable, "x-halo-client-addr": "100.64.8.1" };
    expect((await enforce("/v2/v1/models", { headers: unavailable })).status).toBe(401);
    expect((await enforce("/v2/v1/models", { headers: { ...bearer(`sk-halo-${"0".repeat(32)}`), ...unavailable } })).status).toBe(401);
    const { token, handle } = await user(OWNER, ["sd"]);
    const wrongScope = await enforce("/v2/v1/models", { headers: { ...bearer(token), ...PEERS.other, "x-halo-client-addr": "100.64.8.2" } });
    expect(wrongScope.status).toBe(403);
    expect(((await wrongScope.json()) as { error: { code: string } }).error.code).toBe("insufficient_scope");
    await revokeAsAdmin(handle);
    expect((await enforce("/sd/x", { headers: { ...bearer(token), ...PEERS.other, "x-halo-client-addr": "100.64.8.3" } })).status).toBe(401);
    const { metrics } = await usageSnapshot(env.USER_QUOTA, handle, Date.now(), "UTC");
    expect(metrics.mesh).toEqual({ warned: 0, refused: 0 });
  });
});

describe("tickets and /api/me", () => {
  const mint = (token: string, peer: PeerName, identity: "warn" | "enforce" = "enforce") =>
    gatewayClient(configFor(identity))("/auth/ticket", { method: "POST", headers: { ...bearer(token), ...PEERS[peer], "content-type": "application/json" }, body: JSON.stringify({ scope: "audio" }) });

  it("POST /auth/ticket is checked: refused from another user's device under enforce", async () => {
    const { token } = await user(OWNER);
    const refused = await mint(token, "other");
    expect(refused.status).toBe(403);
    expect(((await refused.json()) as { error: { code: string } }).error.code).toBe("mesh_mismatch");
    expect((await mint(token, "own")).status).toBe(201);
  });

  it("a ticket is checked again when used: another user's device cannot use it, and the refusal leaves it usable", async () => {
    const { token } = await user(OWNER);
    const { ticket } = (await (await mint(token, "own")).json()) as { ticket: string };
    const enforce = gatewayClient(configFor("enforce"));
    expect((await enforce(`/audio/ws?ticket=${ticket}`, { headers: PEERS.other })).status).toBe(403);
    expect((await enforce(`/audio/ws?ticket=${ticket}`, { headers: PEERS.own })).status).toBe(200);
  });

  it("warn records a ticket minted from another user's device on the ticket's own row", async () => {
    const { token, tokenId } = await user(OWNER);
    expect((await mint(token, "other", "warn")).status).toBe(201);
    const row = await env.DB.prepare("SELECT * FROM audit WHERE token_id = ?1 AND action = 'ticket'").bind(tokenId).first<AuditRow>();
    expect(rowSummary(row ?? undefined)).toMatchObject({ reason: "mesh_mismatch", detail: { device: "bob-phone", mesh: "other_user" } });
  });

  it("/api/me is checked too", async () => {
    const { token } = await user(OWNER);
    const me = (peer: PeerName) => gatewayClient(configFor("enforce"))("/api/me", { headers: { ...bearer(token), ...PEERS[peer] } });
    expect((await me("other")).status).toBe(403);
    expect((await me("own")).status).toBe(200);
  });
});

describe("configuration", () => {
  it("defaults: warn, the standard socket, loopback trusted, tagged nodes refused", () => {
    expect(parseConfig({}).mesh).toEqual({
      login_server: "https://headscale.1bit.systems",
      identity: "warn",
      tailscaled_socket: "/var/run/tailscale/tailscaled.sock",
      trust_loopback: true,
      allow_tagged: false,
    });
  });

  it("cf-connecting-ip (Cloudflare: no tailscaled) with identity on refuses to start, naming both keys", () => {
    for (const identity of [undefined, "warn", "enforce"]) {
      expect(() => parseConfig({ client_address_source: "cf-connecting-ip", mesh: identity ? { identity } : {} })).toThrow(
        /HALO_CONFIG\.mesh\.identity: .*HALO_CONFIG\.client_address_source = "cf-connecting-ip".*mesh\.identity = "off"/,
      );
    }
    expect(parseConfig({ client_address_source: "cf-connecting-ip", mesh: { identity: "off" } }).mesh.identity).toBe("off");
  });

  it("unknown mesh keys and bad values are named", () => {
    expect(() => parseConfig({ mesh: { identitiy: "warn" } })).toThrow("HALO_CONFIG.mesh.identitiy: unknown key");
    expect(() => parseConfig({ mesh: { identity: "strict" } })).toThrow(/HALO_CONFIG\.mesh\.identity/);
    expect(() => parseConfig({ mesh: { tailscaled_socket: "tailscaled.sock" } })).toThrow(/HALO_CONFIG\.mesh\.tailscaled_socket: tailscaled_socket must be an absolute path/);
  });

  it("without an edge (wrangler dev) the check is off, whatever the config", async () => {
    const { token } = await user("8");
    const noEdge = gatewayClient(configFor("enforce"), {}, { edge: false, env: { EDGE_SECRET: undefined } });
    expect((await noEdge("/v2/v1/models", { headers: { ...bearer(token), ...PEERS.other } })).status).toBe(200);
  });
});
