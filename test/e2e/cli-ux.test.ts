/**
 * Issue 11, through the real CLI as a subprocess: help from the one declaration of each command,
 * exit 2 for every usage error, tables that fit 100 columns without colour off a terminal, escaped
 * control characters, serve --config with a copy anywhere, messages from the running gateway.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { request as httpsRequest } from "node:https";
import { join } from "node:path";
import { parse, stringify } from "smol-toml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { COMMANDS } from "../../cli/commands";
import { startRecordingUpstream, type RecordingUpstream } from "../support/upstream-server";
import { bearer, cli, ROOT, startServe, tempDir, testWranglerConfig, type CliResult, type Serve } from "./harness";

let upstream: RecordingUpstream;
beforeAll(async () => {
  upstream = await startRecordingUpstream();
});
afterAll(async () => upstream?.close());

const ESC = "\x1b";
/** The terminal-driving characters found raw in `text`. */
const rawControl = (text: string) => [ESC, "\x07", "\u202e", "\u009b"].filter((char) => text.includes(char));
const linesOf = (text: string) => text.replace(/\n$/, "").split("\n");
const widest = (text: string) => Math.max(...linesOf(text).map((line) => line.length));
const tokenIn = (text: string) => /sk-halo-[0-9a-f]{32}/.exec(text)?.[0];
/** The curl line of a message, as [method, url, body?]. */
function curlOf(message: string): { method: string; url: string; body?: string } {
  const line = message.split("\n").find((text) => text.trim().startsWith("curl "))!.trim();
  const body = /-d '([^']*)'/.exec(line)?.[1];
  return { method: line.includes("-X POST") ? "POST" : "GET", url: line.split(" ").at(-1)!, ...(body ? { body } : {}) };
}
const hasScript = (() => {
  try {
    execFileSync("script", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();
/** Runs the CLI on a pseudo-terminal (util-linux `script`), to see what a terminal gets. */
function onTerminal(args: string[], env: NodeJS.ProcessEnv = {}): string {
  const bin = join(ROOT, "bin/halo-gate.mjs");
  const command = ["stty cols 120;", process.execPath, bin, ...args].map((part) => (part.endsWith(";") ? part : `'${part}'`)).join(" ");
  return execFileSync("script", ["-qec", command, "/dev/null"], { env: { ...process.env, ...env }, encoding: "utf8" });
}

describe("help, from each command's one declaration", () => {
  it("invite --help prints invite's usage and every invite flag with its description (exit 0)", async () => {
    const help = await cli(["invite", "--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^usage: halo-gate invite <handle> \[flags\]/);
    for (const flag of ["--scopes LIST", "--ttl DURATION", "--rps N", "--burst N", "--streams N", "--daily-tokens N", "--authkey KEY", "--json", "--state DIR", "-h, --help"]) {
      expect(help.stdout).toContain(flag);
    }
    for (const [name, flag] of Object.entries(COMMANDS.invite.flags)) {
      expect(help.stdout).toContain(`--${name}`);
      expect(help.stdout.replace(/\s+/g, " ")).toContain(flag.description);
    }
    expect(help.stdout).toContain("at most 365d");
    expect(widest(help.stdout)).toBeLessThanOrEqual(100);
  });

  it("every command's --help names each of its flags (from the same declaration as its parser)", async () => {
    const names = Object.keys(COMMANDS) as Array<keyof typeof COMMANDS>;
    const helps = await Promise.all(names.map((name) => cli([name, "--help"])));
    names.forEach((name, index) => {
      expect(helps[index]!.code).toBe(0);
      for (const flag of Object.keys(COMMANDS[name].flags)) expect(helps[index]!.stdout).toContain(`--${flag}`);
      expect(widest(helps[index]!.stdout)).toBeLessThanOrEqual(100);
    });
    const [helpInvite, withBadFlag] = await Promise.all([cli(["help", "invite"]), cli(["invite", "-h", "--bogus"])]);
    expect(helpInvite.stdout).toBe(helps[names.indexOf("invite")]!.stdout);
    expect(withBadFlag.code).toBe(0);
  });

  it("--help lists every command with its one-line summary", async () => {
    const help = await cli(["--help"]);
    expect(help.code).toBe(0);
    const flat = help.stdout.replace(/\s+/g, " ");
    for (const [name, spec] of Object.entries(COMMANDS)) {
      expect(help.stdout).toMatch(new RegExp(`^  ${name}\\b`, "m"));
      expect(flat).toContain(spec.summary);
    }
  });
});

describe.concurrent("usage errors exit 2, before anything is sent", () => {
  it.each([
    [[], "usage: halo-gate <command>"],
    [["frobnicate"], 'unknown command "frobnicate"'],
    [["invite"], "invite: missing <handle>"],
    [["invite", "alice", "--bogus"], "invite: unknown flag --bogus"],
    [["invite", "alice", "--ttl"], "--ttl needs a value"],
    [["invite", "alice", "--rps", "fast"], "--rps fast: must be a number above 0 and at most 10000"],
    [["invite", "alice", "--burst", "1.5"], "--burst 1.5: must be a whole number"],
    [["invite", "alice", "--ttl", "99999999d"], "--ttl 99999999d: must be at most 365d"],
    [["update", "alice", "--ttl", "366d"], "must be at most 365d"],
    [["invite", "alice", "--scopes", "v2,,sd"], "an empty scope"],
    [["invite", "Alice"], '"Alice" is not a valid handle'],
    [["update", "alice"], "nothing to change"],
    [["audit", "--since", "last week"], "--since last week: must be a date"],
    [["serve", "--tls-name", "box"], "--tls-name needs --tls"],
    [["serve", "--bind", "nowhere"], '"nowhere" is not an IP address'],
  ])("%j → exit 2: %s", async (args, message) => {
    const result = await cli([...args, "--state", tempDir()]);
    expect(result.code, result.stderr).toBe(2);
    expect(result.stderr).toContain(message);
    expect(result.stderr).not.toMatch(/\n\s+at /);
    expect(result.stderr).not.toContain("not running");
  });

  it("a refusal or failure is exit 1 (no serve here)", async () => {
    const result = await cli(["list", "--state", tempDir()]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("not running");
  });

  it("--state is accepted before the command, after it, and as --state=DIR", async () => {
    const state = tempDir();
    const results = await Promise.all([["--state", state, "list"], ["list", "--state", state], [`--state=${state}`, "list"], ["list", `--state=${state}`]].map((args) => cli(args)));
    for (const result of results) expect(result.stderr).toContain(`state dir ${state}`);
    expect((await cli(["--state", state])).code).toBe(2);
  });
});

describe.concurrent("control characters are escaped in everything echoed", () => {
  it.each([
    [["invite", `al${ESC}[31mice\u202e`], ["al\\x1b[31mice\\u202e"]],
    [["invite", "alice", `--${ESC}[2J`], ["\\x1b[2J"]],
  ])("%j", async (args, shown) => {
    const result = await cli([...args, "--state", tempDir()]);
    expect(result.code).toBe(2);
    for (const text of shown) expect(result.stderr).toContain(text);
    expect(rawControl(result.stderr + result.stdout)).toEqual([]);
  });
});

/** A copy of wrangler.toml in a directory of its own, `main` left relative (nothing next to it). */
function copiedConfig(halo: Record<string, unknown>): string {
  const source = parse(readFileSync(testWranglerConfig(upstream.port, halo), "utf8")) as Record<string, unknown>;
  source.main = "src/index.ts";
  const dir = join(tempDir("halo-gate-etc-"), "etc", "halo-gate");
  mkdirSync(dir, { recursive: true });
  const path = join(dir, "wrangler.toml");
  writeFileSync(path, stringify(source));
  return path;
}

describe("serve --config with a copy anywhere; admin commands take the running gateway's config", () => {
  let gateway: Serve;
  let config: string;
  const run = (...args: string[]) => cli([...args, "--state", gateway.stateDir]);
  const invited: Record<string, CliResult> = {};

  beforeAll(async () => {
    config = copiedConfig({ max_users: 3, mesh: { login_server: "https://hs.copy.example" }, public_url: "https://box.tail1234.ts.net:8443" });
    gateway = await startServe({ config });
    invited.carol = await run("invite", "carol", "--scopes", "sd");
    invited.dan = await run("invite", "dan", "--scopes", "audio");
    invited.erin = await run("invite", "erin-with-a-long-handle-32-chars", "--scopes", "v2,lemon,sd,audio");
  });
  afterAll(async () => gateway?.stop());

  it("starts with the copy (its relative main is not next to it) and records it in serve.json", () => {
    const runtime = JSON.parse(readFileSync(join(gateway.stateDir, "serve.json"), "utf8")) as Record<string, unknown>;
    expect(runtime.config_path).toBe(config);
    expect(runtime.login_server).toBe("https://hs.copy.example");
    expect(runtime.max_users).toBe(3);
    expect(gateway.output()).not.toContain("Could not resolve");
  });

  it("invite prints the running config's login server and public_url, and a check on a route the user may use", async () => {
    for (const result of Object.values(invited)) expect(result.code, result.stderr).toBe(0);
    for (const result of Object.values(invited)) {
      expect(result.stdout).toContain("tailscale up --login-server https://hs.copy.example --authkey");
      expect(result.stdout).not.toContain("headscale.1bit.systems");
      expect(result.stdout).toContain("https://box.tail1234.ts.net:8443/");
      expect(result.stdout).not.toMatch(/\.\d{3}Z/);
    }
    const carol = invited.carol!.stdout;
    expect(carol).toContain(`curl -H "Authorization: Bearer ${tokenIn(carol)}" https://box.tail1234.ts.net:8443/sd/sdapi/v1/sd-models`);
    expect(carol).not.toContain("/v2/");
    const dan = invited.dan!.stdout;
    expect(curlOf(dan)).toEqual({ method: "POST", url: "https://box.tail1234.ts.net:8443/auth/ticket", body: '{"scope":"audio"}' });
    const erin = invited.erin!.stdout;
    expect(curlOf(erin).url).toBe("https://box.tail1234.ts.net:8443/v2/v1/models");
    expect(erin).toContain("https://box.tail1234.ts.net:8443/lemon/api/v1");
    expect(erin).toContain("wss://box.tail1234.ts.net:8443/audio/ws");
  });

  it.each(["carol", "dan", "erin"])("%s's check passes against the gateway (the user may use that route)", async (name) => {
    const message = invited[name]!.stdout;
    const { method, url, body } = curlOf(message);
    const response = await fetch(url.replace("https://box.tail1234.ts.net:8443", gateway.url), {
      method,
      headers: { ...bearer(tokenIn(message)!), ...(body ? { "content-type": "application/json" } : {}) },
      ...(body ? { body } : {}),
    });
    expect(response.status, await response.clone().text()).toBeLessThan(300);
  });

  it("the seat cap names the config file the gateway runs and its max_users", async () => {
    const refused = await run("invite", "fourth");
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain("All seats are taken: 3 of max_users = 3");
    expect(refused.stderr).toContain(`raise max_users in ${config} [vars.HALO_CONFIG]`);
  });

  it("rotate prints the same ready-to-send message, with the new token", async () => {
    const rotated = await run("rotate", "carol");
    expect(rotated.code).toBe(0);
    const token = tokenIn(rotated.stdout)!;
    expect(token).not.toBe(tokenIn(invited.carol!.stdout));
    expect(rotated.stdout).toContain("the old one is refused from now on");
    expect(rotated.stdout).toContain("tailscale up --login-server https://hs.copy.example");
    expect(rotated.stdout).toContain(`curl -H "Authorization: Bearer ${token}" https://box.tail1234.ts.net:8443/sd/sdapi/v1/sd-models`);
  });

  it("list and usage fit 100 columns, times to the second, no colour off a terminal; --wide and --json show everything", async () => {
    const list = await run("list");
    expect(list.code).toBe(0);
    expect(linesOf(list.stdout)).toHaveLength(4);
    expect(widest(list.stdout)).toBeLessThanOrEqual(100);
    expect(list.stdout).toMatch(/^HANDLE +STATUS +SCOPES +EXPIRES/);
    expect(list.stdout).toContain("erin-with-a-long-handle-32-chars");
    expect(list.stdout).toMatch(/\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z/);
    expect(list.stdout).not.toMatch(/\.\d{3}Z/);
    expect(list.stdout).not.toContain(ESC);
    const wide = await run("list", "--wide");
    for (const column of ["TOKEN", "ISSUED", "LAST USED", "LAST DEVICE", "MESH USER", "RPS/BURST", "STREAMS", "TOKENS TODAY"]) expect(wide.stdout).toContain(column);
    const json = JSON.parse((await run("list", "--json")).stdout) as Array<Record<string, unknown>>;
    expect(Object.keys(json[0]!).sort()).toEqual(["expires_at", "handle", "issued_at", "last_device", "last_used_at", "limits", "mesh_user", "revoked_at", "scopes", "status", "token_hint", "token_id", "tokens_today"]);
    expect(json[0]!.expires_at).toMatch(/\.\d{3}Z$/);
    const usage = await run("usage");
    expect(usage.code).toBe(0);
    expect(widest(usage.stdout)).toBeLessThanOrEqual(100);
    expect(usage.stdout).not.toContain(ESC);
    expect((await run("usage", "--wide")).stdout).toContain("429 RATE/STREAMS/DAILY");
  });

  it.skipIf(!hasScript)("colour on a terminal, none with NO_COLOR", () => {
    const state = ["--state", gateway.stateDir];
    expect(onTerminal(["list", ...state], { NO_COLOR: "", TERM: "xterm" })).toContain(`${ESC}[`);
    expect(onTerminal(["list", ...state], { NO_COLOR: "1", TERM: "xterm" })).not.toContain(ESC);
    expect(onTerminal(["usage", ...state], { NO_COLOR: "1", TERM: "xterm" })).not.toContain(ESC);
    expect(onTerminal(["list", ...state], { NO_COLOR: "", TERM: "dumb" })).not.toContain(ESC);
  });

  it("update --rps keeps the burst and says so; --burst changes it", async () => {
    const updated = await run("update", "dan", "--rps", "1");
    expect(updated.code).toBe(0);
    expect(updated.stdout).toContain("1 rps (burst 10)");
    expect(updated.stdout).toContain("The burst stays 10; give --burst to change it.");
    const users = () => run("list", "--json").then((result) => JSON.parse(result.stdout) as Array<{ handle: string; limits: { rps: number; burst: number } }>);
    expect((await users()).find((user) => user.handle === "dan")?.limits).toMatchObject({ rps: 1, burst: 10 });
    expect((await run("update", "dan", "--burst", "3")).stdout).toContain("1 rps (burst 3)");
  });

  it("audit --since takes a date alone (its midnight UTC)", async () => {
    const today = new Date().toISOString().slice(0, 10);
    const audit = await run("audit", "--since", today);
    expect(audit.code).toBe(0);
    const events = linesOf(audit.stdout).map((line) => JSON.parse(line) as { action: string; time: string });
    expect(events.some((event) => event.action === "invite")).toBe(true);
    expect(events.every((event) => event.time >= `${today}T00:00:00.000Z`)).toBe(true);
    const tomorrow = new Date(Date.now() + 86_400_000).toISOString().slice(0, 10);
    expect((await run("audit", "--since", tomorrow)).stdout).toBe("");
  });

  it("an overlong ttl is 400 at the admin API, naming the maximum (never a 500); a scope no route offers is exit 2", async () => {
    const runtime = JSON.parse(readFileSync(join(gateway.stateDir, "serve.json"), "utf8")) as { admin: string };
    const operator = readFileSync(join(gateway.stateDir, "operator-token"), "utf8").trim();
    for (const [method, path, body] of [
      ["POST", "/admin/users", { handle: "zed", ttl: "99999999d" }],
      ["PATCH", "/admin/users/dan", { ttl: "99999999d" }],
    ] as const) {
      const response = await fetch(`${runtime.admin}${path}`, { method, headers: { ...bearer(operator), "content-type": "application/json" }, body: JSON.stringify(body) });
      expect(response.status).toBe(400);
      expect(((await response.json()) as { error: { message: string } }).error.message).toContain("at most 365d");
    }
    const scope = await run("update", "dan", "--scopes", "v3");
    expect(scope.code).toBe(2);
    expect(scope.stderr).toContain('"v3"');
  });
});

describe("import-bearers", () => {
  let gateway: Serve;
  beforeAll(async () => {
    gateway = await startServe({ config: testWranglerConfig(upstream.port) });
  });
  afterAll(async () => gateway?.stop());
  const run = (...args: string[]) => cli([...args, "--state", gateway.stateDir]);
  const stamp = (offsetMs: number) => new Date(Date.now() + offsetMs).toISOString().slice(0, 16) + "Z";
  const line = (hex: string, handle: string, issuedMs: number) => `sk-halo-${hex.repeat(32 / hex.length)} # ${handle} # issued ${stamp(issuedMs)} # expires ${stamp(issuedMs + 10 * 86_400_000)}`;

  it("refuses, by line number and handle, a line whose handle was revoked after the line was issued", async () => {
    expect((await run("invite", "ivy")).code).toBe(0);
    expect((await run("revoke", "ivy")).code).toBe(0);
    const file = join(tempDir(), "bearers.txt");
    writeFileSync(file, ["# ivy's old Caddy line, from before the revoke", line("a1", "ivy", -86_400_000), line("b2", "jay", -86_400_000)].join("\n"));
    const result = await run("import-bearers", file);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/^line 2: refused ivy: ivy was revoked at \S+, after this line was issued/m);
    expect(result.stdout).toContain("line 3: imported jay (active)");
    expect(result.stdout).toContain("imported 1, skipped 0, refused 1, malformed 0");
    const users = JSON.parse((await run("list", "--json")).stdout) as Array<{ handle: string; status: string }>;
    expect(users.find((user) => user.handle === "ivy")?.status).toBe("revoked");
    expect((await fetch(`${gateway.url}/v2/v1/models`, { headers: bearer(`sk-halo-${"a1".repeat(16)}`) })).status).toBe(401);
    // A line issued after the revoke is a new credential the operator made: it is imported.
    writeFileSync(file, line("c3", "ivy", 60_000));
    expect((await run("import-bearers", file)).stdout).toContain("line 1: imported ivy (active)");
  });

  it("control characters from the file are shown escaped, never raw", async () => {
    const file = join(tempDir(), "bearers.txt");
    writeFileSync(file, [`sk-halo-${"e5".repeat(16)} # ${ESC}[31mbad\u202e # issued ${stamp(0)} # expires ${stamp(86_400_000)}`, `${ESC}]0;title\x07`].join("\n"));
    const result = await run("import-bearers", file);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('line 1: malformed: "\\x1b[31mbad\\u202e" is not a valid handle');
    expect(result.stderr).toContain("line 2: malformed");
    expect(rawControl(result.stdout + result.stderr)).toEqual([]);
  });
});

describe("serve --tls with a self-signed certificate: invite tells the user how to trust it", () => {
  let gateway: Serve;
  beforeAll(async () => {
    gateway = await startServe({ config: testWranglerConfig(upstream.port), args: ["--bind", "127.0.0.1:0", "--tls"] });
  });
  afterAll(async () => gateway?.stop());

  it("prints the fingerprint, the certificate and curl --cacert, and the check works with exactly that", async () => {
    const runtime = JSON.parse(readFileSync(join(gateway.stateDir, "serve.json"), "utf8")) as { tls: { fingerprint: string; cert_path: string } };
    const invite = await cli(["invite", "lea", "--scopes", "v2", "--state", gateway.stateDir]);
    expect(invite.code).toBe(0);
    const message = invite.stdout;
    expect(message).toContain(runtime.tls.fingerprint);
    expect(message).toContain("openssl x509 -in halo-gate.pem -outform der | sha256sum");
    const token = tokenIn(message)!;
    expect(message).toContain(`curl --cacert halo-gate.pem -H "Authorization: Bearer ${token}" ${gateway.url}/v2/v1/models`);
    const pem = /-----BEGIN CERTIFICATE-----\n[\s\S]+?\n-----END CERTIFICATE-----/.exec(message)?.[0];
    expect(pem).toBe(readFileSync(runtime.tls.cert_path, "utf8").trim());
    const status = await new Promise<number>((resolve, reject) => {
      const request = httpsRequest(`${gateway.url}/v2/v1/models`, { ca: pem, headers: bearer(token) }, (response) => {
        response.resume();
        resolve(response.statusCode!);
      });
      request.on("error", reject);
      request.end();
    });
    expect(status).toBe(200);
    const rotated = await cli(["rotate", "lea", "--state", gateway.stateDir]);
    expect(rotated.stdout).toContain(runtime.tls.fingerprint);
    expect(rotated.stdout).toContain("-----BEGIN CERTIFICATE-----");
  });
});
