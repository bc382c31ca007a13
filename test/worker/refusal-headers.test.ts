/** Refusals real clients handle right (issue 9 item 5): the headers the OpenAI SDKs read. */
import { describe, expect, it } from "vitest";
import { openAiDuration } from "../../src/quota/headers";
import { bearer, gatewayClient, seedToken } from "./helpers";

const completion = (token: string) => ({ method: "POST", headers: bearer(token, { "content-type": "application/json" }), body: JSON.stringify({ messages: [] }) });

describe("rate-limit headers", () => {
  it("formats durations the way OpenAI does", () => {
    expect([0.012, 1, 59, 360, 3723].map(openAiDuration)).toEqual(["12ms", "1s", "59s", "6m0s", "1h2m3s"]);
  });

  it("every authenticated response carries limit, remaining and reset for requests and tokens", async () => {
    const { token } = await seedToken({ limits: { rps: 2, burst: 4, daily_tokens: 1000 } });
    const response = await gatewayClient()("/v2/v1/models", { headers: bearer(token) });
    expect(response.status).toBe(200);
    for (const name of ["limit", "remaining", "reset"]) {
      expect(response.headers.get(`x-ratelimit-${name}-requests`), name).toMatch(/^\d+(ms|s)?$|^\d+m\d+s$/);
      expect(response.headers.get(`x-ratelimit-${name}-tokens`), name).toMatch(/^\d+$|^(\d+h)?(\d+m)?\d+(ms|s)$/);
    }
  });

  it("a rate refusal says when to retry in milliseconds; the daily quota says not to retry", async () => {
    const { token } = await seedToken({ limits: { rps: 1, burst: 1, streams: 10, daily_tokens: 1_000_000 } });
    const call = gatewayClient();
    expect((await call("/v2/v1/models", { headers: bearer(token) })).status).toBe(200);
    const limited = await call("/v2/v1/models", { headers: bearer(token) });
    expect(limited.status).toBe(429);
    expect(Number(limited.headers.get("retry-after-ms"))).toBe(Number(limited.headers.get("retry-after")) * 1000);
    expect(limited.headers.get("x-should-retry")).toBeNull();

    const { token: spent } = await seedToken({ limits: { rps: 100, burst: 100, streams: 10, daily_tokens: 1 } });
    expect((await call("/v2/v1/chat/completions?n=5", completion(spent))).status).toBe(200);
    const daily = await call("/v2/v1/chat/completions?n=5", completion(spent));
    expect(daily.status).toBe(429);
    expect(daily.headers.get("x-should-retry")).toBe("false");
    const body = (await daily.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe("insufficient_quota");
    expect(body.error.message).toMatch(/resets at midnight \(\d{4}-\d\d-\d\dT/);
  });
});

describe("GET /api/me", () => {
  it("tells any valid token who it is, what it may use, when it ends and what is left — the numbers usage shows", async () => {
    const { token, handle } = await seedToken({ scopes: ["sd", "audio"], limits: { rps: 3, burst: 3, streams: 2, daily_tokens: 500 } });
    const response = await gatewayClient()("/api/me", { headers: bearer(token) });
    expect(response.status).toBe(200);
    expect(response.headers.get("cache-control")).toBe("no-store");
    const me = (await response.json()) as Record<string, unknown>;
    expect(me).toMatchObject({ handle, scopes: ["sd", "audio"], limits: { rps: 3, burst: 3, streams: 2, daily_tokens: 500 }, tokens_today: 0, tokens_remaining: 500, in_flight: 0 });
    expect(Date.parse(me.expires_at as string)).toBeGreaterThan(Date.now());
    expect(Date.parse(me.resets_at as string)).toBeGreaterThan(Date.now());
    expect(JSON.stringify(me)).not.toContain(token);
  });

  it("is 401 without a valid token, like any authenticated path", async () => {
    expect((await gatewayClient()("/api/me")).status).toBe(401);
    expect((await gatewayClient()("/api/me", { headers: bearer("sk-halo-00000000000000000000000000000000") })).status).toBe(401);
  });
});
