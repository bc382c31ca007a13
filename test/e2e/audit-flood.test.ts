/**
 * Bounded audit growth through the real `serve` (issue 9, item 7): one address sends requests without
 * credentials as fast as one keep-alive connection goes for 20 s; the audit table grows by at most
 * one row per aligned minute (so at most 2 for any 20 s), and the rows' counts add up to the
 * requests sent. The rows are counted where the operator counts them: `halo-gate audit` NDJSON.
 */
import { Client } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startRecordingUpstream, type RecordingUpstream } from "../support/upstream-server";
import { cli, startServe, testWranglerConfig } from "./harness";

const FLOOD_MS = 20_000;
/** The flood is bounded in count too, whatever the machine's speed. */
const MAX_REQUESTS = 200_000;
const WINDOW_MS = 60_000;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface AuditLine {
  id: number;
  time: string;
  kind: string;
  action: string;
  route: string | null;
  status: number | null;
  client: string | null;
  reason: string | null;
  count: number;
}

let upstream: RecordingUpstream;
beforeAll(async () => {
  upstream = await startRecordingUpstream();
});
afterAll(async () => upstream?.close());

describe("a flood without credentials", () => {
  it("grows the audit by at most one row per aligned minute, and the counts add up to the requests sent", async () => {
    const gateway = await startServe({ config: testWranglerConfig(upstream.port) });
    const client = new Client(gateway.url, { pipelining: 1, keepAliveTimeout: 10_000 });
    let connections = 0;
    client.on("connect", () => connections++);
    try {
      const before = await auditLines(gateway.stateDir);
      const started = Date.now();
      const statuses = new Map<number, number>();
      let sent = 0;
      while (Date.now() - started < FLOOD_MS && sent < MAX_REQUESTS) {
        const response = await client.request({ path: "/v2/v1/models", method: "GET" });
        await response.body.dump();
        statuses.set(response.statusCode, (statuses.get(response.statusCode) ?? 0) + 1);
        sent++;
      }
      const ended = Date.now();
      await sleep(2_500); // the auth audit is flushed about a second after a batch starts
      const lines = await auditLines(gateway.stateDir);
      const added = lines.filter((line) => !before.some((old) => old.id === line.id));
      const flood = added.filter((line) => line.kind === "auth" && line.client === "127.0.0.1");
      const seconds = (ended - started) / 1000;
      const windows = Math.floor(ended / WINDOW_MS) - Math.floor(started / WINDOW_MS) + 1;
      console.log(
        `audit flood: ${sent} requests in ${seconds.toFixed(1)} s (${Math.round(sent / seconds)}/s) on ${connections} connection(s); ` +
          `${added.length} audit row(s) added (${flood.map((line) => `${line.reason}×${line.count}`).join(", ")}) over ${windows} aligned minute(s)`,
      );
      expect(Object.fromEntries(statuses)).toEqual({ 401: sent });
      expect(connections).toBe(1);
      expect(sent).toBeGreaterThan(1_000);
      // The bound: one row per aligned minute the flood touched (a 20 s flood touches at most 2).
      expect(added.length).toBeLessThanOrEqual(windows);
      expect(added.length).toBeLessThanOrEqual(2);
      expect(flood).toHaveLength(added.length);
      expect(flood.every((line) => line.action === "deny" && line.reason === "missing" && line.route === "v2" && line.status === 401)).toBe(true);
      expect(flood.reduce((sum, line) => sum + line.count, 0)).toBe(sent);
      // Every exported line carries its count.
      expect(lines.every((line) => Number.isInteger(line.count) && line.count >= 1)).toBe(true);
    } finally {
      await client.close();
      await gateway.stop();
    }
  }, 90_000);
});

async function auditLines(stateDir: string): Promise<AuditLine[]> {
  const result = await cli(["audit", "--state", stateDir]);
  expect(result.code, result.stderr).toBe(0);
  return result.stdout
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line) => JSON.parse(line) as AuditLine);
}
