/**
 * Refusals as the official OpenAI Node SDK handles them, through the real `serve` (issue 9): it obeys
 * `Retry-After`, so a daily-quota 429 (hours until midnight) used to make it sleep until then; with
 * `x-should-retry: false` it raises at once. A rate refusal it retries after `retry-after-ms`.
 */
import OpenAI, { RateLimitError } from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startRecordingUpstream, type RecordingUpstream } from "../support/upstream-server";
import { inviteJson, startServe, testWranglerConfig, type Serve } from "./harness";

let upstream: RecordingUpstream;
let gateway: Serve;

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  gateway = await startServe({ config: testWranglerConfig(upstream.port) });
});

afterAll(async () => {
  await gateway?.stop();
  await upstream?.close();
});

/** The SDK with its default retry policy (2 retries), counting the HTTP attempts it makes. */
function client(apiKey: string) {
  const attempts = { count: 0 };
  const openai = new OpenAI({
    apiKey,
    baseURL: `${gateway.url}/v2/v1`,
    defaultQuery: { n: "5" },
    maxRetries: 2,
    timeout: 30_000,
    fetch: (url, init) => {
      attempts.count++;
      return fetch(url, init);
    },
  });
  return Object.assign(openai, { attempts });
}
const ask = (openai: OpenAI) => openai.chat.completions.create({ model: "m", messages: [{ role: "user", content: "hi" }] });

describe("the OpenAI Node SDK against halo-gate's refusals", () => {
  it("raises at once on the daily quota (insufficient_quota), instead of sleeping until midnight", async () => {
    const { token } = await inviteJson(gateway.stateDir, "sdk-daily", ["--daily-tokens", "1", "--rps", "100", "--burst", "100"]);
    const openai = client(token);
    expect((await ask(openai)).usage?.total_tokens).toBeGreaterThan(1);
    const started = Date.now();
    const before = openai.attempts.count;
    const error = await ask(openai).then(
      () => null,
      (caught: unknown) => caught,
    );
    expect(error).toBeInstanceOf(RateLimitError);
    expect((error as RateLimitError).code).toBe("insufficient_quota");
    expect(openai.attempts.count - before).toBe(1); // no retry at all
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  it("retries a rate refusal after retry-after-ms and succeeds", async () => {
    const { token } = await inviteJson(gateway.stateDir, "sdk-rate", ["--rps", "1", "--burst", "1"]);
    const openai = client(token);
    await ask(openai);
    const started = Date.now();
    const before = openai.attempts.count;
    const second = await ask(openai); // refused once (the bucket is empty), retried by the SDK
    expect(second.choices.length).toBeGreaterThan(0);
    expect(openai.attempts.count - before).toBe(2);
    expect(Date.now() - started).toBeGreaterThanOrEqual(500);
  });
});
