/**
 * Hostile requests from the CVE families behind real proxy bypasses. Every rejection variant must
 * get a 4xx *and* leave the upstream untouched. The token used has every scope, so a variant that
 * slipped through would reach the upstream and fail the test.
 *
 * Variants the WHATWG URL parser rewrites before a Request object exists (`..`, `%2e%2e`, `\`) are
 * sent as raw bytes through `halo-gate serve` in test/e2e, and checked against the normaliser in
 * test/worker/path.test.ts.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { gatewayClient, marker, recordedWith, seedToken, testConfig } from "./helpers";

let token = "";
beforeAll(async () => {
  ({ token } = await seedToken({ scopes: ["v2", "lemon", "sd"] }));
});

const call = gatewayClient();

const PATH_VARIANTS: Array<[family: string, path: string]> = [
  ["encoded slash", "/v2%2fv1/models"],
  ["encoded slash", "/v2/v1%2Fmodels"],
  ["encoded slash into another route", "/v2/..%2fsd/x"],
  ["encoded slash into another route", "/studio/..%2f..%2fv2/v1/models"],
  ["encoded backslash", "/v2/%5c../sd"],
  ["encoded backslash", "/v2/v1%5Cmodels"],
  ["double encoding", "/v2/%252e%252e/sd/x"],
  ["double encoding", "/v2/%252fsd"],
  ["double encoding", "/v2/%25"],
  ["double encoding", "/v2/%255c"],
  ["empty segment", "/v2//v1/models"],
  ["empty segment", "/v2/v1//models"],
  ["empty segment", "//v2/v1/models"],
  ["NUL", "/v2/v1/models%00"],
  ["NUL", "/v2/%00/x"],
  ["NUL", "/v2%00/v1"],
  ["control character", "/v2/%0a/x"],
  ["control character", "/v2/%0d%0aX-Injected:1"],
  ["control character", "/v2/%09x"],
  ["control character", "/v2/%7f"],
  ["control character", "/v2/%1b"],
  ["overlong UTF-8", "/v2/%c0%ae%c0%ae/sd"],
  ["overlong UTF-8", "/v2/%c0%af"],
  ["overlong UTF-8", "/v2/%e0%80%ae"],
  ["overlong UTF-8", "/v2/%f0%80%80%af"],
  ["invalid UTF-8", "/v2/%ff"],
  ["invalid UTF-8", "/v2/%c3"],
  ["invalid UTF-8", "/v2/%ed%a0%80"],
  ["bad escape", "/v2/%"],
  ["bad escape", "/v2/%zz"],
  ["bad escape", "/v2/%2"],
  ["bad escape", "/v2/%u002e%u002e"],
  ["dot segment with parameters (Tomcat ..;)", "/v2/..;/sd/x"],
  ["dot segment with parameters", "/v2/.;/x"],
  ["dot segment with parameters", "/studio/..;/v2/v1/models"],
  ["case-variant prefix", "/V2/v1/models"],
  ["case-variant prefix", "/Sd/x"],
  ["case-variant prefix", "/LEMON/x"],
  ["prefix without separator", "/v2.evil/x"],
  ["prefix without separator", "/v2;x/v1/models"],
  ["prefix without separator", "/v2-admin"],
  ["fullwidth letters", "/\uff56\uff12/v1/models"],
  ["gateway-owned path", "/admin/users"],
  ["gateway-owned path", "/metrics"],
  ["gateway-owned path", "/healthz/v2"],
  ["encoded slash from the public route into an authenticated one", "/studio/%2e%2e%2fv2/v1/models"],
];

describe.each(PATH_VARIANTS)("path family %s", (family, path) => {
  it(`${path} → 4xx, upstream untouched`, async () => {
    const m = marker();
    const response = await call(path, { headers: { authorization: `Bearer ${token}`, "x-request-id": m } });
    expect(response.status, `${family}: ${path}`).toBeGreaterThanOrEqual(400);
    expect(response.status).toBeLessThan(500);
    expect(response.headers.get("content-type")).toMatch(/^application\/json/);
    expect(await recordedWith(m)).toHaveLength(0);
  });
});

// Methods workerd can represent in a Request; TRACE, CONNECT and unknown tokens are sent raw in test/e2e.
const METHOD_VARIANTS = ["PROPFIND", "PROPPATCH", "MKCOL", "LOCK", "UNLOCK", "COPY", "MOVE", "SEARCH", "PURGE", "REPORT"];

describe.each(METHOD_VARIANTS)("odd method %s", (method) => {
  it("→ 405, upstream untouched", async () => {
    const m = marker();
    const response = await call("/v2/v1/models", { method, headers: { authorization: `Bearer ${token}`, "x-request-id": m } });
    expect(response.status).toBe(405);
    expect(response.headers.get("allow")).toContain("GET");
    expect(await recordedWith(m)).toHaveLength(0);
  });
});

const HEADER_VARIANTS: Array<[family: string, headers: () => HeadersInit]> = [
  ["two bearer credentials in one header", () => ({ authorization: `Bearer ${token}, Bearer ${token}` })],
  ["trailing garbage after the token", () => ({ authorization: `Bearer ${token} x` })],
  ["token in the query instead of the header", () => ({})],
  ["colon after the scheme", () => ({ authorization: `Bearer:${token}` })],
  ["non-ASCII in the credential", () => ({ authorization: `Bearer ${token}\u00a0` })],
  ["token with a wrong prefix", () => ({ authorization: `Bearer ${token.replace("sk-halo-", "sk-hal0-")}` })],
  ["token with upper-case hex", () => ({ authorization: `Bearer ${token.toUpperCase().replace("SK-HALO-", "sk-halo-")}` })],
  ["token one character short", () => ({ authorization: `Bearer ${token.slice(0, -1)}` })],
  ["identity header without a token", () => ({ "x-halo-user": "alice" })],
  ["spoofed client address without a token", () => ({ "x-forwarded-for": "127.0.0.1", "cf-connecting-ip": "127.0.0.1" })],
];

describe.each(HEADER_VARIANTS)("header family %s", (_family, headers) => {
  it("→ 4xx, upstream untouched", async () => {
    const m = marker();
    const all = new Headers(headers());
    all.set("x-request-id", m);
    const response = await call(`/v2/v1/models?access_token=${token}`, { headers: all });
    expect(response.status).toBeGreaterThanOrEqual(400);
    expect(response.status).toBeLessThan(500);
    expect(await recordedWith(m)).toHaveLength(0);
  });
});

describe("identity and address headers a client sends never reach the upstream", () => {
  const SPOOFS: Record<string, string> = {
    "x-halo-user": "root",
    "X-HALO-USER": "root",
    x_halo_user: "root",
    "X_Halo_Token_Id": "tok_forged",
    "x-halo-token-id": "tok_forged",
    "x-halo-client-addr": "6.6.6.6",
    "x-forwarded-for": "6.6.6.6",
    x_forwarded_for: "6.6.6.6",
    "cf-connecting-ip": "6.6.6.6",
    "true-client-ip": "6.6.6.6",
    "x-real-ip": "6.6.6.6",
    forwarded: "for=6.6.6.6",
    "mf-cf-blob": '{"clientIp":"6.6.6.6"}',
    "proxy-authorization": "Basic Zm9vOmJhcg==",
  };

  // Behind serve's edge, `x-halo-client-addr` is the edge's own word (it drops a client's first);
  // without an edge (wrangler dev) every one of them is the client's and must be dropped by the core.
  const noEdge = gatewayClient(testConfig(), {}, { env: { EDGE_SECRET: undefined } });
  const CASES: Array<[mode: string, name: string, value: string, through: typeof call]> = [
    ...Object.entries(SPOOFS).map(([name, value]): [string, string, string, typeof call] => ["without an edge", name, value, noEdge]),
    ...Object.entries(SPOOFS)
      .filter(([name]) => name !== "x-halo-client-addr")
      .map(([name, value]): [string, string, string, typeof call] => ["behind the edge", name, value, call]),
  ];

  it.each(CASES)("%s: %s is stripped and the gateway's own headers stand", async (_mode, name, value, through) => {
    const { token: own, handle, tokenId } = await seedToken();
    const m = marker();
    const headers = new Headers({ authorization: `Bearer ${own}`, "x-request-id": m });
    headers.set(name, value);
    const response = await through("/v2/v1/models", { headers });
    expect(response.status).toBe(200);
    const [seen] = await recordedWith(m);
    const received = JSON.stringify(seen?.headers);
    expect(received).not.toContain("6.6.6.6");
    expect(received).not.toContain("root");
    expect(received).not.toContain("tok_forged");
    expect(received).not.toContain(own);
    expect(seen?.headers["x-halo-user"]).toBe(handle);
    expect(seen?.headers["x-halo-token-id"]).toBe(tokenId);
    expect(seen?.headers["x-forwarded-for"]).toBe("unknown");
    expect(Object.keys(seen?.headers ?? {}).filter((key) => /^x[-_]halo[-_]/i.test(key)).sort()).toEqual(["x-halo-token-id", "x-halo-user"]);
  });

  it("naming the gateway's headers in Connection cannot strip them (CVE-2024-45410)", async () => {
    const { token: own, handle, tokenId } = await seedToken();
    const m = marker();
    const response = await call("/v2/v1/models", {
      headers: {
        authorization: `Bearer ${own}`,
        "x-request-id": m,
        connection: "close, X-Halo-User, x-halo-token-id, X-Forwarded-For, x-test-hop",
        "x-test-hop": "dropped",
      },
    });
    expect(response.status).toBe(200);
    const [seen] = await recordedWith(m);
    expect(seen?.headers["x-halo-user"]).toBe(handle);
    expect(seen?.headers["x-halo-token-id"]).toBe(tokenId);
    expect(seen?.headers["x-forwarded-for"]).toBe("unknown");
    expect(seen?.headers["x-test-hop"]).toBeUndefined();
  });
});
