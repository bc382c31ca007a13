/** The operator CLI as a subprocess against a real `serve`. */
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startRecordingUpstream, type RecordingUpstream } from "../support/upstream-server";
import { fakeHeadscale } from "./fakes";
import { bearer, cli, inviteJson, ROOT, startServe, tempDir, testWranglerConfig, type Serve } from "./harness";

let upstream: RecordingUpstream;
let config: string;

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  config = testWranglerConfig(upstream.port);
});
afterAll(async () => upstream?.close());

describe("CLI without a running serve", () => {
  it("exits 1 saying the gateway is not running", async () => {
    const state = tempDir();
    for (const args of [["list"], ["invite", "alice"], ["revoke", "alice"], ["audit"]]) {
      const result = await cli([...args, "--state", state]);
      expect(result.code, args.join(" ")).toBe(1);
      expect(result.stderr).toContain("not running");
      expect(result.stderr).not.toMatch(/\n\s+at /); // no stack trace
    }
  });

  it("prints its version and usage", async () => {
    const version = await cli(["--version"]);
    expect(version.code).toBe(0);
    expect(version.stdout).toMatch(/^halo-gate \d+\.\d+\.\d+\n$/);
    const help = await cli(["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("import-bearers <file>");
  });

  it.each([
    [[]],
    [["frobnicate"]],
    [["invite"]],
    [["invite", "alice", "--bogus"]],
    [["invite", "alice", "--rps", "fast"]],
    [["list", "extra"]],
    [["update", "alice"]],
  ])("bad usage %j exits 2", async (args) => {
    const result = await cli([...args, "--state", tempDir()]);
    expect(result.code).toBe(2);
  });
});

describe("CLI against serve", () => {
  let gateway: Serve;
  let headscale: ReturnType<typeof fakeHeadscale>;

  beforeAll(async () => {
    headscale = fakeHeadscale();
    gateway = await startServe({ config, env: headscale.env });
  });
  afterAll(async () => gateway?.stop());

  const run = (...args: string[]) => cli([...args, "--state", gateway.stateDir], headscale.env);

  it("invite → a request with the token reaches the upstream → revoke → the very next request is 401", async () => {
    const invited = await run("invite", "alice");
    expect(invited.code).toBe(0);
    const token = /sk-halo-[0-9a-f]{32}/.exec(invited.stdout)?.[0];
    expect(token).toBeDefined();
    expect(invited.stdout).toContain("tailscale up --login-server https://headscale.1bit.systems --authkey hskey-");
    expect(invited.stdout).toContain(`curl -H "Authorization: Bearer ${token}" ${gateway.url}/v2/v1/models`);
    expect((await fetch(`${gateway.url}/v2/v1/models`, { headers: bearer(token!) })).status).toBe(200);
    const revoked = await run("revoke", "alice");
    expect(revoked.code).toBe(0);
    expect((await fetch(`${gateway.url}/v2/v1/models`, { headers: bearer(token!) })).status).toBe(401);
  });

  it("talks to headscale: creates the user, uses its numeric id, mints a single-use 24 h key; revoke expires keys and nodes", async () => {
    const before = headscale.calls().length;
    expect((await run("invite", "dora")).code).toBe(0);
    const inviteCalls = headscale.calls().slice(before);
    expect(inviteCalls).toContainEqual(["users", "create", "dora"]);
    const create = inviteCalls.find((call) => call[0] === "preauthkeys" && call[1] === "create")!;
    expect(create).toEqual(["preauthkeys", "create", "--user", expect.stringMatching(/^\d+$/), "--expiration", "24h", "-o", "json"]);
    expect(create).not.toContain("--reusable");
    const node = headscale.join("dora"); // dora's device registers with the key
    const beforeRevoke = headscale.calls().length;
    const revoked = await run("revoke", "dora");
    expect(revoked.stdout).toContain("expired 1 pre-auth key(s) and 1 node(s)");
    const revokeCalls = headscale.calls().slice(beforeRevoke);
    expect(revokeCalls.some((call) => call[0] === "preauthkeys" && call[1] === "expire")).toBe(true);
    expect(revokeCalls).toContainEqual(["nodes", "expire", "--identifier", String(node.id)]);
  });

  it("--authkey wins over headscale; --json gives the machine-readable fields", async () => {
    const before = headscale.calls().length;
    const withKey = await run("invite", "erin", "--authkey", "tskey-given");
    expect(withKey.stdout).toContain("--authkey tskey-given");
    expect(headscale.calls().slice(before).some((call) => call[0] === "preauthkeys")).toBe(false);
    const json = await run("invite", "fred", "--json", "--scopes", "v2,sd", "--ttl", "24h");
    const parsed = JSON.parse(json.stdout) as Record<string, unknown>;
    expect(Object.keys(parsed).sort()).toEqual(["expires_at", "handle", "issued_at", "scopes", "token", "token_id"]);
    expect(parsed.scopes).toEqual(["v2", "sd"]);
  });

  it("--state is accepted anywhere on the line", async () => {
    const result = await cli(["--state", gateway.stateDir, "list", "--json"]);
    expect(result.code).toBe(0);
    expect(Array.isArray(JSON.parse(result.stdout))).toBe(true);
  });

  it("refuses an active handle (use rotate) with exit 1, and a scope no route offers as bad usage (exit 2)", async () => {
    const again = await run("invite", "fred");
    expect(again.code).toBe(1);
    expect(again.stderr).toContain("rotate");
    const badScope = await run("invite", "gwen", "--scopes", "v3");
    expect(badScope.code).toBe(2);
    expect(badScope.stderr).toContain('"v3"');
  });

  it("rotate and update work through the CLI", async () => {
    const rotated = await run("rotate", "fred", "--json");
    expect(rotated.code).toBe(0);
    expect(JSON.parse(rotated.stdout).scopes).toEqual(["v2", "sd"]);
    const updated = await run("update", "fred", "--rps", "2", "--streams", "2", "--daily-tokens", "1000");
    expect(updated.code).toBe(0);
    // fred was invited with the config's limits (burst 10): a new rate leaves the burst alone.
    expect(updated.stdout).toContain("2 rps (burst 10), 2 stream(s), 1000 tokens/day");
    expect(updated.stdout).toContain("The burst stays 10; give --burst to change it.");
    const list = JSON.parse((await run("list", "--json")).stdout) as Array<{ handle: string; limits: { streams: number } }>;
    expect(list.find((user) => user.handle === "fred")?.limits.streams).toBe(2);
  });

  it("prints a readable table for list and NDJSON for audit --since", async () => {
    const table = await run("list");
    expect(table.stdout).toMatch(/^HANDLE +STATUS +SCOPES +EXPIRES/);
    expect((await run("list", "--wide")).stdout).toContain("sk-halo-");
    const audit = await run("audit", "--since", "2000-01-01T00:00:00Z");
    const lines = audit.stdout.trim().split("\n");
    expect(lines.length).toBeGreaterThan(3);
    for (const line of lines) expect(() => JSON.parse(line)).not.toThrow();
    expect((await run("audit", "--since", "last week")).code).toBe(2);
  });
});

describe("seats", () => {
  it("20 concurrent invites with 9 seats taken: exactly one succeeds, the others name the cap", async () => {
    const gateway = await startServe({ config });
    try {
      for (let index = 0; index < 9; index++) await inviteJson(gateway.stateDir, `seat${index}`);
      const results = await Promise.all(Array.from({ length: 20 }, (_, index) => cli(["invite", `racer${index}`, "--json", "--state", gateway.stateDir])));
      expect(results.filter((result) => result.code === 0)).toHaveLength(1);
      const refused = results.filter((result) => result.code === 1);
      expect(refused).toHaveLength(19);
      for (const result of refused) expect(result.stderr).toContain("max_users = 10");
      // A revoked seat frees a place.
      expect((await cli(["revoke", "seat0", "--state", gateway.stateDir])).code).toBe(0);
      expect((await cli(["invite", "latecomer", "--json", "--state", gateway.stateDir])).code).toBe(0);
      expect((await cli(["invite", "toolate", "--json", "--state", gateway.stateDir])).code).toBe(1);
    } finally {
      await gateway.stop();
    }
  });
});

describe("import-bearers", () => {
  let gateway: Serve;
  beforeAll(async () => {
    gateway = await startServe({ config });
  });
  afterAll(async () => gateway?.stop());

  const sample = existsSync(join(ROOT, "../shared/fixtures/bearers.sample.txt"))
    ? join(ROOT, "../shared/fixtures/bearers.sample.txt")
    : join(ROOT, "test/fixtures/bearers.sample.txt");

  it("imports the shared Caddy sample, idempotently, and the imported tokens work unchanged", async () => {
    const first = await cli(["import-bearers", sample, "--state", gateway.stateDir]);
    expect(first.code).toBe(0);
    expect(first.stdout).toContain("imported 3, skipped 0, refused 0, malformed 0");
    const second = await cli(["import-bearers", sample, "--state", gateway.stateDir]);
    expect(second.stdout).toContain("imported 0, skipped 3");
    const list = JSON.parse((await cli(["list", "--json", "--state", gateway.stateDir])).stdout) as Array<{ handle: string; status: string }>;
    expect(list.find((user) => user.handle === "alice")?.status).toBe("expired");
    const bob = list.find((user) => user.handle === "bob")!;
    const expectedBob = Date.now() < Date.parse("2026-11-30T09:30:00Z") ? "active" : "expired";
    expect(bob.status).toBe(expectedBob);
    if (expectedBob === "active") {
      const response = await fetch(`${gateway.url}/v2/v1/models`, { headers: bearer("sk-halo-9b2e47d1c0a35f86e1d7b94a2c6f0e35") });
      expect(response.status).toBe(200);
    }
  });

  it("reports malformed lines by number and exits 1, importing the good ones", async () => {
    const file = join(tempDir(), "bearers.txt");
    writeFileSync(
      file,
      [
        "# comment",
        "sk-halo-abcdefabcdefabcdefabcdefabcdef01 # zed # issued 2026-11-24T10:00Z # expires 2027-01-01T10:00Z",
        "sk-halo-short # yan # issued 2026-11-24T10:00Z # expires 2027-01-01T10:00Z",
        "",
        "sk-halo-abcdefabcdefabcdefabcdefabcdef02 # BAD # issued 2026-11-24T10:00Z # expires 2027-01-01T10:00Z",
      ].join("\n"),
    );
    const result = await cli(["import-bearers", file, "--scopes", "v2,sd", "--state", gateway.stateDir]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("line 3: malformed");
    expect(result.stderr).toContain("line 5: malformed");
    expect(result.stdout).toContain("line 2: imported zed (active)");
    const missing = await cli(["import-bearers", join(tempDir(), "nope.txt"), "--state", gateway.stateDir]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("ENOENT");
  });
});
