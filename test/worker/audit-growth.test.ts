/**
 * Bounded audit growth (issue 9, item 7): identical denials from one address are one row per
 * aggregation window with a `count`, so a flood without credentials adds at most one row per route
 * and reason per minute; allow rows stay one per request. The clock is the gateway's (`now`), so the
 * windows are crossed without waiting.
 */
import { createExecutionContext, env, waitOnExecutionContext } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { auditRecord, readAudit, type AuditRow } from "../../src/audit/audit-log";
import { AUTH_AUDIT_WINDOW_MS } from "../../src/audit/auth-audit";
import { createGateway } from "../../src/gateway";
import { bearer, gatewayClient, seedToken, testConfig, viaEdge } from "./helpers";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const ROOMY = { rps: 1000, burst: 1000, streams: 100, daily_tokens: 1_000_000 };
let nextAddress = 1;
/** A client address of its own for each test, so rows of other tests never mix in. */
const freshAddress = () => `100.64.77.${nextAddress++}`;
const edge = (address: string) => ({ "x-halo-edge-secret": "test-edge-secret", "x-halo-client-addr": address });

async function rowsOf(address: string): Promise<AuditRow[]> {
  const { results } = await env.DB.prepare("SELECT * FROM audit WHERE kind = 'auth' AND client = ?1 ORDER BY id").bind(address).all<AuditRow>();
  return results;
}

/** A gateway whose clock the test moves; decisions are flushed 20 ms after the first of a batch. */
function clocked(start: number, viaTheEdge = true) {
  const clock = { now: start };
  const app = createGateway(testConfig(), { now: () => clock.now, auditFlushMs: 20 });
  // Without an edge (wrangler dev) every client is `unknown`, the one address the failed-auth throttle never blocks.
  const bindings = viaTheEdge ? env : { ...env, EDGE_SECRET: undefined };
  /** `count` requests at once in one execution context (one flush), or one after another (a flush each). */
  const flood = async (address: string, count: number, options: { path?: string; headers?: Record<string, string>; parallel?: boolean } = {}) => {
    const statuses: number[] = [];
    const one = async (ctx: ExecutionContext) => {
      const headers = viaTheEdge ? viaEdge({ ...options.headers, ...edge(address) }) : new Headers(options.headers);
      const response = await app.fetch(new Request(`http://gateway.test${options.path ?? "/v2/v1/models"}`, { headers }), bindings, ctx);
      statuses.push(response.status);
      await response.arrayBuffer();
    };
    if (options.parallel) {
      const ctx = createExecutionContext();
      await Promise.all(Array.from({ length: count }, () => one(ctx)));
      await waitOnExecutionContext(ctx);
    } else {
      for (let index = 0; index < count; index++) {
        const ctx = createExecutionContext();
        await one(ctx);
        await waitOnExecutionContext(ctx);
      }
    }
    return statuses;
  };
  return { clock, flood };
}

/** The start of the window after the current one. */
const windowStart = () => (Math.floor(Date.now() / AUTH_AUDIT_WINDOW_MS) + 1) * AUTH_AUDIT_WINDOW_MS;

describe("denials are aggregated per address, route, reason and window", () => {
  it("a flood without credentials adds one row per window however many requests it sends, and the counts add up", async () => {
    const address = freshAddress();
    const start = windowStart();
    const { clock, flood } = clocked(start + 1_000);
    // Window 1: 400 at once (one flush) and then 40 one by one (40 flushes, each adding to the same row).
    expect(new Set(await flood(address, 400, { parallel: true }))).toEqual(new Set([401]));
    clock.now += 30_000;
    await flood(address, 40);
    // Window 2, and window 3 reached by the last second of window 2 turning over.
    clock.now += 28_000; // 1 + 30 + 28 = 59 s: the last second of window 1
    await flood(address, 5);
    clock.now += 1_000; // window 2
    await flood(address, 300, { parallel: true });
    clock.now += AUTH_AUDIT_WINDOW_MS; // window 3
    await flood(address, 7);
    const rows = await rowsOf(address);
    expect(rows.map((row) => [row.action, row.reason, row.route, row.status, row.count])).toEqual([
      ["deny", "missing", "v2", 401, 445],
      ["deny", "missing", "v2", 401, 300],
      ["deny", "missing", "v2", 401, 7],
    ]);
    expect(rows.reduce((sum, row) => sum + row.count, 0)).toBe(752);
    // The row's time is the first denial of its window; its detail names the window.
    expect(rows[0]!.at).toBe(start + 1_000);
    expect(JSON.parse(rows[0]!.detail!)).toEqual({ window: { from: new Date(start).toISOString(), to: new Date(start + AUTH_AUDIT_WINDOW_MS).toISOString() } });
  }, 20_000);

  it("THE BOUND: trying every anonymous reason on every route for a minute adds at most 3 × (authenticated routes + 2) rows", async () => {
    // The address `unknown` (no edge) is never throttled, so every attempt is a denial to audit. Its
    // rows from other tests are told apart by time: this minute is one of the year 2100.
    const start = Date.UTC(2100, 0, 1);
    const { clock, flood } = clocked(start, false);
    const routes = ["/v2/x", "/lemon/x", "/sd/x", "/down/x", "/audio/ws"];
    const authenticated = [...routes, "/api/me"]; // (/auth/ticket, the other gateway path, takes a POST)
    const anonymous: Array<Record<string, string>> = [{}, { authorization: "Bearer" }, { authorization: "Bearer sk-halo-00000000000000000000000000000000" }];
    let denied = 0;
    // 10 requests per route and reason every 15 s, all minute long.
    for (let second = 0; second < 60; second += 15) {
      for (const path of authenticated) {
        // 401 (missing, unknown) and 400 (malformed): denied, none throttled (429).
        for (const headers of anonymous) denied += (await flood("unknown", 10, { path, headers, parallel: true })).filter((status) => status === 401 || status === 400).length;
      }
      clock.now += 15_000;
    }
    expect(denied).toBe(4 * authenticated.length * anonymous.length * 10);
    const { results: rows } = await env.DB.prepare("SELECT * FROM audit WHERE kind = 'auth' AND client = 'unknown' AND at >= ?1 AND at < ?2 ORDER BY id")
      .bind(start, start + AUTH_AUDIT_WINDOW_MS)
      .all<AuditRow>();
    expect(rows.length).toBeLessThanOrEqual(anonymous.length * (routes.length + 2));
    expect(rows.length).toBe(anonymous.length * authenticated.length); // (no /auth/ticket requests here)
    expect(new Set(rows.map((row) => row.reason))).toEqual(new Set(["missing", "malformed", "unknown"]));
    expect(rows.reduce((sum, row) => sum + row.count, 0)).toBe(denied);
  }, 30_000);

  it("different addresses, routes and reasons are different rows", async () => {
    const [first, second] = [freshAddress(), freshAddress()];
    const { flood } = clocked(windowStart());
    await flood(first, 3, { parallel: true });
    await flood(second, 2, { parallel: true });
    await flood(first, 4, { path: "/sd/x", parallel: true });
    await flood(first, 5, { headers: { authorization: "Bearer" }, parallel: true });
    expect((await rowsOf(first)).map((row) => [row.route, row.reason, row.count])).toEqual([
      ["v2", "missing", 3],
      ["sd", "missing", 4],
      ["v2", "malformed", 5],
    ]);
    expect((await rowsOf(second)).map((row) => [row.route, row.reason, row.count])).toEqual([["v2", "missing", 2]]);
  });

  it("a valid token's denials (scope, quota) are aggregated per token; its allows stay one row per request", async () => {
    const address = freshAddress();
    const { token, handle, tokenId } = await seedToken({ scopes: ["v2"], limits: { ...ROOMY, rps: 1, burst: 3 } });
    const { flood } = clocked(Date.now());
    const statuses = await flood(address, 8, { headers: bearer(token) });
    expect(statuses).toEqual([200, 200, 200, 429, 429, 429, 429, 429]);
    await flood(address, 6, { path: "/sd/x", headers: bearer(token) });
    const rows = await rowsOf(address);
    expect(rows.map((row) => [row.action, row.reason, row.route, row.status, row.count, row.handle, row.token_id])).toEqual([
      ["allow", null, "v2", 200, 1, handle, tokenId],
      ["allow", null, "v2", 200, 1, handle, tokenId],
      ["allow", null, "v2", 200, 1, handle, tokenId],
      ["deny", "quota:rate", "v2", 429, 5, handle, tokenId],
      ["deny", "scope", "sd", 403, 6, handle, tokenId],
    ]);
    expect(rows.filter((row) => row.action === "allow").every((row) => row.aggregate_key === null)).toBe(true);
  }, 20_000);

  it("the export carries count on every row", async () => {
    const address = freshAddress();
    const { token } = await seedToken();
    const at = Date.now();
    const call = gatewayClient(testConfig(), { now: () => at }); // one window, however slow the machine
    for (let index = 0; index < 3; index++) await call("/v2/v1/models", { headers: edge(address) });
    await call("/v2/v1/models", { headers: bearer(token, edge(address)) });
    await sleep(50);
    const exported = (await readAudit(env.DB, 0, 0, 100_000)).filter((row) => row.client === address).map(auditRecord);
    expect(exported.map((record) => [record.action, record.reason, record.count])).toEqual([
      ["deny", "missing", 3],
      ["allow", null, 1],
    ]);
    expect(Object.keys(exported[0]!)).not.toContain("aggregate_key");
  });
});
