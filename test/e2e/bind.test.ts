/** docs/contract.md §1 bind rules and start-up refusals, through the real `serve` and the rule function itself. */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { checkBindAllowed, parseBindAddress, type InterfaceMap } from "../../cli/serve/bind";
import { fakeTailscale } from "./fakes";
import { cli, startServe, tempDir, testWranglerConfig } from "./harness";

const iface = (address: string, family: "IPv4" | "IPv6" = "IPv4") => ({
  address,
  family,
  netmask: family === "IPv4" ? "255.192.0.0" : "ffff:ffff:ffff::",
  mac: "00:00:00:00:00:00",
  internal: false,
  cidr: null,
  ...(family === "IPv6" ? { scopeid: 0 } : {}),
});

describe("bind rules (the function serve applies before anything listens)", () => {
  const interfaces = {
    lo: [iface("127.0.0.1")],
    tailscale0: [iface("100.101.2.3"), iface("fd7a:115c:a1e0::5", "IPv6")],
    eth0: [iface("192.168.1.10"), iface("100.64.9.9")],
  } as unknown as InterfaceMap;

  it.each(["127.0.0.1", "127.0.0.2", "::1", "100.101.2.3", "fd7a:115c:a1e0::5"])("allows %s", (host) => {
    expect(() => checkBindAllowed(host, false, interfaces)).not.toThrow();
  });

  it.each([
    ["0.0.0.0", "every interface"],
    ["::", "every interface"],
    ["192.168.1.10", "not loopback or a Tailscale mesh address"],
    ["8.8.8.8", "not loopback or a Tailscale mesh address"],
    ["100.64.9.9", "on interface eth0"],
    ["100.100.100.100", "on no local interface"],
  ])("refuses %s (%s), naming the address", (host, why) => {
    expect(() => checkBindAllowed(host, false, interfaces)).toThrow(new RegExp(`refusing to bind ${host.replace(/\./g, "\\.")}: .*${why}`));
  });

  it("--allow-insecure-exposure accepts what would otherwise be refused", () => {
    for (const host of ["0.0.0.0", "192.168.1.10", "100.64.9.9"]) expect(() => checkBindAllowed(host, true, interfaces)).not.toThrow();
  });

  it("parses ADDR:PORT forms", () => {
    expect(parseBindAddress("127.0.0.1:9", 8443)).toEqual({ host: "127.0.0.1", port: 9 });
    expect(parseBindAddress("[::1]:9", 8443)).toEqual({ host: "::1", port: 9 });
    expect(parseBindAddress("127.0.0.1", 8443)).toEqual({ host: "127.0.0.1", port: 8443 });
    expect(() => parseBindAddress("localhost:80", 8443)).toThrow();
    expect(() => parseBindAddress("127.0.0.1:99999", 8443)).toThrow();
  });
});

describe("serve refuses unsafe binds and bad config with exit 1, naming the problem", () => {
  it.each(["0.0.0.0:8443", "[::]:8443", "8.8.8.8:8443", "192.168.1.10:8443", "100.100.100.100:8443"])("--bind %s", async (bind) => {
    const result = await cli(["serve", "--bind", bind, "--admin-bind", "127.0.0.1:0", "--state", tempDir()]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(`refusing to bind ${bind.replace(/^\[|\]?:\d+$/g, "").replace(/\]$/, "")}`);
    expect(result.stderr).toContain("--allow-insecure-exposure");
  });

  it("refuses a non-loopback admin address even with --allow-insecure-exposure", async () => {
    const result = await cli(["serve", "--bind", "127.0.0.1:0", "--admin-bind", "0.0.0.0:0", "--allow-insecure-exposure", "--state", tempDir()]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("refusing to bind 0.0.0.0");
  });

  it("refuses a misspelled config key, naming it", async () => {
    const config = testWranglerConfig(1, { max_user: 3 });
    const result = await cli(["serve", "--config", config, "--bind", "127.0.0.1:0", "--state", tempDir()]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("HALO_CONFIG.max_user: unknown key");
  });

  it("refuses an invalid route, naming it", async () => {
    const path = testWranglerConfig(1);
    const broken = join(tempDir(), "wrangler.toml");
    writeFileSync(broken, (await import("node:fs")).readFileSync(path, "utf8").replace('auth = "none"', 'auth = "open"'));
    const result = await cli(["serve", "--config", broken, "--bind", "127.0.0.1:0", "--state", tempDir()]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/HALO_CONFIG\.routes\[4\]\.auth/);
  });

  it("refuses a bad --cron expression as bad usage", async () => {
    const result = await cli(["serve", "--cron", "every minute", "--bind", "127.0.0.1:0", "--state", tempDir()]);
    expect(result.code).toBe(2);
  });
});

describe("--bind tailscale", () => {
  it("binds the node's own mesh address from `tailscale ip -4`", async () => {
    const tailscale = fakeTailscale("127.0.0.3");
    const gateway = await startServe({ args: ["--bind", "tailscale:0"], env: tailscale.env });
    try {
      expect(gateway.url).toMatch(/^http:\/\/127\.0\.0\.3:\d+$/);
      expect(tailscale.calls()[0]).toEqual(["ip", "-4"]);
      expect((await fetch(`${gateway.url}/healthz`)).status).toBe(200);
    } finally {
      await gateway.stop();
    }
  });

  it("waits for the mesh, then fails clearly", async () => {
    const tailscale = fakeTailscale(undefined);
    const started = Date.now();
    const result = await cli(["serve", "--bind", "tailscale", "--state", tempDir()], { ...tailscale.env, HALO_GATE_MESH_WAIT_MS: "2500" });
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("--bind tailscale: no mesh address after");
    expect(result.stderr).toContain("failed to connect to local tailscaled");
    expect(Date.now() - started).toBeGreaterThanOrEqual(2_000);
    expect(tailscale.calls().length).toBeGreaterThanOrEqual(2);
  });
});
