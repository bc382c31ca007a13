/**
 * When D1 or Durable Object storage cannot write (a full disk), requests get 503 storage_unavailable
 * with Retry-After, never a 500, and /healthz says unhealthy (issue 7). The full disk itself is
 * exercised through the real serve in test/e2e/storage.test.ts; here the bindings fail on purpose,
 * with the errors measured there.
 */
import { env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import type { QuotaService } from "../../src/quota/quota";
import { isStorageFailure } from "../../src/storage/failure";
import { HEALTH_PROBE_EVERY_MS } from "../../src/storage/health";
import { bearer, gatewayClient, marker, recordedWith, seedToken, testConfig } from "./helpers";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const ROOMY = { rps: 1000, burst: 1000, streams: 100, daily_tokens: 1_000_000 };

/** What miniflare's D1 throws on a full disk (measured): no D1_ERROR prefix, `remote: true`. */
const diskFull = () => Object.assign(new Error("database or disk is full: SQLITE_FULL"), { remote: true });

/** The real D1, except that statements matching `fails` reject with `error` (alone or in a batch). */
function failingDb(fails: (sql: string) => boolean, error: () => Error = diskFull): D1Database {
  const broken = new WeakSet<object>();
  const reject = () => Promise.reject(error());
  return {
    prepare(sql: string) {
      if (!fails(sql)) return env.DB.prepare(sql);
      const statement = { bind: () => statement, first: reject, run: reject, all: reject, raw: reject };
      broken.add(statement);
      return statement as unknown as D1PreparedStatement;
    },
    batch: (statements: D1PreparedStatement[]) => (statements.some((statement) => broken.has(statement)) ? reject() : env.DB.batch(statements)),
    exec: (sql: string) => (fails(sql) ? reject() : env.DB.exec(sql)),
  } as unknown as D1Database;
}
const WRITES = (sql: string) => /^\s*(INSERT|UPDATE|DELETE)/i.test(sql);
const EVERYTHING = () => true;

interface ErrorBody {
  error: { type: string; code: string };
}

async function expectStorageUnavailable(response: Response) {
  expect(response.status).toBe(503);
  expect(response.headers.get("retry-after")).toBe("5");
  expect(((await response.json()) as ErrorBody).error).toEqual(expect.objectContaining({ type: "server_error", code: "storage_unavailable" }));
}

describe("storage failures answer 503 storage_unavailable", () => {
  it("an authenticated request whose token lookup fails (miniflare's D1 on a full disk fails reads too)", async () => {
    const { token } = await seedToken({ limits: ROOMY });
    const call = gatewayClient(testConfig(), {}, { env: { DB: failingDb(EVERYTHING) } });
    const m = marker();
    await expectStorageUnavailable(await call("/v2/v1/models", { headers: bearer(token, { "x-request-id": m }) }));
    await expectStorageUnavailable(await call("/auth/ticket", { method: "POST", headers: bearer(token) }));
    expect(await recordedWith(m)).toHaveLength(0);
  });

  it("a request whose quota object cannot write (a Durable Object reset by a failed write)", async () => {
    const { token } = await seedToken({ limits: ROOMY });
    const cannotWrite: QuotaService = {
      authorize: () => Promise.reject(Object.assign(new Error("database or disk is full: SQLITE_FULL"), { durableObjectReset: true })),
      profile: () => Promise.resolve(null),
      renew: () => Promise.resolve(true),
      release: () => Promise.resolve(),
    };
    const m = marker();
    await expectStorageUnavailable(await gatewayClient(testConfig(), { quota: () => cannotWrite })("/v2/v1/models", { headers: bearer(token, { "x-request-id": m }) }));
    expect(await recordedWith(m)).toHaveLength(0);
  });

  it("when only writes fail, a valid token's request still works: last_used_at and the audit are off the request path", async () => {
    const { token } = await seedToken({ limits: ROOMY });
    const call = gatewayClient(testConfig(), {}, { env: { DB: failingDb(WRITES) } });
    expect((await call("/v2/v1/models", { headers: bearer(token) })).status).toBe(200);
    expect((await call("/v2/v1/models", { headers: bearer("sk-halo-00000000000000000000000000000000") })).status).toBe(401);
  });

  it("any other failure is still a 500 internal_error, with no detail", async () => {
    const { token } = await seedToken({ limits: ROOMY });
    const call = gatewayClient(testConfig(), {}, { env: { DB: failingDb(EVERYTHING, () => new TypeError("x is not a function")) } });
    const response = await call("/v2/v1/models", { headers: bearer(token) });
    expect(response.status).toBe(500);
    expect(((await response.json()) as ErrorBody).error.code).toBe("internal_error");
  });

  it.each([
    ["miniflare D1, full disk", diskFull(), true],
    ["D1 result error", new Error("D1_ERROR: no such table: health: SQLITE_ERROR"), true],
    ["D1 exec error", new Error("D1_EXEC_ERROR: Error in line 1: near x: syntax error"), true],
    ["Durable Object put, full disk", Object.assign(new Error("database or disk is full: SQLITE_FULL"), { durableObjectReset: true }), true],
    ["reset object", Object.assign(new Error("Durable Object reset because its code was updated."), { durableObjectReset: true }), true],
    ["storage timeout", new Error("Durable Object storage operation exceeded timeout which caused object to be reset."), true],
    ["wrapped", new Error("could not record", { cause: diskFull() }), true],
    ["a bug", new TypeError("Cannot read properties of undefined"), false],
    ["a table name, not an error code", new Error("cannot read sqlite_master from here"), false],
    ["upstream", new Error("Network connection lost."), false],
    ["not an error", "SQLITE_FULL", false],
  ])("recognises %s: %s", (_what, error, expected) => {
    expect(isStorageFailure(error)).toBe(expected);
  });
});

describe("/healthz probes a real write", () => {
  it("is ok while D1 takes writes, and unhealthy (503, Retry-After) while it does not", async () => {
    const healthy = await gatewayClient()("/healthz");
    expect(healthy.status).toBe(200);
    expect(await healthy.json()).toEqual({ status: "ok" });
    const sick = await gatewayClient(testConfig(), {}, { env: { DB: failingDb(WRITES) } })("/healthz");
    expect(sick.status).toBe(503);
    expect(sick.headers.get("retry-after")).toBe("5");
    expect(sick.headers.get("cache-control")).toBe("no-store");
    expect(await sick.json()).toEqual({ status: "unhealthy", reason: "storage" });
  });

  it("writes the one health row", async () => {
    const before = Date.now();
    await sleep(HEALTH_PROBE_EVERY_MS + 50);
    expect((await gatewayClient()("/healthz")).status).toBe(200);
    const rows = (await env.DB.prepare("SELECT id, at FROM health").all<{ id: number; at: number }>()).results;
    expect(rows).toHaveLength(1);
    expect(rows[0]!.id).toBe(1);
    expect(rows[0]!.at).toBeGreaterThanOrEqual(before);
  });

  it("a flood of 50 health checks costs one write; the next second's check writes again", async () => {
    // Count the probe's writes with triggers on this test's own copy of the database.
    await env.DB.batch([
      env.DB.prepare("CREATE TABLE IF NOT EXISTS health_probe_writes (at INTEGER NOT NULL)"),
      env.DB.prepare("CREATE TRIGGER IF NOT EXISTS health_probe_insert AFTER INSERT ON health BEGIN INSERT INTO health_probe_writes VALUES (NEW.at); END"),
      env.DB.prepare("CREATE TRIGGER IF NOT EXISTS health_probe_update AFTER UPDATE ON health BEGIN INSERT INTO health_probe_writes VALUES (NEW.at); END"),
    ]);
    const writes = async () => (await env.DB.prepare("SELECT count(*) AS n FROM health_probe_writes").first<{ n: number }>())!.n;
    await sleep(HEALTH_PROBE_EVERY_MS + 50);
    const start = await writes();
    const call = gatewayClient();
    const statuses = await Promise.all(Array.from({ length: 50 }, async () => (await call("/healthz")).status));
    expect(statuses.every((status) => status === 200)).toBe(true);
    expect(await writes()).toBe(start + 1);
    await sleep(HEALTH_PROBE_EVERY_MS + 50);
    expect((await call("/healthz")).status).toBe(200);
    expect(await writes()).toBe(start + 2);
  });
});
