import { env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { ConfigError, parseConfig } from "../../src/shared/config";

function problemsOf(raw: unknown): string[] {
  try {
    parseConfig(raw);
  } catch (error) {
    if (error instanceof ConfigError) return error.problems;
    throw error;
  }
  throw new Error("expected the configuration to be refused");
}

describe("configuration (zod, validated at start)", () => {
  it("the shipped wrangler.toml config is valid and gives the docs/contract.md §3 defaults", () => {
    const config = parseConfig(env.HALO_CONFIG);
    expect(config.max_users).toBe(10);
    expect(config.default_scopes).toEqual(["v2"]);
    expect(config.default_ttl_ms).toBe(10 * 86_400_000);
    expect(config.upstream_timeout_ms).toBe(60_000);
    expect(config.body_limit_bytes).toBe(32 * 1024 * 1024);
    expect(config.mesh.login_server).toBe("https://headscale.1bit.systems");
    expect(config.routes.map((route) => [route.path, route.scope, route.upstream])).toEqual([
      ["/v2", "v2", "http://127.0.0.1:8080"],
      ["/lemon", "lemon", "http://127.0.0.1:8000"],
      ["/sd", "sd", "http://127.0.0.1:7860"],
      ["/audio/ws", "audio", "ws://127.0.0.1:8090/ws"],
      ["/studio", null, "http://127.0.0.1:5173"],
    ]);
  });

  it("an empty config means the documented defaults", () => {
    expect(parseConfig({}).routes).toHaveLength(5);
  });

  it("a misspelled top-level key refuses to start, naming it", () => {
    expect(problemsOf({ max_user: 5 })).toEqual(["HALO_CONFIG.max_user: unknown key"]);
  });

  it("a misspelled route key is named with its route index", () => {
    const routes = [{ name: "v2", path: "/v2", upstrem: "http://127.0.0.1:1", auth: "bearer" }];
    expect(problemsOf({ routes })).toContain("HALO_CONFIG.routes[0].upstrem: unknown key");
  });

  it.each([
    [{ name: "v2", path: "v2", upstream: "http://127.0.0.1:1", auth: "bearer" }, "HALO_CONFIG.routes[0].path"],
    [{ name: "v2", path: "/v2", upstream: "ftp://127.0.0.1:1", auth: "bearer" }, "HALO_CONFIG.routes[0].upstream"],
    [{ name: "v2", path: "/v2", upstream: "http://u:p@127.0.0.1:1", auth: "bearer" }, "HALO_CONFIG.routes[0].upstream"],
    [{ name: "v2", path: "/v2", upstream: "http://127.0.0.1:1", auth: "maybe" }, "HALO_CONFIG.routes[0].auth"],
    [{ name: "x", path: "/healthz", upstream: "http://127.0.0.1:1", auth: "none" }, "HALO_CONFIG.routes[0].path"],
    [{ name: "x", path: "/admin/x", upstream: "http://127.0.0.1:1", auth: "bearer" }, "HALO_CONFIG.routes[0].path"],
    [{ name: "x", path: "/x", upstream: "http://127.0.0.1:1", auth: "none", metered: true }, "HALO_CONFIG.routes[0].metered"],
  ])("an invalid route %j is refused, naming %s", (route, key) => {
    const problems = problemsOf({ routes: [route], default_scopes: ["x"] });
    expect(problems.some((problem) => problem.startsWith(`${key}:`)), problems.join("\n")).toBe(true);
  });

  it("duplicate routes and default scopes naming no route are refused", () => {
    const route = { name: "v2", path: "/v2", upstream: "http://127.0.0.1:1", auth: "bearer" };
    expect(problemsOf({ routes: [route, route] })).toContain("HALO_CONFIG.routes[1].path: duplicates routes[0]");
    expect(problemsOf({ routes: [route], default_scopes: ["sd"] })).toContain('HALO_CONFIG.default_scopes[0]: "sd" names no route');
  });

  describe("a Host-matched route may not be weaker than the generic route it stands in for (any client chooses its Host)", () => {
    const upstream = "http://127.0.0.1:1";
    const v2 = { name: "v2", path: "/v2", upstream, strip_prefix: true, auth: "bearer", metered: true };
    const hosted = (route: Record<string, unknown>) => ({ name: "v2", path: "/v2", host: "studio.mesh", upstream, strip_prefix: true, auth: "bearer", metered: true, ...route });

    it.each([
      ["auth none in front of a bearer /v2", { auth: "none", metered: false }, 'auth = "none" where it has auth = "bearer"'],
      ["a ticket route in front of a bearer /v2", { auth: "bearer_or_ticket" }, 'auth = "bearer_or_ticket" where it has auth = "bearer"'],
      ["another scope", { name: "cheap" }, 'scope "cheap" where it needs scope "v2"'],
      ["an explicit weaker scope", { scope: "sd" }, 'scope "sd" where it needs scope "v2"'],
      ["an unmetered twin", { metered: false }, "not metered where it is metered"],
      ["a sub-path of /v2", { path: "/v2/v1", auth: "none", metered: false }, 'auth = "none"'],
      ["an exact path under /v2", { path: "/v2/v1/chat/completions", match: "exact", auth: "none", metered: false }, 'auth = "none"'],
    ])("refuses %s, naming the route", (_what, route, why) => {
      const problems = problemsOf({ routes: [v2, hosted(route), { name: "sd", path: "/sd", upstream, auth: "bearer" }] });
      expect(problems).toHaveLength(1);
      expect(problems[0]).toMatch(/^HALO_CONFIG\.routes\[1\]: route "\w+" \(host studio\.mesh, path \/v2[^)]*\) is weaker than routes\[0\] "v2" \(path \/v2\)/);
      expect(problems[0]).toContain(why);
      expect(problems[0]).toContain("Any client can send Host: studio.mesh");
    });

    it("refuses it whatever the order of the routes", () => {
      expect(problemsOf({ routes: [hosted({ auth: "none", metered: false }), v2] })[0]).toMatch(/^HALO_CONFIG\.routes\[0\]: .* routes\[1\] "v2"/);
    });

    it.each([
      ["the same auth, scope and metering (another upstream)", [hosted({ upstream: "http://127.0.0.1:2" })]],
      ["a stricter twin (bearer in front of a ticket route)", [{ name: "audio", path: "/audio/ws", match: "exact", upstream: "ws://127.0.0.1:1/ws", auth: "bearer_or_ticket" }, { name: "audio", path: "/audio/ws", match: "exact", host: "box.mesh", upstream: "ws://127.0.0.1:2/ws", auth: "bearer" }]],
      ["a metered twin of an unmetered route", [{ name: "sd", path: "/sd", upstream, auth: "bearer" }, { name: "sd", path: "/sd", host: "box.mesh", upstream, auth: "bearer", metered: true }]],
      ["a Host route on a path no generic route serves", [{ name: "studio", path: "/studio", host: "studio.mesh", upstream, auth: "none" }]],
      ["an open Host route above a longer generic route, which keeps its own paths", [{ name: "tools", path: "/tools/admin", upstream, auth: "bearer" }, { name: "tools", path: "/tools", host: "x.mesh", upstream, auth: "none" }]],
      ["a twin of an auth-none route", [{ name: "studio", path: "/studio", upstream, auth: "none" }, { name: "studio", path: "/studio", host: "x.mesh", upstream: "http://127.0.0.1:2", auth: "none" }]],
    ])("accepts %s", (_what, routes) => {
      expect(() => parseConfig({ routes: [v2, ...routes] })).not.toThrow();
    });

    it("compares a Host route with the generic route that would serve its paths, not a shorter one it does not take", () => {
      const routes = [
        v2,
        { name: "tools", path: "/v2/tools", upstream, auth: "bearer" },
        { name: "tools", path: "/v2/tools", host: "studio.mesh", upstream, auth: "bearer" },
      ];
      expect(() => parseConfig({ routes })).not.toThrow();
    });
  });

  it.each([
    [{ timezone: "Mars/Olympus" }, "HALO_CONFIG.timezone"],
    [{ upstream_timeout: "soon" }, "HALO_CONFIG.upstream_timeout"],
    [{ default_ttl: "10 days" }, "HALO_CONFIG.default_ttl"],
    [{ limits: { rps: 0, streams: 1, daily_tokens: 1 } }, "HALO_CONFIG.limits.rps"],
    [{ client_address_source: "x-forwarded-for" }, "HALO_CONFIG.client_address_source"],
    [{ mesh: { login_server: "https://h.example", extra: 1 } }, "HALO_CONFIG.mesh.extra"],
  ])("%j is refused, naming %s", (raw, key) => {
    const problems = problemsOf(raw);
    expect(problems.some((problem) => problem.startsWith(key)), problems.join("\n")).toBe(true);
  });

  it.each([
    [{ default_ttl: "366d" }, "HALO_CONFIG.default_ttl: default_ttl must be at most 365d"],
    [{ upstream_timeout: "999999999d" }, "HALO_CONFIG.upstream_timeout: upstream_timeout must be at most 24h"],
    [{ quota_lease: "25h" }, "HALO_CONFIG.quota_lease: quota_lease must be at most 24h"],
  ])("an overlong duration %j is refused, naming the maximum", (raw, problem) => {
    expect(problemsOf(raw)).toEqual([problem]);
  });

  it.each(["https://box.tail1234.ts.net", "https://box.tail1234.ts.net:8443/", "http://100.64.0.1:8443", "https://[fd7a:115c:a1e0::1]:8443"])(
    "public_url %s is accepted as written",
    (url) => {
      expect(parseConfig({ public_url: url }).public_url).toBe(url);
    },
  );

  it("public_url is optional", () => {
    expect(parseConfig({}).public_url).toBeUndefined();
  });

  it.each([
    ["box.example", "absolute"],
    ["/v2", "absolute"],
    ["ftp://box.example", "http or https"],
    ["wss://box.example", "http or https"],
    ["https://user:pass@box.example", "credentials"],
    ["https://user@box.example", "credentials"],
    ["https://box.example/v2", "no path"],
    ["https://box.example/x/..", "no path"],
    ["https://box.example/.", "no path"],
    ["https://box.example//", "no path"],
    ["https://box.example/?x=1", "query"],
    ["https://box.example?", "query"],
    ["https://box.example#top", "fragment"],
  ])("public_url %s is refused, naming the key (%s)", (url, why) => {
    const problems = problemsOf({ public_url: url });
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(/^HALO_CONFIG\.public_url: public_url /);
    expect(problems[0]).toContain(why);
  });
});
