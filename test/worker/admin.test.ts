import { createExecutionContext, env, waitOnExecutionContext } from "cloudflare:test";
import { beforeEach, describe, expect, it } from "vitest";
import sample from "../fixtures/bearers.sample.txt?raw";
import { createAdminApi } from "../../src/admin/api";
import { hashToken } from "../../src/auth/token";
import { sweepExpiredTokens } from "../../src/auth/sweep";
import { bearer, gatewayClient, testConfig } from "./helpers";

const OPERATOR = "operator-secret-for-tests";
const config = testConfig({ max_users: 10, default_scopes: ["v2"] });
const call = gatewayClient(config);

async function adminEnv() {
  return { ...env, ADMIN_TOKEN_SHA256: await hashToken(OPERATOR) };
}

function adminClient(now: () => number = Date.now) {
  const api = createAdminApi(config, now);
  return async (method: string, path: string, json?: unknown, token = OPERATOR) => {
    const ctx = createExecutionContext();
    const response = await api.fetch(
      new Request(`http://admin.test${path}`, {
        method,
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        ...(json === undefined ? {} : { body: JSON.stringify(json) }),
      }),
      await adminEnv(),
      ctx,
    );
    await waitOnExecutionContext(ctx);
    const text = await response.text();
    const isJson = response.headers.get("content-type")?.startsWith("application/json");
    return { status: response.status, text, json: isJson ? (JSON.parse(text) as Record<string, unknown>) : null };
  };
}

beforeEach(async () => {
  await env.DB.batch([env.DB.prepare("DELETE FROM audit"), env.DB.prepare("DELETE FROM tokens"), env.DB.prepare("DELETE FROM users")]);
});

describe("admin API", () => {
  const admin = adminClient();

  it("refuses a missing or wrong operator token", async () => {
    expect((await admin("GET", "/admin/users", undefined, "wrong")).status).toBe(401);
    expect((await admin("GET", "/admin/users", undefined, "")).status).toBe(401);
    expect((await admin("GET", "/admin/users")).status).toBe(200);
  });

  it("invite → the token works → revoke → the very next request is 401", async () => {
    const invited = await admin("POST", "/admin/users", { handle: "alice" });
    expect(invited.status).toBe(201);
    const token = invited.json?.token as string;
    expect(token).toMatch(/^sk-halo-[0-9a-f]{32}$/);
    expect(invited.json?.scopes).toEqual(["v2"]);
    const ttl = Date.parse(invited.json?.expires_at as string) - Date.parse(invited.json?.issued_at as string);
    expect(ttl).toBe(10 * 86_400_000);
    expect((await call("/v2/v1/models", { headers: bearer(token) })).status).toBe(200);
    expect((await admin("POST", "/admin/users/alice/revoke")).status).toBe(200);
    expect((await call("/v2/v1/models", { headers: bearer(token) })).status).toBe(401);
  });

  it("20 concurrent invites with 9 seats taken give exactly one success, and the refusal names the cap", async () => {
    for (let index = 0; index < 9; index++) expect((await admin("POST", "/admin/users", { handle: `seat${index}` })).status).toBe(201);
    const results = await Promise.all(Array.from({ length: 20 }, (_, index) => admin("POST", "/admin/users", { handle: `racer${index}` })));
    expect(results.filter((result) => result.status === 201)).toHaveLength(1);
    const refused = results.filter((result) => result.status === 409);
    expect(refused).toHaveLength(19);
    expect(refused[0]?.text).toContain("max_users = 10");
    expect(refused[0]?.text).toContain("10 of max_users");
    const seats = await env.DB.prepare("SELECT COUNT(*) AS n FROM tokens WHERE revoked_at IS NULL").first<{ n: number }>();
    expect(seats?.n).toBe(10);
  });

  it("refuses re-inviting an active handle (use rotate), and a revoked seat frees a place", async () => {
    for (let index = 0; index < 10; index++) await admin("POST", "/admin/users", { handle: `u${index}` });
    const again = await admin("POST", "/admin/users", { handle: "u3" });
    expect(again.status).toBe(409);
    expect(again.text).toContain("rotate");
    expect((await admin("POST", "/admin/users", { handle: "newcomer" })).status).toBe(409);
    await admin("POST", "/admin/users/u3/revoke");
    expect((await admin("POST", "/admin/users", { handle: "newcomer" })).status).toBe(201);
    expect((await admin("POST", "/admin/users", { handle: "u3" })).status).toBe(409);
  });

  it("an expired user takes no seat and may be invited again", async () => {
    let now = Date.now();
    const timed = adminClient(() => now);
    await timed("POST", "/admin/users", { handle: "old", ttl: "30m" });
    now += 31 * 60_000;
    expect((await timed("POST", "/admin/users", { handle: "old" })).status).toBe(201);
  });

  it("rotate keeps scopes and expiry, revokes the old token", async () => {
    const first = await admin("POST", "/admin/users", { handle: "bob", scopes: ["v2", "sd"], ttl: "24h" });
    // Warm the user's object first: it must learn of the rotation, not just reload on a miss.
    expect((await call("/sd/x", { headers: bearer(first.json?.token as string) })).status).toBe(200);
    const rotated = await admin("POST", "/admin/users/bob/rotate");
    expect(rotated.status).toBe(200);
    expect(rotated.json?.scopes).toEqual(["v2", "sd"]);
    expect(rotated.json?.expires_at).toBe(first.json?.expires_at);
    expect(rotated.json?.token).not.toBe(first.json?.token);
    expect((await call("/sd/x", { headers: bearer(first.json?.token as string) })).status).toBe(401);
    expect((await call("/sd/x", { headers: bearer(rotated.json?.token as string) })).status).toBe(200);
  });

  it("update changes scopes, ttl (from now) and limits", async () => {
    await admin("POST", "/admin/users", { handle: "carol" });
    const updated = await admin("PATCH", "/admin/users/carol", { scopes: ["sd"], ttl: "1h", rps: 2, streams: 3 });
    expect(updated.status).toBe(200);
    expect(updated.json?.scopes).toEqual(["sd"]);
    expect(Date.parse(updated.json?.expires_at as string) - Date.now()).toBeGreaterThan(3_500_000);
    // A new rate leaves the burst as it was (the config's 10): an update changes only what it is given.
    expect(updated.json?.limits).toMatchObject({ rps: 2, burst: 10, streams: 3 });
  });

  it("rotate --grace keeps the old token working for the grace, then refuses it", async () => {
    let clock = Date.now();
    const timed = adminClient(() => clock);
    const callAt = gatewayClient(config, { now: () => clock });
    const first = await timed("POST", "/admin/users", { handle: "gail", scopes: ["v2"], ttl: "24h" });
    const old = first.json?.token as string;
    expect((await callAt("/v2/v1/models", { headers: bearer(old) })).status).toBe(200);
    const rotated = await timed("POST", "/admin/users/gail/rotate", { grace: "10m" });
    expect(rotated.status).toBe(200);
    expect((await callAt("/v2/v1/models", { headers: bearer(old) })).status).toBe(200);
    expect((await callAt("/v2/v1/models", { headers: bearer(rotated.json?.token as string) })).status).toBe(200);
    clock += 10 * 60_000 + 1;
    expect((await callAt("/v2/v1/models", { headers: bearer(old) })).status).toBe(401);
    expect((await callAt("/v2/v1/models", { headers: bearer(rotated.json?.token as string) })).status).toBe(200);
    expect((await timed("POST", "/admin/users/gail/rotate", { grace: "30d" })).status).toBe(400);
  });

  it("an update reaches the user's object before it returns: scopes and limits apply to the very next request", async () => {
    const invited = await admin("POST", "/admin/users", { handle: "dave", scopes: ["v2", "sd"], rps: 100, burst: 100 });
    const token = invited.json?.token as string;
    expect((await call("/v2/v1/models", { headers: bearer(token) })).status).toBe(200);
    expect((await call("/sd/x", { headers: bearer(token) })).status).toBe(200);
    await admin("PATCH", "/admin/users/dave", { scopes: ["sd"], rps: 1, burst: 1 });
    expect((await call("/v2/v1/models", { headers: bearer(token) })).status).toBe(403);
    const limited = await call("/sd/x", { headers: bearer(token) });
    expect(limited.headers.get("x-ratelimit-limit-requests")).toBe("1");
  });

  it.each([
    [{ handle: "Bad Handle" }, "handle"],
    [{ handle: "ok", scopes: ["nosuch"] }, "nosuch"],
    [{ handle: "ok", ttl: "forever" }, "ttl"],
    [{ handle: "ok", rps: -1 }, "rps"],
    [{ handle: "ok", scope: ["v2"] }, "scope"],
  ])("a bad invite body %j → 400 naming %s, nothing stored", async (payload, named) => {
    const result = await admin("POST", "/admin/users", payload);
    expect(result.status).toBe(400);
    expect(result.text).toContain(named);
    expect((await env.DB.prepare("SELECT COUNT(*) AS n FROM tokens").first<{ n: number }>())?.n).toBe(0);
  });

  it("imports the Caddy sample idempotently, expired lines as expired", async () => {
    const now = Date.parse("2026-11-25T12:00:00Z");
    const timed = adminClient(() => now);
    const first = await timed("POST", "/admin/import-bearers", { content: sample });
    expect(first.status).toBe(200);
    const report = first.json as { imported: Array<{ handle: string; status: string }>; malformed: unknown[] };
    expect(report.imported.map((entry) => [entry.handle, entry.status])).toEqual([
      ["alice", "expired"],
      ["bob", "active"],
      ["carol-phone", "active"],
    ]);
    expect(report.malformed).toEqual([]);
    const second = (await timed("POST", "/admin/import-bearers", { content: sample })).json as { imported: unknown[]; skipped: unknown[] };
    expect(second.imported).toHaveLength(0);
    expect(second.skipped).toHaveLength(3);
    // The imported plaintext works unchanged (bob's line from the sample).
    const bob = gatewayClient(config, { now: () => now });
    expect((await bob("/v2/v1/models", { headers: bearer("sk-halo-9b2e47d1c0a35f86e1d7b94a2c6f0e35") })).status).toBe(200);
  });

  it("reports malformed lines by number, never revives a revoked token, and counts seats", async () => {
    const now = Date.parse("2026-11-25T12:00:00Z");
    const timed = adminClient(() => now);
    await timed("POST", "/admin/import-bearers", { content: sample });
    await timed("POST", "/admin/users/bob/revoke");
    const content = [
      "# header",
      "sk-halo-9b2e47d1c0a35f86e1d7b94a2c6f0e35 # bob # issued 2026-11-20T09:30Z # expires 2026-11-30T09:30Z",
      "sk-halo-NOTHEX # eve # issued 2026-11-20T09:30Z # expires 2026-11-30T09:30Z",
      "sk-halo-11111111111111111111111111111111 # dave # issued yesterday # expires 2026-11-30T09:30Z",
      "just garbage",
      "sk-halo-22222222222222222222222222222222 # erin # issued 2026-11-20T09:30:00Z # expires 2026-11-30T09:30:00Z",
      "sk-halo-22222222222222222222222222222222 # erin # issued 2026-11-20T09:30:00Z # expires 2026-11-30T09:30:00Z",
    ].join("\n");
    const report = (await timed("POST", "/admin/import-bearers", { content })).json as {
      imported: Array<{ line: number }>;
      skipped: Array<{ line: number; reason: string }>;
      malformed: Array<{ line: number }>;
    };
    expect(report.malformed.map((entry) => entry.line)).toEqual([3, 4, 5]);
    expect(report.skipped).toEqual([
      { line: 2, handle: "bob", reason: "revoked earlier; a revoked token is never revived" },
      { line: 7, handle: "erin", reason: "duplicate of line 6" },
    ]);
    expect(report.imported.map((entry) => entry.line)).toEqual([6]);
    const bob = gatewayClient(config, { now: () => now });
    expect((await bob("/v2/v1/models", { headers: bearer("sk-halo-9b2e47d1c0a35f86e1d7b94a2c6f0e35") })).status).toBe(401);
  });

  it("lists every user with status, hint and limits, never a token or hash", async () => {
    const invited = await admin("POST", "/admin/users", { handle: "dan", daily_tokens: 5000 });
    await admin("POST", "/admin/users", { handle: "eve" });
    await admin("POST", "/admin/users/eve/revoke");
    const list = await admin("GET", "/admin/users");
    const users = list.json?.users as Array<{ handle: string; status: string; token_hint: string; limits: { daily_tokens: number } }>;
    expect(users.map((user) => [user.handle, user.status])).toEqual([["dan", "active"], ["eve", "revoked"]]);
    expect(users[0]?.token_hint).toBe(`${(invited.json?.token as string).slice(0, 12)}…`);
    expect(users[0]?.limits.daily_tokens).toBe(5000);
    expect((users[0] as unknown as { tokens_today: number }).tokens_today).toBe(0);
    expect(list.text).not.toContain(invited.json?.token as string);
    expect(list.text).not.toContain(await hashToken(invited.json?.token as string));
  });

  it("writes every admin action to the audit log before returning; no token or hash in it", async () => {
    const invited = await admin("POST", "/admin/users", { handle: "fay" });
    const rotated = await admin("POST", "/admin/users/fay/rotate");
    await admin("POST", "/admin/users/fay/revoke");
    await admin("POST", "/admin/users", { handle: "fay", scopes: ["nosuch"] });
    const audit = await admin("GET", "/admin/audit?since=2000-01-01T00:00:00Z");
    const lines = audit.text.trim().split("\n").map((line) => JSON.parse(line) as { action: string; handle: string; time: string });
    // The last line says the export is whole (and how many events it carried).
    expect(lines.at(-1)).toEqual({ end_of_audit: true, rows: 3 });
    const events = lines.slice(0, -1);
    expect(events.map((event) => event.action)).toEqual(["invite", "rotate", "revoke"]);
    expect(events[0]?.time).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
    for (const secret of [invited.json?.token as string, rotated.json?.token as string]) {
      expect(audit.text).not.toContain(secret);
      expect(audit.text).not.toContain(await hashToken(secret));
    }
    expect((await admin("GET", "/admin/audit?since=yesterday")).status).toBe(400);
  });
});

describe("audit export", () => {
  it("an export the database cut short lacks its closing line, so the CLI can tell", async () => {
    const insert = env.DB.prepare("INSERT INTO audit (at, kind, action, status) VALUES (?1, 'admin', 'invite', 200)");
    await env.DB.batch(Array.from({ length: 600 }, (_, index) => insert.bind(Date.now() + index)));
    let pages = 0;
    // A D1 that answers the first page of the export and fails on the second (a disk error mid-export).
    const failing = new Proxy(env.DB, {
      get(target, key) {
        if (key !== "prepare") return Reflect.get(target, key);
        return (sql: string) => {
          if (sql.startsWith("SELECT * FROM audit") && ++pages === 2) throw new Error("D1_ERROR: disk I/O error");
          return target.prepare(sql);
        };
      },
    });
    const api = createAdminApi(config);
    const ctx = createExecutionContext();
    const response = await api.fetch(new Request("http://admin.test/admin/audit", { headers: { authorization: `Bearer ${OPERATOR}` } }), { ...(await adminEnv()), DB: failing }, ctx);
    const text = await response.text().catch(() => "");
    await waitOnExecutionContext(ctx);
    expect(text).not.toContain("end_of_audit");
    expect(text.split("\n").filter(Boolean).length).toBeLessThanOrEqual(500);
  });
});

describe("cron sweep", () => {
  it("records and marks expired tokens once; a second run changes nothing", async () => {
    let now = Date.now();
    const timed = adminClient(() => now);
    await timed("POST", "/admin/users", { handle: "gus", ttl: "30m" });
    await timed("POST", "/admin/users", { handle: "hal" });
    now += 31 * 60_000;
    expect(await sweepExpiredTokens(env.DB, config, now)).toEqual({ expired: 1, pruned: 0 });
    const snapshot = async () =>
      JSON.stringify([
        (await env.DB.prepare("SELECT * FROM tokens ORDER BY token_id").all()).results,
        (await env.DB.prepare("SELECT * FROM audit ORDER BY id").all()).results,
      ]);
    const before = await snapshot();
    expect(await sweepExpiredTokens(env.DB, config, now)).toEqual({ expired: 0, pruned: 0 });
    expect(await snapshot()).toBe(before);
    const row = await env.DB.prepare("SELECT action, handle FROM audit WHERE kind = 'cron'").first();
    expect(row).toEqual({ action: "expire", handle: "gus" });
  });

  it("prunes audit rows past retention", async () => {
    const now = Date.now();
    await env.DB.prepare("INSERT INTO audit (at, kind, action) VALUES (?1, 'admin', 'old'), (?2, 'admin', 'recent')")
      .bind(now - 91 * 86_400_000, now - 1000)
      .run();
    expect((await sweepExpiredTokens(env.DB, config, now)).pruned).toBe(1);
  });
});
