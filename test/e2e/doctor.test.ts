/**
 * `halo-gate doctor` as the operator runs it: on a fresh state dir (no serve: it must say how to
 * start one and exit 1), against a running serve (plain and --tls: the gateway is healthy), and
 * with each problem it is there to catch: loose modes, a stale serve.json, an unhealthy gateway,
 * a mesh address on the wrong interface, tailscaled's LocalAPI, an unsupported Headscale.
 */
import { spawn } from "node:child_process";
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spaceCheck } from "../../cli/doctor/state-dir";
import { fakeHeadscale, fakeTailscale, fakeTailscaled } from "./fakes";
import { cli, startServe, tempDir, testWranglerConfig, type Serve } from "./harness";

const CHECKS = ["state dir", "secret files", "free space", "serve", "gateway /healthz", "TLS certificate", "bind rules", "tailscaled", "headscale"];
/** No tailscale, headscale or tailscaled: the machine of a fresh clone. */
const bare = () => ({ PATH: `${tempDir("halo-gate-nopath-")}:${dirname(process.execPath)}` });
const noSocket = () => join(tempDir("halo-gate-nosock-"), "tailscaled.sock");
const doctor = (state: string, env: NodeJS.ProcessEnv = bare(), ...extra: string[]) => cli(["doctor", "--state", state, "--tailscaled-socket", noSocket(), ...extra], env);
/** The line of one check (plain output: stdout is a pipe). */
const line = (stdout: string, name: string) => stdout.split("\n").find((text) => new RegExp(`^(ok  |WARN|FAIL|SKIP) ${name.replace(/[/.]/g, "\\$&")} `).test(text)) ?? `(no "${name}" line)`;

describe("doctor on a fresh clone (no serve)", () => {
  it("names every check, says the serve is not running and how to start one, exits 1", async () => {
    const state = tempDir();
    const result = await doctor(state);
    expect(result.code).toBe(1);
    for (const name of CHECKS) expect(result.stdout).toContain(` ${name} `);
    expect(line(result.stdout, "serve")).toMatch(/^FAIL serve +not running: no serve\.json in .+ -- fix: start it: halo-gate serve --state /);
    expect(line(result.stdout, "state dir")).toMatch(/^ok {3}state dir +.+, mode 0700$/);
    expect(line(result.stdout, "secret files")).toMatch(/^WARN secret files +no operator-token yet/);
    expect(line(result.stdout, "gateway /healthz")).toContain("SKIP");
    expect(line(result.stdout, "headscale")).toMatch(/^WARN headscale +not installed here/);
    expect(line(result.stdout, "tailscaled")).toMatch(/^WARN tailscaled +LocalAPI unreachable: no socket at /);
    expect(result.stdout.trim().split("\n").at(-1)).toBe("1 check(s) failed, 4 warning(s)");
    expect(result.stdout).not.toMatch(/[✓✗]/); // not a terminal: plain words
    expect(result.stderr).toBe("");
  });

  it("a state dir that does not exist yet (./.halo-gate before the first start) is a warning, not a crash", async () => {
    const result = await doctor(join(tempDir(), ".halo-gate"));
    expect(result.code).toBe(1);
    expect(line(result.stdout, "state dir")).toMatch(/does not exist yet -- fix: halo-gate serve --state .+ creates it \(mode 0700\)/);
    expect(line(result.stdout, "free space")).toMatch(/^(ok {2}|WARN|FAIL) free space/);
  });

  it("--json gives the same checks for scripts", async () => {
    const result = await doctor(tempDir(), bare(), "--json");
    expect(result.code).toBe(1);
    const report = JSON.parse(result.stdout) as { ok: boolean; checks: Array<{ id: string; name: string; status: string; fix?: string }> };
    expect(report.ok).toBe(false);
    expect(report.checks.map((entry) => entry.name)).toEqual(CHECKS);
    expect(report.checks.find((entry) => entry.id === "serve")).toMatchObject({ status: "fail", fix: expect.stringContaining("halo-gate serve --state") });
  });

  it("loose modes fail, each with its chmod", async () => {
    const state = tempDir();
    mkdirSync(join(state, "tls"));
    writeFileSync(join(state, "operator-token"), "hgop-x\n", { mode: 0o644 });
    writeFileSync(join(state, "tls", "key.pem"), "x", { mode: 0o640 });
    chmodSync(state, 0o755);
    const result = await doctor(state);
    expect(line(result.stdout, "state dir")).toMatch(/^FAIL state dir +/);
    expect(line(result.stdout, "state dir")).toContain(`${state} has mode 0755: other users can look inside -- fix: chmod 700 ${state}`);
    expect(line(result.stdout, "secret files")).toContain(`-- fix: chmod 600 ${join(state, "operator-token")} && chmod 600 ${join(state, "tls", "key.pem")}`);
  });

  it("a serve.json left by a killed serve is stale", async () => {
    const state = tempDir();
    const child = spawn(process.execPath, ["-e", ""]);
    await new Promise((resolve) => child.on("exit", resolve));
    writeFileSync(join(state, "serve.json"), JSON.stringify({ pid: child.pid, gateway: "http://127.0.0.1:9", admin: "http://127.0.0.1:9", core: "", started_at: "" }));
    const result = await doctor(state);
    expect(line(result.stdout, "serve")).toContain(`FAIL serve`);
    expect(line(result.stdout, "serve")).toContain(`not running: serve.json names pid ${child.pid}, which has exited`);
  });

  it("a gateway answering 503 fails with what to look at", async () => {
    const state = tempDir();
    // A stand-in serve (its command line says halo-gate) whose /healthz says storage is failing.
    const code = `require("http").createServer((q, s) => s.writeHead(503, {"content-type": "application/json"}).end('{"status":"unhealthy","reason":"storage"}')).listen(0, "127.0.0.1", function () { console.log(this.address().port); });`;
    const child = spawn(process.execPath, ["-e", code, "halo-gate-stand-in"], { stdio: ["ignore", "pipe", "inherit"] });
    try {
      const port = await new Promise<string>((resolve) => child.stdout.once("data", (chunk: Buffer) => resolve(chunk.toString().trim())));
      writeFileSync(join(state, "serve.json"), JSON.stringify({ pid: child.pid, gateway: `http://127.0.0.1:${port}`, admin: "", core: "", started_at: "" }));
      const result = await doctor(state);
      expect(result.code).toBe(1);
      expect(line(result.stdout, "serve")).toMatch(/^ok {3}serve +running, pid \d+/);
      expect(line(result.stdout, "gateway /healthz")).toContain(`FAIL gateway /healthz  http://127.0.0.1:${port}/healthz answered 503: storage cannot be written`);
    } finally {
      child.kill();
    }
  });

  it("free space: under 1 GiB warns, under 100 MiB fails", () => {
    expect(spaceCheck(50 * 2 ** 20, "/x").status).toBe("fail");
    expect(spaceCheck(500 * 2 ** 20, "/x").status).toBe("warn");
    expect(spaceCheck(2 * 2 ** 30, "/x")).toMatchObject({ status: "ok", detail: "2.0 GiB free for /x" });
  });
});

describe("doctor against a running serve", () => {
  let gateway: Serve;
  beforeAll(async () => {
    gateway = await startServe({ config: testWranglerConfig(1) });
  });
  afterAll(async () => gateway?.stop());

  it("reports the gateway healthy and exits 0 (a loopback-only box: mesh findings are warnings)", async () => {
    const result = await doctor(gateway.stateDir);
    expect(result.code, result.stdout).toBe(0);
    const pid = (JSON.parse(readFileSync(join(gateway.stateDir, "serve.json"), "utf8")) as { pid: number }).pid;
    expect(line(result.stdout, "serve")).toMatch(new RegExp(`^ok {3}serve +running, pid ${pid}, since `));
    expect(line(result.stdout, "gateway /healthz")).toMatch(new RegExp(`^ok {3}gateway /healthz +${gateway.url.replace(/\./g, "\\.")}/healthz healthy \\(200 in \\d+ ms\\)$`));
    expect(line(result.stdout, "secret files")).toMatch(/^ok {3}secret files +operator-token 0600$/);
    expect(line(result.stdout, "bind rules")).toMatch(/^WARN bind rules +tailscale is not installed: .*; serve listens on 127\.0\.0\.1 -- fix: install Tailscale/);
  });

  it("with the mesh up: the address, tailscaled's state through its LocalAPI, and the Headscale version", async () => {
    const tailscale = fakeTailscale("127.0.0.3");
    const headscale = fakeHeadscale({ version: "0.28.0" });
    const tailscaled = await fakeTailscaled({ Version: "1.80.2-t1234", BackendState: "Running", TailscaleIPs: ["100.101.2.3", "fd7a:115c:a1e0::5"] });
    try {
      const env = { PATH: `${tailscale.dir}:${headscale.dir}:${dirname(process.execPath)}` };
      const result = await cli(["doctor", "--state", gateway.stateDir, "--tailscaled-socket", tailscaled.socket], env);
      expect(result.code, result.stdout).toBe(0);
      expect(line(result.stdout, "bind rules")).toMatch(/^ok {3}bind rules +mesh address 127\.0\.0\.3: --bind tailscale is allowed; serve listens on 127\.0\.0\.1$/);
      expect(line(result.stdout, "tailscaled")).toBe(`ok   tailscaled        Running, 100.101.2.3, fd7a:115c:a1e0::5, netfilter mode unknown, tailscaled 1.80.2 (${tailscaled.socket})`);
      expect(tailscaled.hosts).toEqual(["local-tailscaled.sock"]);
      expect(line(result.stdout, "headscale")).toBe("ok   headscale         0.28.0 (supported: 0.26 to 0.29)");
      expect(result.stdout.trim().split("\n").at(-1)).toBe("all checks passed");
    } finally {
      await tailscaled.close();
    }
  });

  it("a CGNAT address on no tailscale* interface, a logged-out tailscaled and an unsupported Headscale", async () => {
    const tailscale = fakeTailscale("100.100.100.100");
    const headscale = fakeHeadscale({ version: "0.25.1" });
    const tailscaled = await fakeTailscaled({ BackendState: "NeedsLogin", NetfilterMode: 0 });
    try {
      const env = { PATH: `${tailscale.dir}:${headscale.dir}:${dirname(process.execPath)}` };
      const result = await cli(["doctor", "--state", gateway.stateDir, "--tailscaled-socket", tailscaled.socket], env);
      expect(result.code).toBe(1);
      expect(line(result.stdout, "bind rules")).toMatch(/^WARN bind rules +mesh address 100\.100\.100\.100 is on no local interface: --bind tailscale would refuse it/);
      expect(line(result.stdout, "tailscaled")).toMatch(/^WARN tailscaled +NeedsLogin, netfilter mode off .* -- fix: log in to the mesh: tailscale up --login-server /);
      expect(line(result.stdout, "headscale")).toMatch(/^FAIL headscale +0\.25\.1 is not supported \(halo-gate speaks Headscale 0\.26 to 0\.29\)/);
    } finally {
      await tailscaled.close();
    }
  });
});

describe("doctor against serve --tls", () => {
  it("pins the gateway's certificate to serve.json's fingerprint and reports names, days left and the fingerprint", async () => {
    const gateway = await startServe({ config: testWranglerConfig(1), args: ["--bind", "127.0.0.1:0", "--tls", "--tls-name", "strixhalo.local"] });
    try {
      const fingerprint = (JSON.parse(readFileSync(join(gateway.stateDir, "serve.json"), "utf8")) as { tls: { fingerprint: string } }).tls.fingerprint;
      const result = await doctor(gateway.stateDir);
      expect(result.code, result.stdout).toBe(0);
      expect(line(result.stdout, "gateway /healthz")).toMatch(new RegExp(`^ok {3}gateway /healthz +https://127\\.0\\.0\\.1:\\d+/healthz healthy \\(200 in \\d+ ms\\) \\(certificate pinned to serve\\.json's ${fingerprint.slice(0, 19)}…\\)$`));
      const tls = line(result.stdout, "TLS certificate");
      expect(tls).toMatch(/^ok {3}TLS certificate +/);
      expect(tls).toContain("127.0.0.1");
      expect(tls).toContain("strixhalo.local");
      expect(tls).toMatch(/; 39\d days left; /);
      expect(tls).toContain(fingerprint);
      expect(line(result.stdout, "secret files")).toMatch(/operator-token 0600, tls\/key\.pem 0600$/);
    } finally {
      await gateway.stop();
    }
  });
});
