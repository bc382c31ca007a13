import { env, SELF } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { userQuotaStub } from "../../src/quota/durable-object-quota";
import { bearer, gatewayClient, marker, recordedWith, revokeAsAdmin, seedToken, viaEdge } from "./helpers";

const REALM = 'Bearer realm="halo-gate"';

async function expectError(response: Response, status: number, code: string) {
  expect(response.status).toBe(status);
  expect(response.headers.get("content-type")).toMatch(/^application\/json/);
  const body = (await response.json()) as { error: { message: string; type: string; code: string } };
  expect(body.error.code).toBe(code);
  expect(typeof body.error.message).toBe("string");
  expect(typeof body.error.type).toBe("string");
  return body;
}

describe("docs/contract.md §5 authentication rows", () => {
  const call = gatewayClient();

  it("no credentials → 401 with a bare Bearer challenge", async () => {
    const response = await call("/v2/v1/models");
    expect(response.headers.get("www-authenticate")).toBe(REALM);
    await expectError(response, 401, "missing_token");
  });

  it("a non-Bearer scheme counts as no bearer credentials → 401", async () => {
    const response = await call("/v2/v1/models", { headers: { authorization: "Basic YWxpY2U6c2VjcmV0" } });
    expect(response.headers.get("www-authenticate")).toBe(REALM);
    await expectError(response, 401, "missing_token");
  });

  it.each([
    ["Bearer"],
    ["Bearer "],
    ["Bearer sk-halo-aaaa sk-halo-bbbb"],
    ["Bearer sk-halo-aaaa, Bearer sk-halo-bbbb"],
    ["Bearer =abc"],
    ["Bearer a=b"],
    ["Bearer: sk-halo-aaaa"],
    ["Bearer,sk-halo-aaaa"],
    ["Bearer sk-halo-%41"],
    ["Bearer sk-halo-\u00e9"],
  ])("malformed %j → 400 invalid_request", async (authorization) => {
    const response = await call("/v2/v1/models", { headers: { authorization } });
    expect(response.headers.get("www-authenticate")).toBe(`${REALM}, error="invalid_request"`);
    await expectError(response, 400, "invalid_request");
  });

  it("two Authorization headers are malformed", async () => {
    const { token } = await seedToken();
    const headers = new Headers({ authorization: `Bearer ${token}` });
    headers.append("authorization", `Bearer ${token}`);
    await expectError(await call("/v2/v1/models", { headers }), 400, "invalid_request");
  });

  it("the scheme is case-insensitive (RFC 7235)", async () => {
    const { token } = await seedToken();
    for (const scheme of ["bearer", "BEARER", "BeArEr"]) {
      const response = await call("/v2/v1/models", { headers: { authorization: `${scheme} ${token}` } });
      expect(response.status, scheme).toBe(200);
    }
  });

  it("unknown, well-formed-foreign, revoked and expired tokens → 401 invalid_token, indistinguishable", async () => {
    const revoked = await seedToken({ revokedAt: Date.now() - 1000 });
    const expired = await seedToken({ expiresAt: Date.now() - 1000 });
    const bodies = [];
    for (const token of ["sk-halo-00000000000000000000000000000000", "sk-live-abc", revoked.token, expired.token]) {
      const response = await call("/v2/v1/models", { headers: bearer(token) });
      expect(response.headers.get("www-authenticate")).toBe(`${REALM}, error="invalid_token"`);
      bodies.push(await expectError(response, 401, "invalid_token"));
    }
    // The message never reveals which case it was (or whether the token exists).
    expect(new Set(bodies.map((body) => JSON.stringify(body))).size).toBe(1);
  });

  it("a v2 token on /sd/* → 403 insufficient_scope, and the upstream never sees it", async () => {
    const { token } = await seedToken({ scopes: ["v2"] });
    const m = marker();
    const response = await call("/sd/sdapi/v1/txt2img", { headers: bearer(token, { "x-request-id": m }) });
    expect(response.headers.get("www-authenticate")).toBe(`${REALM}, error="insufficient_scope", scope="sd"`);
    await expectError(response, 403, "insufficient_scope");
    expect(await recordedWith(m)).toHaveLength(0);
  });

  it("a token with several scopes works on each of them", async () => {
    const { token } = await seedToken({ scopes: ["v2", "sd", "lemon"] });
    for (const path of ["/v2/v1/models", "/sd/x", "/lemon/api/v1/models"]) {
      expect((await call(path, { headers: bearer(token) })).status, path).toBe(200);
    }
  });

  it("expiry is exact: valid at expires_at − 1 ms, refused at expires_at", async () => {
    const expiresAt = Date.now() + 3_600_000;
    const { token } = await seedToken({ expiresAt });
    const before = gatewayClient(undefined, { now: () => expiresAt - 1 });
    const at = gatewayClient(undefined, { now: () => expiresAt });
    expect((await before("/v2/v1/models", { headers: bearer(token) })).status).toBe(200);
    await expectError(await at("/v2/v1/models", { headers: bearer(token) }), 401, "invalid_token");
  });

  it("a revoked token is refused on the very next request, right after a successful one", async () => {
    const { token, handle } = await seedToken();
    expect((await call("/v2/v1/models", { headers: bearer(token) })).status).toBe(200);
    await revokeAsAdmin(handle);
    await expectError(await call("/v2/v1/models", { headers: bearer(token) }), 401, "invalid_token");
  });

  it("a token revoked in its user's object is refused even if the D1 write then failed", async () => {
    const { token, handle } = await seedToken();
    expect((await call("/v2/v1/models", { headers: bearer(token) })).status).toBe(200);
    await userQuotaStub(env.USER_QUOTA, handle).revoke(handle); // and no D1 update
    await expectError(await call("/v2/v1/models", { headers: bearer(token) }), 401, "invalid_token");
    // A token issued later (a new invite) is not covered by that revocation.
    const { token: later } = await seedToken({ handle });
    expect((await call("/v2/v1/models", { headers: bearer(later) })).status).toBe(200);
  });

  it("records last_used_at off the request path", async () => {
    const { token, tokenId } = await seedToken();
    expect((await call("/v2/v1/models", { headers: bearer(token) })).status).toBe(200);
    const row = await env.DB.prepare("SELECT last_used_at FROM tokens WHERE token_id = ?1").bind(tokenId).first<{ last_used_at: number | null }>();
    expect(row?.last_used_at).toBeGreaterThan(Date.now() - 10_000);
  });

  it("the studio route needs no token and gets no identity headers", async () => {
    const m = marker();
    const response = await call("/studio/index.html", { headers: { "x-request-id": m, "x-halo-user": "mallory" } });
    expect(response.status).toBe(200);
    const [seen] = await recordedWith(m);
    expect(seen?.target).toBe("/studio/index.html");
    expect(seen?.headers["x-halo-user"]).toBeUndefined();
  });

  it("an unknown route → 404 JSON, before any auth", async () => {
    await expectError(await call("/v3/models"), 404, "not_found");
    await expectError(await call("/V2/v1/models"), 404, "not_found");
    await expectError(await call("/"), 404, "not_found");
  });
});

describe("the default worker entry (wrangler.toml config)", () => {
  it("serves /healthz and /api/info without secrets or upstream addresses", async () => {
    const health = await SELF.fetch("http://gateway.test/healthz", { headers: viaEdge() });
    expect(health.status).toBe(200);
    expect(await health.json()).toEqual({ status: "ok" });
    const info = await SELF.fetch("http://gateway.test/api/info", { headers: viaEdge() });
    const text = await info.text();
    expect(info.status).toBe(200);
    expect(text).not.toMatch(/127\.0\.0\.1|upstream/);
    const body = JSON.parse(text) as { name: string; routes: Array<{ path: string; scope: string | null }> };
    expect(body.name).toBe("halo-gate");
    expect(body.routes.map((route) => route.path)).toEqual(["/v2/*", "/lemon/*", "/sd/*", "/audio/ws", "/studio/*"]);
  });

  it("denies an unknown path with JSON 404 and a compute path without a token with 401", async () => {
    expect((await SELF.fetch("http://gateway.test/nope", { headers: viaEdge() })).status).toBe(404);
    expect((await SELF.fetch("http://gateway.test/v2/v1/models", { headers: viaEdge() })).status).toBe(401);
  });
});
