/** Quotas through the real `serve`: abort propagation over the whole path, no slot stranded by a crash, metrics. */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { createHash } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startRecordingUpstream, type RecordingUpstream } from "../support/upstream-server";
import { bearer, cli, inviteJson, startServe, testWranglerConfig } from "./harness";

let upstream: RecordingUpstream;
beforeAll(async () => {
  upstream = await startRecordingUpstream();
});
afterAll(async () => upstream?.close());

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const completion = (stream: boolean) => ({ method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ stream, messages: [] }) });

async function readDeltas(response: Response, count: number) {
  const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while ((text.match(/"content"/g) ?? []).length < count) {
    const { value, done } = await reader.read();
    if (done) break;
    text += value;
  }
  return reader;
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? filesUnder(path) : [path];
  });
}

/** A request that submits work, so it holds one of the user's concurrent slots (reads do not). */
const work = (url: string, token: string) => fetch(`${url}/v2/v1/embeddings`, { method: "POST", headers: { ...bearer(token), "content-type": "application/json" }, body: "{}" });

describe("quotas through serve", () => {
  it("a client that goes away mid-stream aborts the upstream, frees its slot and is charged what was produced", async () => {
    const gateway = await startServe({ config: testWranglerConfig(upstream.port) });
    try {
      const { token } = await inviteJson(gateway.stateDir, "ada", ["--streams", "1", "--rps", "100", "--burst", "100"]);
      const marker = `m-${Math.random()}`;
      const abort = new AbortController();
      const response = await fetch(`${gateway.url}/v2/v1/chat/completions?n=40&gap=100&usage=never`, {
        ...completion(true),
        headers: { ...bearer(token), "content-type": "application/json", "x-request-id": marker },
        signal: abort.signal,
      });
      await readDeltas(response, 3);
      // While it runs, a second request is refused: one stream at a time.
      expect((await work(gateway.url, token)).status).toBe(429);
      // …but a cheap read is not a stream: chat UIs list models while a reply streams (issue 9).
      expect((await fetch(`${gateway.url}/v2/v1/models`, { headers: bearer(token) })).status).toBe(200);
      abort.abort();
      const deadline = Date.now() + 5_000;
      let seen = upstream.recorded.find((entry) => entry.headers["x-request-id"] === marker);
      while (!seen?.aborted && Date.now() < deadline) {
        await sleep(50);
        seen = upstream.recorded.find((entry) => entry.headers["x-request-id"] === marker);
      }
      expect(seen?.aborted).toBe(true);
      await sleep(300);
      expect((await work(gateway.url, token)).status).toBe(200);
      const usage = JSON.parse((await cli(["usage", "--json", "--state", gateway.stateDir])).stdout) as { users: Array<{ handle: string; tokens_today: number; in_flight: number; requests: Record<string, number> }> };
      const ada = usage.users.find((user) => user.handle === "ada")!;
      expect(ada.tokens_today).toBeGreaterThanOrEqual(3);
      expect(ada.tokens_today).toBeLessThan(40);
      expect(ada.in_flight).toBe(0);
      expect(ada.requests.aborted).toBe(1);
    } finally {
      await gateway.stop();
    }
  });

  it("a restarted gateway admits at once a user whose stream a kill -9 cut: leases do not outlive their boot", async () => {
    const config = testWranglerConfig(upstream.port); // the default 30 s lease
    const first = await startServe({ config });
    const { token } = await inviteJson(first.stateDir, "bo", ["--streams", "1", "--rps", "100", "--burst", "100"]);
    const stream = await fetch(`${first.url}/v2/v1/sse?n=50&gap=200`, { method: "POST", headers: bearer(token) });
    const reader = stream.body!.getReader();
    await reader.read();
    // While it runs, the user's one slot is taken.
    expect((await work(first.url, token)).status).toBe(429);
    const killedAt = Date.now();
    first.process.kill("SIGKILL");
    await first.exited;
    await reader.cancel().catch(() => {});
    const second = await startServe({ stateDir: first.stateDir, config });
    try {
      const usage = JSON.parse((await cli(["usage", "--json", "--state", second.stateDir])).stdout) as { users: Array<{ handle: string; in_flight: number }> };
      expect(usage.users.find((user) => user.handle === "bo")?.in_flight).toBe(0);
      // Well inside the 30 s lease the killed stream held: the first request is admitted, not 429.
      expect((await work(second.url, token)).status).toBe(200);
      expect(Date.now() - killedAt).toBeLessThan(30_000);
    } finally {
      await second.stop();
    }
  });

  it("serves Prometheus /metrics and `usage` on the admin listener only, and never stores a plaintext token", async () => {
    const gateway = await startServe({ config: testWranglerConfig(upstream.port) });
    try {
      const { token } = await inviteJson(gateway.stateDir, "cy", ["--rps", "100", "--burst", "100"]);
      for (let index = 0; index < 3; index++) await fetch(`${gateway.url}/v2/v1/chat/completions?n=2`, { ...completion(false), headers: { ...bearer(token), "content-type": "application/json" } });
      await fetch(`${gateway.url}/v2/v1/models`, { headers: bearer("sk-halo-00000000000000000000000000000000") });
      const runtime = JSON.parse(readFileSync(join(gateway.stateDir, "serve.json"), "utf8")) as { admin: string };
      const operator = readFileSync(join(gateway.stateDir, "operator-token"), "utf8").trim();
      expect((await fetch(`${runtime.admin}/metrics`)).status).toBe(401);
      const metrics = await (await fetch(`${runtime.admin}/metrics`, { headers: bearer(operator) })).text();
      expect(metrics).toContain('halo_gate_requests_total{handle="cy",class="2xx"} 3');
      expect(metrics).toContain('halo_gate_tokens_today{handle="cy"} 27');
      expect(metrics).toContain('halo_gate_upstream_latency_seconds_count{handle="cy"} 3');
      expect((await fetch(`${gateway.url}/metrics`)).status).toBe(404);
      const table = await cli(["usage", "--state", gateway.stateDir]);
      expect(table.stdout).toContain("27 / 2000000");
      await sleep(1_500); // the auth audit is flushed within about a second
      const audit = (await cli(["audit", "--state", gateway.stateDir])).stdout;
      expect(audit).toContain('"action":"allow"');
      expect(audit).toContain('"reason":"unknown"');
      // Neither the plaintext nor (in the audit) the hash of any token, anywhere it could leak.
      const hash = createHash("sha256").update(token).digest("hex");
      expect(audit).not.toContain(token);
      expect(audit).not.toContain(hash);
      expect(gateway.output()).not.toContain(token);
      for (const file of filesUnder(gateway.stateDir)) expect(readFileSync(file).includes(token), file).toBe(false);
    } finally {
      await gateway.stop();
    }
  });
});
