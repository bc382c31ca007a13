/** Per-user quotas on the UserQuota Durable Object, metering, 429s, throttling, audit (docs/contract.md §6). */
import { abortAllDurableObjects, createExecutionContext, env, runInDurableObject, waitOnExecutionContext } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { hashToken } from "../../src/auth/token";
import { createGateway } from "../../src/gateway";
import { dayKey, nextMidnight } from "../../src/quota/day";
import { usageSnapshot } from "../../src/quota/durable-object-quota";
import { bearer, gatewayClient, marker, recordedWith, revokeAsAdmin, seedToken, testConfig, upstreamBase, viaEdge } from "./helpers";

const ROOMY = { rps: 1000, burst: 1000, streams: 100, daily_tokens: 1_000_000 };
const json = (body: unknown) => ({ method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
const snapshot = (handle: string, now = Date.now(), timezone = "UTC") => usageSnapshot(env.USER_QUOTA, handle, now, timezone);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function post(call: ReturnType<typeof gatewayClient>, path: string, token: string, body: unknown, extra: Record<string, string> = {}) {
  const init = json(body);
  return call(path, { ...init, headers: { ...init.headers, ...bearer(token), ...extra } });
}

describe("token bucket", () => {
  it("32 concurrent requests against a bucket of 5: exactly 5 admitted, refused ones charge nothing", async () => {
    const { token, handle } = await seedToken({ limits: { rps: 0.001, burst: 5, streams: 100, daily_tokens: 1_000_000 } });
    const call = gatewayClient();
    const responses = await Promise.all(Array.from({ length: 32 }, () => post(call, "/v2/v1/chat/completions", token, { messages: [] })));
    const statuses = responses.map((response) => response.status);
    expect(statuses.filter((status) => status === 200)).toHaveLength(5);
    expect(statuses.filter((status) => status === 429)).toHaveLength(27);
    const refused = responses.find((response) => response.status === 429)!;
    expect(((await refused.json()) as { error: { code: string } }).error.code).toBe("rate_limit_exceeded");
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    expect(refused.headers.get("ratelimit-policy")).toContain('"requests";q=5');
    expect(refused.headers.get("ratelimit")).toContain('"requests";r=0');
    // Only the 5 admitted requests were charged (10 tokens each: 7 prompt + 3 completion).
    expect((await snapshot(handle)).tokensToday).toBe(50);
    expect((await snapshot(handle)).metrics.refused.rate).toBe(27);
  });

  it("successful responses say what is left", async () => {
    const { token } = await seedToken({ limits: { rps: 1, burst: 3, streams: 5, daily_tokens: 100 } });
    const response = await gatewayClient()("/v2/v1/models", { headers: bearer(token) });
    expect(response.status).toBe(200);
    expect(response.headers.get("ratelimit-policy")).toBe('"requests";q=3;w=3, "streams";q=5;qu="concurrent-requests", "tokens";q=100;w=86400');
    expect(response.headers.get("ratelimit")).toMatch(/^"requests";r=2;t=1, "tokens";r=100;t=\d+$/);
    expect(response.headers.get("x-ratelimit-remaining-requests")).toBe("2");
    expect(response.headers.get("x-ratelimit-remaining-tokens")).toBe("100");
  });
});

/** A request that submits work, so it holds one of the user's concurrent slots (reads do not). */
const work = (call: ReturnType<typeof gatewayClient>, token: string) => call("/v2/v1/embeddings", { method: "POST", headers: bearer(token), body: "{}" });

describe("concurrent streams", () => {
  it("refuses a second stream while the first runs, and frees the slot when it ends", async () => {
    const { token } = await seedToken({ limits: { ...ROOMY, streams: 1 } });
    const app = createGateway(testConfig(), { auditFlushMs: 20 });
    const ctx = createExecutionContext();
    const first = await app.fetch(new Request("http://gateway.test/v2/v1/sse?n=3&gap=300", { method: "POST", headers: viaEdge(bearer(token)) }), env, ctx);
    expect(first.status).toBe(200);
    const call = gatewayClient();
    const second = await work(call, token);
    expect(second.status).toBe(429);
    expect(((await second.json()) as { error: { message: string } }).error.message).toContain("limit is 1 at a time");
    // A cheap read during the stream is governed by the rate bucket alone (issue 9: chat UIs list
    // models while a reply streams).
    expect((await call("/v2/v1/models", { headers: bearer(token) })).status).toBe(200);
    await first.text();
    await waitOnExecutionContext(ctx);
    expect((await work(call, token)).status).toBe(200);
  });

  it("frees the slot when the client aborts mid-stream, aborts the upstream, and charges the deltas produced", async () => {
    const { token, handle } = await seedToken({ limits: { ...ROOMY, streams: 1 } });
    const app = createGateway(testConfig(), { auditFlushMs: 20 });
    const ctx = createExecutionContext();
    const m = marker();
    const abort = new AbortController();
    const request = new Request("http://gateway.test/v2/v1/chat/completions?n=20&gap=150&usage=never", {
      ...json({ stream: true, messages: [] }),
      headers: viaEdge({ ...bearer(token), "content-type": "application/json", "x-request-id": m }),
      signal: abort.signal,
    });
    const response = await app.fetch(request, env, ctx);
    const reader = response.body!.getReader();
    let text = "";
    while ((text.match(/"content"/g) ?? []).length < 3) text += new TextDecoder().decode((await reader.read()).value);
    abort.abort();
    await reader.cancel().catch(() => {});
    await waitOnExecutionContext(ctx);
    await sleep(300);
    const [seen] = await recordedWith(m);
    expect(seen?.aborted).toBe(true);
    const usage = await snapshot(handle);
    expect(usage.inFlight).toBe(0);
    expect(usage.tokensToday).toBeGreaterThanOrEqual(3);
    expect(usage.tokensToday).toBeLessThan(20);
    expect((await gatewayClient()("/v2/v1/models", { headers: bearer(token) })).status).toBe(200);
  });

  it("leases live in memory only: never stored, no alarm, and a restarted (reset) object starts with none", async () => {
    const { token, handle } = await seedToken({ limits: { ...ROOMY, streams: 1 } });
    const stub = env.USER_QUOTA.get(env.USER_QUOTA.idFromName(handle));
    const limits = { ...ROOMY, streams: 1 };
    const held = await stub.admit({ handle, limits, timezone: "UTC", now: Date.now(), leaseMs: 30_000, metered: false });
    expect(held.admitted).toBe(true); // and never released, as if its serve had been killed
    await runInDurableObject(stub, async (_instance, state) => {
      expect(await state.storage.get("leases")).toBeUndefined();
      expect(await state.storage.getAlarm()).toBeNull();
    });
    const call = gatewayClient();
    expect((await work(call, token)).status).toBe(429);
    // What a restart of workerd (every serve start) does to the object: its memory is gone, its storage is not.
    await abortAllDurableObjects();
    expect((await work(call, token)).status).toBe(200);
    expect((await snapshot(handle)).metrics.status["2xx"]).toBe(1); // the stored counters survived
  });

  it("writes nothing on the request path: the bucket stays in memory, the day is written only when tokens are charged, metrics within a second", async () => {
    const { token, handle } = await seedToken({ limits: ROOMY });
    const call = gatewayClient();
    for (let index = 0; index < 5; index++) expect((await call("/v2/v1/models", { headers: bearer(token) })).status).toBe(200);
    const stub = env.USER_QUOTA.get(env.USER_QUOTA.idFromName(handle));
    await runInDurableObject(stub, async (_instance, state) => {
      expect(await state.storage.get("bucket")).toBeUndefined();
      expect(await state.storage.get("day")).toBeUndefined();
    });
    await new Promise((resolve) => setTimeout(resolve, 1_200));
    await runInDurableObject(stub, async (_instance, state) => {
      expect((await state.storage.get<{ status: { "2xx": number } }>("metrics"))?.status["2xx"]).toBe(5);
    });
  });

  it("a forgotten lease is re-adopted by its stream's next renewal, but a renewal after its release revives nothing", async () => {
    const { handle } = await seedToken({ limits: { ...ROOMY, streams: 1 } });
    const stub = () => env.USER_QUOTA.get(env.USER_QUOTA.idFromName(handle));
    const request = { handle, limits: { ...ROOMY, streams: 1 }, timezone: "UTC", now: Date.now(), leaseMs: 30_000, metered: false };
    const held = await stub().admit(request);
    if (!held.admitted) throw new Error("expected admission");
    await abortAllDurableObjects(); // evicted or reset while the stream runs: the lease is forgotten…
    expect((await snapshot(handle)).inFlight).toBe(0);
    await stub().renew(held.leaseId, 30_000); // …until the stream's next renewal
    expect((await snapshot(handle)).inFlight).toBe(1);
    expect((await stub().admit(request)).admitted).toBe(false);
    await stub().release(held.leaseId, { status: 200, tokens: 0, upstreamLatencyMs: null }, Date.now(), "UTC");
    await stub().renew(held.leaseId, 30_000); // a renewal that crossed the release
    expect((await snapshot(handle)).inFlight).toBe(0);
    expect((await stub().admit(request)).admitted).toBe(true);
  });

  it("a running stream keeps its lease past workerd's idle eviction (~10 s); an idle object forgets its lease", { timeout: 30_000 }, async () => {
    const limits = { ...ROOMY, streams: 1 };
    const streaming = await seedToken({ limits });
    const idle = await seedToken({ limits });
    // The idle user's lease (60 s) is never renewed: its object gets no call for 12 s.
    const idleStub = env.USER_QUOTA.get(env.USER_QUOTA.idFromName(idle.handle));
    expect((await idleStub.admit({ handle: idle.handle, limits, timezone: "UTC", now: Date.now(), leaseMs: 60_000, metered: false })).admitted).toBe(true);
    const app = createGateway(testConfig({ quota_lease: "60s" }), { auditFlushMs: 20 });
    const ctx = createExecutionContext();
    const stream = await app.fetch(new Request("http://gateway.test/v2/v1/sse?n=14&gap=1000", { method: "POST", headers: viaEdge(bearer(streaming.token)) }), env, ctx);
    expect(stream.status).toBe(200);
    const reader = stream.body!.getReader();
    await reader.read();
    await sleep(12_000);
    const call = gatewayClient();
    expect((await work(call, streaming.token)).status).toBe(429);
    expect((await work(call, idle.token)).status).toBe(200);
    await reader.cancel();
    await waitOnExecutionContext(ctx);
  });

  it("a lease that is never released frees itself after quota_lease", async () => {
    const { token, handle } = await seedToken({ limits: { ...ROOMY, streams: 1 } });
    const stub = env.USER_QUOTA.get(env.USER_QUOTA.idFromName(handle));
    const limits = { ...ROOMY, streams: 1 };
    const held = await stub.admit({ handle, limits, timezone: "UTC", now: Date.now(), leaseMs: 400, metered: false });
    expect(held.admitted).toBe(true); // and never released, as if its serve had been killed
    const call = gatewayClient(testConfig({ quota_lease: "400ms" }));
    expect((await work(call, token)).status).toBe(429);
    await sleep(500);
    expect((await work(call, token)).status).toBe(200);
  });
});

describe("usage metering", () => {
  it("charges a JSON response's usage exactly", async () => {
    const { token, handle } = await seedToken({ limits: ROOMY });
    const response = await post(gatewayClient(), "/v2/v1/chat/completions?n=5", token, { messages: [] });
    expect(response.status).toBe(200);
    expect((await snapshot(handle)).tokensToday).toBe(12);
  });

  it("passes a stream byte for byte when the client asked for usage itself, and charges it", async () => {
    const { token, handle } = await seedToken({ limits: ROOMY });
    const body = { stream: true, stream_options: { include_usage: true }, messages: [] };
    const direct = await (await fetch(`${upstreamBase()}/v1/chat/completions?n=4`, json(body))).text();
    const m = marker();
    const through = await (await post(gatewayClient(), "/v2/v1/chat/completions?n=4", token, body, { "x-request-id": m })).text();
    expect(through).toBe(direct);
    expect(through).toContain('"usage"');
    expect(JSON.parse((await recordedWith(m))[0]!.body)).toEqual(body);
    expect((await snapshot(handle)).tokensToday).toBe(11);
  });

  it("asks the upstream for usage when the client did not, and drops that chunk from what the client sees", async () => {
    const { token, handle } = await seedToken({ limits: ROOMY });
    const body = { stream: true, messages: [{ role: "user", content: "hi" }] };
    const direct = await (await fetch(`${upstreamBase()}/v1/chat/completions?n=4`, json(body))).text();
    const m = marker();
    const through = await (await post(gatewayClient(), "/v2/v1/chat/completions?n=4", token, body, { "x-request-id": m })).text();
    expect(through).toBe(direct); // identical to what the upstream sends a client that did not ask
    expect(through).not.toContain('"usage"');
    expect(JSON.parse((await recordedWith(m))[0]!.body)).toEqual({ ...body, stream_options: { include_usage: true } });
    expect((await snapshot(handle)).tokensToday).toBe(11);
  });

  it("counts the streamed deltas when the upstream never sends usage", async () => {
    const { token, handle } = await seedToken({ limits: ROOMY });
    await (await post(gatewayClient(), "/v2/v1/chat/completions?n=6&usage=never", token, { stream: true, messages: [] })).text();
    expect((await snapshot(handle)).tokensToday).toBe(6);
  });

  it("forwards a body that is not JSON untouched, charging what the upstream reports", async () => {
    const { token, handle } = await seedToken({ limits: ROOMY });
    const m = marker();
    const response = await gatewayClient()("/v2/v1/chat/completions", { method: "POST", headers: { ...bearer(token), "x-request-id": m }, body: "not json" });
    expect(response.status).toBe(200);
    expect((await recordedWith(m))[0]?.body).toBe("not json");
    expect((await snapshot(handle)).tokensToday).toBe(10);
  });
});

describe("daily token quota", () => {
  it("refuses after the limit with insufficient_quota and a Retry-After to midnight, then resets at midnight in a non-UTC timezone", async () => {
    const { token, handle } = await seedToken({ limits: { ...ROOMY, daily_tokens: 25 } });
    // 23:59:00 in New York (UTC−5 in November) is 04:59:00Z.
    let now = Date.parse("2026-11-25T04:59:00Z");
    const config = testConfig({ timezone: "America/New_York" });
    const call = gatewayClient(config, { now: () => now });
    for (let index = 0; index < 3; index++) expect((await post(call, "/v2/v1/chat/completions", token, { messages: [] })).status).toBe(200);
    const refused = await post(call, "/v2/v1/chat/completions", token, { messages: [] });
    expect(refused.status).toBe(429);
    expect(((await refused.json()) as { error: { code: string; type: string } }).error).toMatchObject({ code: "insufficient_quota", type: "insufficient_quota" });
    expect(refused.headers.get("retry-after")).toBe("60");
    // Non-LLM routes are not held back by the LLM token quota.
    expect((await call("/v2/v1/models", { headers: bearer(token) })).status).toBe(200);
    // The daily limit was overrun by at most the requests in flight when it was crossed (here: none).
    expect((await snapshot(handle, now, "America/New_York")).tokensToday).toBe(30);
    now = Date.parse("2026-11-25T05:00:01Z"); // 00:00:01 in New York
    expect((await post(call, "/v2/v1/chat/completions", token, { messages: [] })).status).toBe(200);
    expect((await snapshot(handle, now, "America/New_York")).tokensToday).toBe(10);
  });

  it("finds local midnight across a DST change", () => {
    // New York leaves DST on 2026-11-01: that local day is 25 hours long.
    const start = Date.parse("2026-11-01T04:00:00Z"); // 00:00 EDT
    expect(nextMidnight(start, "America/New_York")).toBe(Date.parse("2026-11-02T05:00:00Z"));
    expect(dayKey(Date.parse("2026-11-02T04:59:59Z"), "America/New_York")).toBe("2026-11-01");
    expect(nextMidnight(Date.parse("2026-11-25T12:00:00Z"), "UTC")).toBe(Date.parse("2026-11-26T00:00:00Z"));
  });
});

describe("failed-auth throttling", () => {
  const from = (address: string) => ({ "x-halo-edge-secret": "test-edge-secret", "x-halo-client-addr": address });

  it("throttles an address after repeated failures, never other addresses", async () => {
    const { token } = await seedToken({ limits: ROOMY });
    const call = gatewayClient();
    for (let index = 0; index < 10; index++) {
      const response = await call("/v2/v1/models", { headers: { ...bearer("sk-halo-0000000000000000000000000000000" + (index % 10)), ...from("100.64.0.66") } });
      expect(response.status).toBe(401);
    }
    const blocked = await call("/v2/v1/models", { headers: { ...bearer(token), ...from("100.64.0.66") } });
    expect(blocked.status).toBe(429);
    expect(((await blocked.json()) as { error: { code: string } }).error.code).toBe("too_many_auth_failures");
    expect(Number(blocked.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    expect((await call("/v2/v1/models", { headers: { ...bearer(token), ...from("100.64.0.77") } })).status).toBe(200);
  });
});

describe("token currency and failure policy", () => {
  it("refuses a revoked token on the next request while its user's Durable Object is warm", async () => {
    const { token, handle } = await seedToken({ limits: ROOMY });
    const call = gatewayClient();
    for (let index = 0; index < 3; index++) expect((await call("/v2/v1/models", { headers: bearer(token) })).status).toBe(200);
    await revokeAsAdmin(handle);
    expect((await call("/v2/v1/models", { headers: bearer(token) })).status).toBe(401);
  });

  it("fails closed: if the quota service cannot answer, 503 and the upstream is never contacted", async () => {
    const { token } = await seedToken({ limits: ROOMY });
    const broken = {
      authorize: () => Promise.reject(new Error("Durable Object unavailable")),
      profile: () => Promise.resolve(null),
      renew: () => Promise.resolve(true),
      release: () => Promise.resolve(),
    };
    const call = gatewayClient(testConfig(), { quota: () => broken });
    const m = marker();
    const response = await call("/v2/v1/models", { headers: bearer(token, { "x-request-id": m }) });
    expect(response.status).toBe(503);
    expect(response.headers.get("retry-after")).toBe("5");
    expect(((await response.json()) as { error: { code: string } }).error.code).toBe("quota_unavailable");
    expect(await recordedWith(m)).toHaveLength(0);
  });
});

describe("auth decisions in the audit log", () => {
  it("records allow and deny with reason, route and client, and never a token or its hash", async () => {
    const { token, handle } = await seedToken({ scopes: ["v2"], limits: ROOMY });
    const call = gatewayClient();
    const edge = { "x-halo-edge-secret": "test-edge-secret", "x-halo-client-addr": "100.64.3.3" };
    await call("/v2/v1/models", { headers: bearer(token, edge) });
    await call("/sd/x", { headers: bearer(token, edge) });
    await call("/v2/v1/models", { headers: bearer("sk-halo-ffffffffffffffffffffffffffffffff", edge) });
    await sleep(100); // decisions are flushed in batches (20 ms after the first here, 1 s by default)
    const { results } = await env.DB.prepare("SELECT * FROM audit WHERE kind = 'auth' AND client = '100.64.3.3' ORDER BY id").all<Record<string, unknown>>();
    expect(results.map((row) => [row.action, row.reason, row.route, row.status])).toEqual([
      ["allow", null, "v2", 200],
      ["deny", "scope", "sd", 403],
      ["deny", "unknown", "v2", 401],
    ]);
    expect(results[0]?.handle).toBe(handle);
    const everything = JSON.stringify((await env.DB.prepare("SELECT * FROM audit").all()).results);
    expect(everything).not.toContain(token);
    expect(everything).not.toContain(await hashToken(token));
    expect(everything).not.toContain("sk-halo-ffff");
  });
});
