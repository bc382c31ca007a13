/**
 * Header hygiene as an allowlist (issue 9, item 8): no client-sent identity or address header of any
 * single-sign-on convention reaches an upstream, on a bearer route or on the unauthenticated studio,
 * under any case or `_` spelling; what an OpenAI client sends still arrives; the gateway's own
 * `x-halo-user`, `x-halo-token-id` and `x-forwarded-for` come from the gateway alone.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { FORWARDED_REQUEST_HEADERS, FORWARDED_REQUEST_PREFIXES, isForwardableName, upstreamRequestHeaders } from "../../src/shared/header-allowlist";
import { bearer, gatewayClient, marker, recordedWith, seedToken } from "./helpers";

const CLIENT = "100.64.1.7";
const EDGE = { "x-halo-edge-secret": "test-edge-secret", "x-halo-client-addr": CLIENT };

/** Identity, group, credential and address headers of the common conventions, as their owners spell them. */
const IDENTITY_HEADERS = [
  // the gateway's own, and the runtime's (miniflare, Cloudflare)
  "X-Halo-User", "X-Halo-Token-Id", "X-Halo-Client-Addr", "X-Halo-Anything", "MF-CF-Blob", "MF-Original-URL", "CF-Connecting-IP", "CF-IPCountry", "CF-Ray",
  // credentials
  "Authorization", "Proxy-Authorization", "X-Api-Key", "Api-Key", "X-Access-Token", "X-Id-Token",
  // addresses and the original request
  "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Port", "X-Forwarded-Prefix", "X-Forwarded-Server", "X-Forwarded-Client-Cert",
  "Forwarded", "X-Real-IP", "True-Client-IP", "X-Client-IP", "Client-IP", "X-Cluster-Client-IP", "Fastly-Client-IP", "X-Originating-IP", "X-Remote-IP", "X-Remote-Addr",
  "X-Original-Forwarded-For", "X-Original-URL", "X-Original-URI", "X-Original-Host", "X-Rewrite-URL", "X-HTTP-Method-Override", "Via",
  // oauth2-proxy, nginx auth_request, Jenkins, JupyterHub
  "X-Forwarded-User", "X-Forwarded-Email", "X-Forwarded-Groups", "X-Forwarded-Preferred-Username", "X-Forwarded-Access-Token",
  "X-Auth-Request-User", "X-Auth-Request-Email", "X-Auth-Request-Groups", "X-Auth-Request-Preferred-Username", "X-Auth-Request-Access-Token",
  // Authelia, Caddy forward_auth, Apache, Kubernetes front proxies
  "Remote-User", "Remote-Groups", "Remote-Email", "Remote-Name", "X-Remote-User", "X-Remote-Group", "X-Remote-Extra-Scopes",
  // generic and app-configured trusted headers (Grafana, Gitea, Open WebUI, ComfyUI, Kong, Keycloak Gatekeeper)
  "X-User", "X-User-Id", "X-User-Email", "X-User-Name", "X-Email", "X-Username", "X-WEBAUTH-USER", "X-WEBAUTH-EMAIL", "X-WEBAUTH-GROUPS", "comfy-user",
  "X-Consumer-Username", "X-Consumer-Id", "X-Authenticated-Userid", "X-Auth-Username", "X-Auth-Email", "X-Auth-Roles", "X-Proxy-User",
  // cloud identity-aware proxies
  "X-MS-CLIENT-PRINCIPAL", "X-MS-CLIENT-PRINCIPAL-NAME", "X-MS-CLIENT-PRINCIPAL-ID", "X-MS-CLIENT-PRINCIPAL-IDP", "X-MS-TOKEN-AAD-ID-TOKEN",
  "X-Goog-Authenticated-User-Email", "X-Goog-Authenticated-User-Id", "X-Goog-IAP-JWT-Assertion",
  "X-Amzn-OIDC-Identity", "X-Amzn-OIDC-Data", "X-Amzn-OIDC-Accesstoken",
  "Cf-Access-Authenticated-User-Email", "Cf-Access-Jwt-Assertion",
  // Tailscale serve's identity headers
  "Tailscale-User-Login", "Tailscale-User-Name", "Tailscale-User-Profile-Pic", "Tailscale-App-Capabilities", "Tailscale-Headers-Info",
  // authentik, Pomerium, Vouch, mod_auth_openidc, client certificates, trace baggage
  "X-authentik-username", "X-authentik-email", "X-authentik-groups", "X-authentik-jwt", "X-Pomerium-Jwt-Assertion", "X-Pomerium-Claim-Email",
  "X-Vouch-User", "X-Vouch-Idp-Claims-Email", "OIDC-Claim-Email", "OIDC-Access-Token", "X-SSL-Client-Cert", "X-SSL-Client-S-DN", "Baggage",
];

/** Each spelling a client could try: as documented, lower, upper, and with `_` (CGI-style upstreams fold it to `-`). */
const SPELLINGS: Array<[string, (name: string) => string]> = [
  ["as documented", (name) => name],
  ["lower case", (name) => name.toLowerCase()],
  ["upper case", (name) => name.toUpperCase()],
  ["underscores", (name) => name.replace(/-/g, "_")],
  ["Underscores, mixed case", (name) => name.replace(/-/g, "_").replace(/^./, (first) => first.toLowerCase())],
];

/** Headers an upstream may see although no client sent them: the runtime's own and the gateway's. */
const NOT_FROM_THE_CLIENT = new Set(["host", "cf-worker", "connection", "content-length", "accept-encoding", "x-halo-user", "x-halo-token-id", "x-forwarded-for"]);

const spoofed = (index: number) => `spoof-${index}-${"6.6.6.6"}`;

describe("identity and address headers never reach an upstream", () => {
  const call = gatewayClient();
  const ROUTES: Array<[string, string, boolean]> = [
    ["a bearer route", "/v2/v1/models", true],
    ['the auth = "none" route', "/studio/index.html", false],
  ];
  const CASES = ROUTES.flatMap(([routeName, path, authenticated]) => SPELLINGS.map(([spelling, spell]) => [routeName, spelling, path, authenticated, spell] as const));

  it.each(CASES)("on %s, spelled %s", async (_route, _spelling, path, authenticated, spell) => {
    const { token, handle, tokenId } = await seedToken();
    const m = marker();
    const headers = new Headers();
    IDENTITY_HEADERS.forEach((name, index) => headers.set(spell(name), spoofed(index)));
    // As serve's edge sends it: its own secret and the TCP peer replace whatever the client sent there.
    for (const [name, value] of Object.entries(EDGE)) headers.set(name, value);
    headers.set("x-request-id", m);
    // On the bearer route the client's own token must authenticate it (and must not travel on either).
    if (authenticated) headers.set("authorization", `Bearer ${token}`);
    const response = await call(path, { headers });
    expect(response.status).toBe(200);
    const [seen] = await recordedWith(m);
    expect(seen, "the request reached the upstream").toBeDefined();
    const received = seen!.headers;
    expect(JSON.stringify(received)).not.toMatch(/spoof-|6\.6\.6\.6/);
    expect(JSON.stringify(received)).not.toContain(token);
    // Nothing reached the upstream that the client sent outside the allowlist.
    const unexpected = Object.keys(received).filter((name) => !NOT_FROM_THE_CLIENT.has(name) && !isForwardableName(name));
    expect(unexpected).toEqual([]);
    expect(received["x-forwarded-for"]).toBe(CLIENT);
    if (authenticated) {
      expect(received["x-halo-user"]).toBe(handle);
      expect(received["x-halo-token-id"]).toBe(tokenId);
    } else {
      expect(received["x-halo-user"]).toBeUndefined();
      expect(received["x-halo-token-id"]).toBeUndefined();
    }
    expect(Object.keys(received).filter((name) => /^x[-_]halo[-_]/i.test(name)).sort()).toEqual(authenticated ? ["x-halo-token-id", "x-halo-user"] : []);
  });

  it("the rule itself: no listed identity header, under any spelling, is forwardable", () => {
    for (const name of IDENTITY_HEADERS) {
      for (const [, spell] of SPELLINGS) {
        const outgoing = upstreamRequestHeaders(new Headers({ [spell(name)]: "spoof" }), null, CLIENT, false);
        expect([...outgoing.keys()], `${spell(name)}`).toEqual(["x-forwarded-for"]);
        expect(outgoing.get("x-forwarded-for")).toBe(CLIENT);
      }
    }
  });

  it("any header name off the allowlist is dropped, whatever it is called (property)", () => {
    const tchar = fc.constantFrom(..."abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~".split(""));
    const name = fc.array(tchar, { minLength: 1, maxLength: 40 }).map((chars) => chars.join(""));
    fc.assert(
      fc.property(name, (raw) => {
        const outgoing = upstreamRequestHeaders(new Headers({ [raw]: "v" }), { handle: "h", tokenId: "tok_x" }, CLIENT, false);
        const passed = [...outgoing.keys()].filter((key) => !["x-halo-user", "x-halo-token-id", "x-forwarded-for"].includes(key));
        const allowed = !raw.includes("_") && isForwardableName(raw.toLowerCase()) && !["x-halo-user", "x-halo-token-id", "x-forwarded-for"].includes(raw.toLowerCase());
        expect(passed).toEqual(allowed ? [raw.toLowerCase()] : []);
        expect(outgoing.get("x-halo-user")).toBe("h");
        expect(outgoing.get("x-forwarded-for")).toBe(CLIENT);
      }),
      { numRuns: 2_000 },
    );
  });

  it("the allowlist names no identity, address or credential header", () => {
    const suspicious = /user(?!-agent)|email|group|role|principal|claim|assert|jwt|oidc|auth|remote|forward|real-ip|client-ip|ip$|addr|original|halo|^cf-|^mf-|tailscale|(?<!csrf-|xsrf-)token|api-key|login/;
    expect([...FORWARDED_REQUEST_HEADERS].filter((name) => suspicious.test(name))).toEqual([]);
    // The prefixes: vendor SDK namespaces and the browser's own `sec-` headers (a page cannot set those).
    expect([...FORWARDED_REQUEST_PREFIXES].sort()).toEqual(["anthropic-", "openai-", "sec-fetch-", "sec-websocket-", "x-stainless-"]);
  });
});

describe("what clients need still arrives", () => {
  const call = gatewayClient();

  it("an OpenAI SDK request keeps its headers, values unchanged", async () => {
    const { token } = await seedToken();
    const m = marker();
    // What openai-node 5 sends on a chat completion (and the Python SDK's equivalents).
    const sdk = {
      "content-type": "application/json",
      accept: "application/json",
      "user-agent": "OpenAI/JS 5.10.1",
      "x-stainless-lang": "js",
      "x-stainless-package-version": "5.10.1",
      "x-stainless-os": "Linux",
      "x-stainless-arch": "x64",
      "x-stainless-runtime": "node",
      "x-stainless-runtime-version": "v22.3.0",
      "x-stainless-retry-count": "0",
      "x-stainless-timeout": "600",
      "openai-organization": "org-halo",
      "openai-project": "proj_halo",
      "openai-beta": "assistants=v2",
      "idempotency-key": "stainless-node-retry-1",
      "anthropic-version": "2023-06-01",
      traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    };
    const response = await call("/v2/v1/echo", { method: "POST", headers: bearer(token, { ...sdk, ...EDGE, "x-request-id": m }), body: JSON.stringify({ model: "m" }) });
    expect(response.status).toBe(200);
    const [seen] = await recordedWith(m);
    for (const [name, value] of Object.entries(sdk)) expect(seen?.headers[name], name).toBe(value);
    expect(seen?.bodyBytes).toBe(JSON.stringify({ model: "m" }).length);
  });

  it("a browser on the studio keeps its session cookie, origin, conditional and range headers", async () => {
    const m = marker();
    const browser = {
      accept: "text/html,application/xhtml+xml",
      "accept-language": "de-DE,de;q=0.9",
      "cache-control": "max-age=0",
      cookie: "studio_session=abc; theme=dark",
      origin: "https://strixhalo.local:8443",
      referer: "https://strixhalo.local:8443/studio/",
      "if-none-match": '"v1"',
      "if-modified-since": "Tue, 01 Sep 2026 00:00:00 GMT",
      range: "bytes=0-99",
      "sec-fetch-site": "same-origin",
      "sec-fetch-mode": "cors",
      "sec-fetch-dest": "empty",
      "x-requested-with": "XMLHttpRequest",
      "x-csrf-token": "csrf-1",
    };
    const response = await call("/studio/app.js", { headers: { ...browser, ...EDGE, "x-request-id": m } });
    expect(response.status).toBe(200);
    const [seen] = await recordedWith(m);
    for (const [name, value] of Object.entries(browser)) expect(seen?.headers[name], name).toBe(value);
    expect(seen?.headers["x-halo-user"]).toBeUndefined();
  });

  it("an allowlisted header spelled with `_`, or named in Connection, is dropped", async () => {
    const { token } = await seedToken();
    const m = marker();
    const response = await call("/v2/v1/models", {
      headers: bearer(token, { ...EDGE, "x-request-id": m, user_agent: "second spelling", connection: "keep-alive, openai-beta", "openai-beta": "hop", "openai-project": "kept" }),
    });
    expect(response.status).toBe(200);
    const [seen] = await recordedWith(m);
    expect(JSON.stringify(seen?.headers)).not.toContain("second spelling");
    expect(seen?.headers["user_agent"]).toBeUndefined();
    expect(seen?.headers["openai-beta"]).toBeUndefined();
    expect(seen?.headers["openai-project"]).toBe("kept");
  });
});
