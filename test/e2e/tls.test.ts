/** `serve --tls` end to end (issue 7): a pinned certificate, kept across restarts, no plain HTTP, SIGHUP reload. */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { Agent, request, type RequestOptions } from "node:https";
import { connect } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureSelfSignedCertificate } from "../../cli/serve/tls";
import { startRecordingUpstream, type RecordingUpstream } from "../support/upstream-server";
import { listeningPorts, startServe, tempDir, testWranglerConfig } from "./harness";

let upstream: RecordingUpstream;

beforeAll(async () => {
  upstream = await startRecordingUpstream();
});

afterAll(async () => {
  await upstream?.close();
});

const printedFingerprint = (output: string) => /halo-gate TLS certificate (sha256:[0-9a-f]{64}) /.exec(output)?.[1];

/**
 * A GET that trusts exactly one certificate: the one whose DER hashes to `pin` (the check SSH users
 * know). `ca` lets the handshake complete for a self-signed certificate; the pin decides.
 */
function pinnedGet(url: string, pin: string, ca: string, options: { host?: string; agent?: Agent } = {}): Promise<{ status: number; body: string }> {
  const target = new URL(url);
  const init: RequestOptions = {
    host: target.hostname,
    port: target.port,
    path: target.pathname,
    ca,
    servername: options.host ?? "localhost",
    headers: { host: `${options.host ?? target.hostname}:${target.port}` },
    agent: options.agent ?? false,
    checkServerIdentity: (_host, certificate) => {
      const seen = `sha256:${createHash("sha256").update(certificate.raw).digest("hex")}`;
      return seen === pin ? undefined : new Error(`pin mismatch: ${seen}`);
    },
  };
  return new Promise((resolve, reject) => {
    const req = request(init, (response) => {
      let body = "";
      response.on("data", (chunk: Buffer) => (body += chunk));
      response.on("end", () => resolve({ status: response.statusCode ?? 0, body }));
    });
    req.setTimeout(10_000, () => req.destroy(new Error("no answer in 10 s")));
    req.on("error", reject);
    req.end();
  });
}

/** Plain HTTP bytes to the TLS port: whatever comes back is not an HTTP response. */
function plainHttp(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect(port, host, () => socket.write(`GET /healthz HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`));
    let data = "";
    socket.setTimeout(3_000, () => socket.destroy());
    socket.on("data", (chunk: Buffer) => (data += chunk.toString("latin1")));
    socket.on("close", () => resolve(data));
    socket.on("error", () => resolve(data));
  });
}

describe("serve --tls", () => {
  it("serves HTTPS only, with a self-signed certificate a pinned client trusts, kept across restarts and renewed on a name change", async () => {
    const config = testWranglerConfig(upstream.port);
    const args = ["--bind", "127.0.0.3:0", "--tls", "--tls-name", "strixhalo.local"];
    const env = { HALO_GATE_SHUTDOWN_GRACE_MS: "2000" };
    const first = await startServe({ config, args, env });
    let stateDir = first.stateDir;
    try {
      expect(first.url).toMatch(/^https:\/\/127\.0\.0\.3:\d+$/);
      const pin = printedFingerprint(first.output());
      expect(pin, first.output()).toBeDefined();
      const cert = readFileSync(join(first.stateDir, "tls", "cert.pem"), "utf8");
      const ok = await pinnedGet(`${first.url}/healthz`, pin!, cert, { host: "strixhalo.local" });
      expect(ok.status).toBe(200);
      await expect(pinnedGet(`${first.url}/healthz`, `sha256:${"0".repeat(64)}`, cert)).rejects.toThrow(/pin mismatch/);
      const info = JSON.parse((await pinnedGet(`${first.url}/api/info`, pin!, cert)).body) as { tls?: { fingerprint: string } };
      expect(info.tls?.fingerprint).toBe(pin);
      // One listener on the mesh address, and it speaks no plain HTTP.
      const port = Number(new URL(first.url).port);
      expect(listeningPorts("127.0.0.3")).toEqual([port]);
      expect(await plainHttp("127.0.0.3", port)).not.toMatch(/^HTTP\/1\.[01] 200/);
      expect((await first.stop()) ?? 0).toBe(0);

      const second = await startServe({ stateDir, config, args, env });
      expect(printedFingerprint(second.output())).toBe(pin);
      expect((await second.stop()) ?? 0).toBe(0);

      const renamed = await startServe({ stateDir, config, args: ["--bind", "127.0.0.3:0", "--tls", "--tls-name", "halo.example"], env });
      stateDir = renamed.stateDir;
      const renewed = printedFingerprint(renamed.output());
      expect(renewed).toMatch(/^sha256:[0-9a-f]{64}$/);
      expect(renewed).not.toBe(pin);
      const newCert = readFileSync(join(stateDir, "tls", "cert.pem"), "utf8");
      expect((await pinnedGet(`${renamed.url}/healthz`, renewed!, newCert, { host: "halo.example" })).status).toBe(200);
      // The old name is no longer served: a rebinding page using it gets 421.
      expect((await pinnedGet(`${renamed.url}/healthz`, renewed!, newCert, { host: "strixhalo.local" })).status).toBe(421);
      await renamed.stop();
    } finally {
      await first.stop();
    }
  }, 180_000); // three serve starts, each up to tens of seconds on a loaded 2-core machine

  it("serves an operator's certificate and re-reads it on SIGHUP without dropping open connections", async () => {
    const files = tempDir("halo-gate-operator-cert-");
    const original = await ensureSelfSignedCertificate({ dir: files, names: ["box.mesh.example", "127.0.0.1"] });
    const own = await startServe({ config: testWranglerConfig(upstream.port), args: ["--bind", "127.0.0.1:0", "--tls-cert", original.certPath, "--tls-key", join(files, "key.pem")] });
    try {
      expect(printedFingerprint(own.output())).toBe(original.fingerprint);
      const keepAlive = new Agent({ keepAlive: true, maxSockets: 1 });
      const before = await pinnedGet(`${own.url}/healthz`, original.fingerprint, original.cert, { agent: keepAlive, host: "127.0.0.1" });
      expect(before.status).toBe(200);
      // The operator renews the files in place (as `tailscale cert` does), then signals.
      const renewed = await ensureSelfSignedCertificate({ dir: files, names: ["box.mesh.example", "127.0.0.1", "localhost"] });
      expect(renewed.fingerprint).not.toBe(original.fingerprint);
      own.process.kill("SIGHUP");
      const deadline = Date.now() + 5_000;
      while (!own.output().includes(`serving TLS certificate ${renewed.fingerprint}`) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
      expect(own.output()).toContain(`serving TLS certificate ${renewed.fingerprint}`);
      // The open connection (handshaken with the old certificate) still works…
      expect((await pinnedGet(`${own.url}/healthz`, original.fingerprint, original.cert, { agent: keepAlive, host: "127.0.0.1" })).status).toBe(200);
      keepAlive.destroy();
      // …and a new one gets the new certificate.
      expect((await pinnedGet(`${own.url}/healthz`, renewed.fingerprint, renewed.cert, { host: "127.0.0.1" })).status).toBe(200);
      await expect(pinnedGet(`${own.url}/healthz`, original.fingerprint, renewed.cert, { host: "127.0.0.1" })).rejects.toThrow(/pin mismatch/);
    } finally {
      await own.stop();
    }
  });

  it("refuses --tls-cert without --tls-key (exit 2)", async () => {
    const own = await startServe({ args: ["--bind", "127.0.0.1:0", "--tls-cert", "/nonexistent.pem"] }).then(
      async (started) => `started: ${String(await started.stop())}`,
      (error: Error) => error.message,
    );
    expect(own).toMatch(/exited with 2 before listening/);
    expect(own).toMatch(/--tls-cert and --tls-key go together/);
  });
});
