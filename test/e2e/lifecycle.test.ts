/** `serve`'s lifecycle (issue 7): shutdown under keep-alive load, start-up failures that exit 1. */
import { readdirSync, rmSync, writeFileSync } from "node:fs";
import { Agent, request } from "node:http";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startRecordingUpstream, type RecordingUpstream } from "../support/upstream-server";
import { bearer, cli, inviteJson, startServe, testWranglerConfig } from "./harness";

let upstream: RecordingUpstream;

beforeAll(async () => {
  upstream = await startRecordingUpstream();
});

afterAll(async () => {
  await upstream?.close();
});

/** One GET on a keep-alive agent: status and the Connection header, or the socket error's code. */
function get(url: string, agent: Agent, headers: Record<string, string>): Promise<{ status: number; connection: string } | { error: string }> {
  return new Promise((resolve) => {
    const req = request(url, { agent, headers }, (response) => {
      response.resume();
      response.on("end", () => resolve({ status: response.statusCode ?? 0, connection: String(response.headers.connection ?? "") }));
      response.on("error", (error: NodeJS.ErrnoException) => resolve({ error: error.code ?? error.message }));
    });
    req.on("error", (error: NodeJS.ErrnoException) => resolve({ error: error.code ?? error.message }));
    req.end();
  });
}

describe("serve: lifecycle", () => {
  it("SIGTERM under keep-alive load: in-flight work finishes, keep-alive connections are closed, exit 0 well before the grace", async () => {
    const grace = 20_000;
    const own = await startServe({ config: testWranglerConfig(upstream.port), env: { HALO_GATE_SHUTDOWN_GRACE_MS: String(grace) } });
    const { token } = await inviteJson(own.stateDir, "steady", ["--rps", "10000", "--burst", "10000", "--streams", "100"]);
    const agent = new Agent({ keepAlive: true, maxSockets: 8 });
    const results: Array<{ status: number; connection: string } | { error: string }> = [];
    let running = true;
    // Eight keep-alive clients in a loop (bounded: they stop at shutdown or after 15 s).
    const until = Date.now() + 15_000;
    const loops = Array.from({ length: 8 }, async () => {
      while (running && Date.now() < until) {
        const result = await get(`${own.url}/v2/v1/models`, agent, bearer(token));
        results.push(result);
        if ("error" in result) break;
      }
    });
    const stream = fetch(`${own.url}/v2/v1/sse?n=4&gap=250`, { headers: bearer(token) }).then((response) => response.text());
    // One keep-alive request still waiting for its headers when the signal comes (the loops' own
    // requests may all sit between two requests at that instant: those connections are just closed).
    const slowAgent = new Agent({ keepAlive: true });
    const slow = get(`${own.url}/v2/v1/slow-headers?ms=1500`, slowAgent, bearer(token));
    await new Promise((resolve) => setTimeout(resolve, 600));
    expect(results.filter((result) => "status" in result && result.status === 200).length).toBeGreaterThan(8);
    const stopped = Date.now();
    const code = await own.stop("SIGTERM");
    const took = Date.now() - stopped;
    running = false;
    await Promise.all(loops);
    agent.destroy();
    slowAgent.destroy();
    expect(code).toBe(0);
    // Without closing keep-alive connections the loops kept the edge busy until the grace ran out.
    expect(took).toBeLessThan(grace / 2);
    expect((await stream).match(/data:/g)).toHaveLength(4);
    // Nothing in flight was cut: every answer is a 200; one that was in the core at the signal said
    // close; a loop ends only on its closed connection or the refused reconnect.
    const statuses = results.flatMap((result) => ("status" in result ? [result.status] : []));
    expect(statuses.every((status) => status === 200), JSON.stringify(statuses)).toBe(true);
    expect(await slow).toEqual({ status: 200, connection: "close" });
    const errors = results.flatMap((result) => ("error" in result ? [result.error] : []));
    expect(errors.every((error) => ["ECONNRESET", "ECONNREFUSED", "EPIPE"].includes(error)), JSON.stringify(errors)).toBe(true);
  });

  it("a start-up failure after the core is up (a failing migration) exits 1 with the reason", async () => {
    const own = await startServe({ config: testWranglerConfig(upstream.port) });
    await inviteJson(own.stateDir, "before");
    expect(await own.stop()).toBe(0);
    // Corrupt the persisted D1 database: the core starts, the migration step cannot read it.
    const d1 = join(own.stateDir, "v3", "d1", "miniflare-D1DatabaseObject");
    const files = readdirSync(d1).filter((name) => name.endsWith(".sqlite") && name !== "metadata.sqlite");
    expect(files.length).toBeGreaterThan(0);
    for (const name of files) {
      rmSync(join(d1, `${name}-wal`), { force: true });
      rmSync(join(d1, `${name}-shm`), { force: true });
      writeFileSync(join(d1, name), Buffer.alloc(8192, 0x5a));
    }
    const again = await startServe({ stateDir: own.stateDir, config: testWranglerConfig(upstream.port) }).then(
      async (started) => `started: ${String(await started.stop())}`,
      (error: Error) => error.message,
    );
    expect(again).toMatch(/exited with 1 before listening/);
    expect(again).toMatch(/halo-gate: database migration failed/);
    // …and nothing was left running: the admin commands say the gateway is not there.
    expect((await cli(["list", "--state", own.stateDir])).code).toBe(1);
  });
});
