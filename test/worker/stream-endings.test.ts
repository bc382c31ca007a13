/**
 * However a response ends, its slot ends with it, exactly once (issue 9): an upstream that dies
 * mid-stream, a token revoked while its stream runs. Real workerd, a real loopback upstream.
 */
import { createExecutionContext, env, waitOnExecutionContext } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { createGateway } from "../../src/gateway";
import { usageSnapshot } from "../../src/quota/durable-object-quota";
import { bearer, gatewayClient, revokeAsAdmin, seedToken, testConfig, viaEdge } from "./helpers";

const ROOMY = { rps: 1000, burst: 1000, daily_tokens: 10_000_000 };
const decoder = new TextDecoder();

async function readAll(body: ReadableStream<Uint8Array>, onChunk: (text: string) => void = () => {}): Promise<string> {
  const reader = body.getReader();
  let text = "";
  for (;;) {
    const { value, done } = await reader.read().catch(() => ({ value: undefined, done: true }));
    if (done) return text;
    const chunk = decoder.decode(value);
    text += chunk;
    onChunk(chunk);
  }
}

describe("a stream the upstream cuts", () => {
  it("ends with an OpenAI-style error event (never a clean end), frees the slot at once and records the outcome", async () => {
    const { token, handle } = await seedToken({ limits: { ...ROOMY, streams: 1 } });
    const app = createGateway(testConfig(), { auditFlushMs: 20 });
    const ctx = createExecutionContext();
    const response = await app.fetch(new Request("http://gateway.test/v2/v1/sse?n=10&gap=50&die=3", { method: "POST", headers: viaEdge(bearer(token)) }), env, ctx);
    expect(response.status).toBe(200);
    const text = await readAll(response.body!);
    await waitOnExecutionContext(ctx);
    expect(text.match(/"event":\d/g)).toHaveLength(3);
    const last = text.trim().split("\n\n").pop()!;
    expect(JSON.parse(last.replace(/^data: /, ""))).toMatchObject({ error: { code: "stream_interrupted" } });
    // The slot is free right away (not after the 30 s lease), and the cut is counted as a 5xx.
    const snapshot = await usageSnapshot(env.USER_QUOTA, handle, Date.now(), "UTC");
    expect(snapshot.inFlight).toBe(0);
    expect(snapshot.metrics.status["5xx"]).toBe(1);
    expect((await gatewayClient()("/v2/v1/embeddings", { method: "POST", headers: bearer(token), body: "{}" })).status).toBe(200);
    const audit = await env.DB.prepare("SELECT status FROM audit WHERE handle = ?1 AND action = 'allow'").bind(handle).all<{ status: number }>();
    expect(audit.results.map((row) => row.status)).toContain(502);
  });
});

describe("revocation reaches open streams", () => {
  it("closes an open SSE stream within 5 s of revoke returning, with a token_revoked event", { timeout: 20_000 }, async () => {
    const { token, handle } = await seedToken({ limits: { ...ROOMY, streams: 2 } });
    const app = createGateway(testConfig(), { auditFlushMs: 20 });
    const ctx = createExecutionContext();
    const response = await app.fetch(new Request("http://gateway.test/v2/v1/sse?n=40&gap=250", { method: "POST", headers: viaEdge(bearer(token)) }), env, ctx);
    expect(response.status).toBe(200);
    let revokedAt = 0;
    let closedAt = 0;
    const reading = readAll(response.body!, (chunk) => {
      if (chunk.includes("token_revoked")) closedAt = Date.now();
    });
    await new Promise((resolve) => setTimeout(resolve, 600));
    await revokeAsAdmin(handle);
    revokedAt = Date.now();
    const text = await reading;
    await waitOnExecutionContext(ctx);
    expect(text).toContain('"code":"token_revoked"');
    const took = closedAt - revokedAt;
    expect(took).toBeLessThanOrEqual(5_000);
    expect(text.match(/"event":\d+/g)!.length).toBeLessThan(40);
    console.warn(`revoke → open SSE stream closed in ${took} ms`);
  });
});
