/**
 * The core answers only what came through serve's edge (issue 7): with EDGE_SECRET bound and the
 * client address taken from the edge, a request without the exact per-boot secret gets 403 before
 * anything else runs; without EDGE_SECRET (wrangler dev) nothing changes.
 */
import { createExecutionContext, env, SELF, waitOnExecutionContext } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { createGateway } from "../../src/gateway";
import { bearer, gatewayClient, marker, recordedWith, seedToken, testConfig, viaEdge } from "./helpers";

interface ErrorBody {
  error: { message: string; type: string; code: string };
}

async function expectEdgeRequired(response: Response) {
  expect(response.status).toBe(403);
  expect(response.headers.get("content-type")).toMatch(/^application\/json/);
  const body = (await response.json()) as ErrorBody;
  expect(body.error).toMatchObject({ type: "permission_error", code: "edge_required" });
  expect(body.error.message).toContain("through the gateway's listener");
}

describe("the edge secret", () => {
  const bare = gatewayClient(testConfig(), {}, { edge: false });

  it.each(["/healthz", "/api/info", "/_halo/connect", "/nope", "/v2/v1/models"])("no secret → 403 edge_required on %s", async (path) => {
    await expectEdgeRequired(await bare(path));
  });

  it("a compute request with a valid token but no secret is refused before the token is looked at; the upstream is untouched", async () => {
    const { token } = await seedToken();
    const m = marker();
    await expectEdgeRequired(await bare("/v2/v1/models", { headers: bearer(token, { "x-request-id": m, "x-halo-client-addr": "100.64.0.9" }) }));
    expect(await recordedWith(m)).toHaveLength(0);
  });

  it.each([
    ["a wrong secret", "guess"],
    ["an empty secret", ""],
    ["the secret with one character more", "test-edge-secretx"],
    ["a prefix of the secret", "test-edge-secre"],
  ])("%s → 403", async (_what, secret) => {
    const { token } = await seedToken();
    const m = marker();
    for (const path of ["/healthz", "/api/info", "/v2/v1/models"]) {
      await expectEdgeRequired(await bare(path, { headers: bearer(token, { "x-request-id": m, "x-halo-edge-secret": secret }) }));
    }
    expect(await recordedWith(m)).toHaveLength(0);
  });

  it("is checked before anything else: an odd method or a hostile path without it is still 403", async () => {
    await expectEdgeRequired(await bare("/v2/v1/models", { method: "PROPFIND" }));
    await expectEdgeRequired(await bare("/v2%2fv1/models"));
  });

  it("the real worker entry refuses too", async () => {
    await expectEdgeRequired(await SELF.fetch("http://gateway.test/healthz"));
    expect((await SELF.fetch("http://gateway.test/healthz", { headers: viaEdge() })).status).toBe(200);
  });

  it("with the secret, the request goes through and neither the secret nor the edge's headers reach the upstream", async () => {
    const { token } = await seedToken();
    const m = marker();
    const response = await gatewayClient()("/v2/v1/models", {
      headers: bearer(token, { "x-request-id": m, "x-halo-client-addr": "100.64.1.8", "x-halo-tls-fingerprint": "sha256:ab" }),
    });
    expect(response.status).toBe(200);
    const [seen] = await recordedWith(m);
    expect(JSON.stringify(seen?.headers)).not.toContain("test-edge-secret");
    expect(seen?.headers["x-halo-edge-secret"]).toBeUndefined();
    expect(seen?.headers["x-halo-tls-fingerprint"]).toBeUndefined();
    expect(seen?.headers["x-forwarded-for"]).toBe("100.64.1.8");
  });

  it("without EDGE_SECRET bound (wrangler dev) nothing is refused and the client is unknown", async () => {
    const { token } = await seedToken();
    const app = createGateway(testConfig(), { auditFlushMs: 20 });
    const noEdge = { ...env, EDGE_SECRET: undefined };
    const m = marker();
    for (const [path, headers] of [
      ["/healthz", {}],
      ["/api/info", {}],
      ["/v2/v1/models", bearer(token, { "x-request-id": m, "x-halo-client-addr": "6.6.6.6", "x-halo-edge-secret": "guess" })],
    ] as const) {
      const ctx = createExecutionContext();
      const response = await app.fetch(new Request(`http://gateway.test${path}`, { headers }), noEdge, ctx);
      expect(response.status, path).toBe(200);
      await response.arrayBuffer();
      await waitOnExecutionContext(ctx);
    }
    const [seen] = await recordedWith(m);
    expect(seen?.headers["x-forwarded-for"]).toBe("unknown");
    expect(JSON.stringify(seen?.headers)).not.toMatch(/6\.6\.6\.6|guess/);
  });

  it("is not required when the client address comes from cf-connecting-ip (Cloudflare)", async () => {
    const cloudflare = gatewayClient(testConfig({ client_address_source: "cf-connecting-ip", mesh: { identity: "off" } }), {}, { edge: false });
    expect((await cloudflare("/healthz")).status).toBe(200);
  });
});

describe("/api/info", () => {
  it("reports the TLS fingerprint the edge sends, and only what the edge sends", async () => {
    const info = async (headers: Record<string, string>, client = gatewayClient()) => (await (await client("/api/info", { headers })).json()) as Record<string, unknown>;
    expect(await info({ "x-halo-tls-fingerprint": "sha256:0123abcd" })).toMatchObject({ tls: { fingerprint: "sha256:0123abcd" } });
    expect(await info({})).not.toHaveProperty("tls");
    // Without an edge, a client-sent fingerprint is nobody's word.
    const noEdge = gatewayClient(testConfig(), {}, { env: { EDGE_SECRET: undefined } });
    expect(await info({ "x-halo-tls-fingerprint": "sha256:forged" }, noEdge)).not.toHaveProperty("tls");
  });

  it("reports public_url when configured, and omits it otherwise", async () => {
    const withUrl = gatewayClient(testConfig({ public_url: "https://box.tail1234.ts.net:8443" }));
    expect(((await (await withUrl("/api/info")).json()) as { public_url?: string }).public_url).toBe("https://box.tail1234.ts.net:8443");
    expect(await (await gatewayClient()("/api/info")).json()).not.toHaveProperty("public_url");
  });
});
