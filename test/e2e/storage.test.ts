/**
 * A full disk under the real `serve` (issue 7): the state dir is on a small tmpfs mounted here, a
 * filler file takes every byte, and then (the launcher watches the free space: SQLite alone fails a
 * write only when its WAL must grow, which made "full" a matter of luck) every request that needs
 * storage gets 503
 * storage_unavailable with Retry-After — never a 500 — and /healthz says unhealthy; once the filler
 * is gone both recover without a restart. Needs root (mount); refuses to pass silently without it.
 */
import { execFileSync } from "node:child_process";
import { closeSync, mkdirSync, openSync, rmSync, unlinkSync, writeSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startRecordingUpstream, type RecordingUpstream } from "../support/upstream-server";
import { bearer, inviteJson, startServe, tempDir, testWranglerConfig, type Serve } from "./harness";

// Room for the bundled worker (~2 MB), D1 and the Durable Objects; filled in well under a second.
const TMPFS_SIZE = "64m";

let upstream: RecordingUpstream;
let mountPoint = "";
let mounted = false;
let gateway: Serve | undefined;
let filler = "";

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  mountPoint = tempDir("halo-gate-tmpfs-");
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", `size=${TMPFS_SIZE}`, "tmpfs", mountPoint], { stdio: "pipe" });
  } catch (error) {
    const detail = (error as { stderr?: Buffer }).stderr?.toString().trim() || (error as Error).message;
    throw new Error(`test/e2e/storage.test.ts must mount a tmpfs to fill a disk and could not (run the tests as root, or with CAP_SYS_ADMIN): ${detail}`);
  }
  mounted = true;
  filler = join(mountPoint, "filler");
});

afterAll(async () => {
  if (filler) rmSync(filler, { force: true });
  await gateway?.stop();
  await upstream?.close();
  if (mounted) {
    try {
      execFileSync("umount", [mountPoint], { stdio: "pipe" });
    } catch {
      execFileSync("umount", ["-l", mountPoint], { stdio: "pipe" }); // something still holds a file open
    }
  }
  rmSync(mountPoint, { recursive: true, force: true });
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Writes until the filesystem refuses (ENOSPC), in shrinking chunks so not even a page is left. */
function fillDisk(path: string): number {
  const fd = openSync(path, "w");
  let written = 0;
  try {
    for (const size of [1 << 20, 64 << 10, 4 << 10, 512]) {
      const chunk = Buffer.alloc(size, 0x78);
      try {
        for (;;) written += writeSync(fd, chunk);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "ENOSPC") throw error;
      }
    }
  } finally {
    closeSync(fd);
  }
  return written;
}

async function errorCode(response: Response): Promise<string | undefined> {
  const text = await response.text();
  try {
    return (JSON.parse(text) as { error?: { code?: string } }).error?.code;
  } catch {
    return `not JSON: ${text.slice(0, 100)}`;
  }
}

describe("serve on a full disk", () => {
  it("answers 503 storage_unavailable (never 500) and /healthz unhealthy while full, and recovers once space is freed", async () => {
    const stateDir = join(mountPoint, "state");
    mkdirSync(stateDir);
    gateway = await startServe({ stateDir, config: testWranglerConfig(upstream.port) });
    const { token } = await inviteJson(stateDir, "dee", ["--rps", "1000", "--burst", "1000", "--streams", "100", "--scopes", "v2,audio"]);
    const url = gateway.url;
    const models = () => fetch(`${url}/v2/v1/models`, { headers: bearer(token) });
    const completion = () =>
      fetch(`${url}/v2/v1/chat/completions`, { method: "POST", headers: { ...bearer(token), "content-type": "application/json" }, body: JSON.stringify({ messages: [] }) });

    expect((await models()).status).toBe(200);
    // Many isolates' worth of health checks at once share one probe and all answer.
    const flood = await Promise.all(Array.from({ length: 40 }, async () => (await fetch(`${url}/healthz`)).status));
    expect(flood.every((status) => status === 200), flood.join(",")).toBe(true);

    const started = Date.now();
    const bytes = fillDisk(filler);
    const fillMs = Date.now() - started;
    expect(bytes).toBeGreaterThan(0);
    await sleep(1_100); // the health probe's result is reused for a second

    const health = await fetch(`${url}/healthz`);
    expect(health.status).toBe(503);
    expect(health.headers.get("retry-after")).toBe("5");
    expect(await health.json()).toEqual({ status: "unhealthy", reason: "storage" });

    // Every kind of request that touches storage, several times each: a 503 with the code, never a 500.
    const requests: Array<[string, () => Promise<Response>]> = [
      ["GET with a valid token (read-only path)", models],
      ["metered POST (charges the daily quota)", completion],
      ["unknown token (failed-auth bookkeeping)", () => fetch(`${url}/v2/v1/models`, { headers: bearer("sk-halo-00000000000000000000000000000000") })],
      ["ticket (single use recorded)", () => fetch(`${url}/auth/ticket`, { method: "POST", headers: { ...bearer(token), "content-type": "application/json" }, body: JSON.stringify({ scope: "audio" }) })],
    ];
    for (const [what, send] of requests) {
      for (let attempt = 0; attempt < 3; attempt++) {
        const response = await send();
        expect(response.status, what).toBe(503);
        expect(response.headers.get("retry-after"), what).toBe("5");
        expect(await errorCode(response), what).toBe("storage_unavailable");
      }
    }
    // What needs no storage keeps working (a refused token would still be audited: 503 too).
    expect((await fetch(`${url}/api/info`)).status).toBe(200);
    expect((await fetch(`${url}/_halo/connect`)).status).toBe(200);
    expect((await fetch(`${url}/v2/v1/models`, { headers: bearer("not-a-halo-token") })).status).toBe(503);
    expect(gateway.output()).toMatch(/the state dir's disk is full/);

    unlinkSync(filler);
    const freedAt = Date.now();
    let statuses = [0, 0];
    while (Date.now() - freedAt < 5_000) {
      statuses = [(await fetch(`${url}/healthz`)).status, (await models()).status];
      if (statuses.every((status) => status === 200)) break;
      await sleep(100);
    }
    expect(statuses).toEqual([200, 200]);
    expect((await completion()).status).toBe(200);
    console.log(`full-disk test: filled ${Math.round(bytes / 2 ** 20)} MiB in ${fillMs} ms; recovered ${Date.now() - freedAt} ms after the filler was removed`);
  });
});
