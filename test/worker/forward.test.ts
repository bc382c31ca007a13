import { createExecutionContext, env, waitOnExecutionContext } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { createGateway } from "../../src/gateway";
import { forward } from "../../src/proxy/forward";
import { deliveredOneByOne, readTimedEvents } from "../support/sse";
import { bearer, gatewayClient, marker, recordedWith, seedToken, testConfig, viaEdge } from "./helpers";

const EDGE = { "x-halo-edge-secret": "test-edge-secret", "x-halo-client-addr": "100.64.1.7" };

describe("forwarding (docs/contract.md §4)", () => {
  const call = gatewayClient();

  it("strips the prefix, keeps the query unchanged, and sets the gateway's identity headers", async () => {
    const { token, tokenId, handle } = await seedToken();
    const m = marker();
    const response = await call("/v2/v1/models?q=a%2Fb&x=%20y&flag", {
      headers: bearer(token, { "x-request-id": m, ...EDGE }),
    });
    expect(response.status).toBe(200);
    expect(response.headers.get("x-upstream")).toBe("recording");
    const [seen] = await recordedWith(m);
    expect(seen?.target).toBe("/v1/models?q=a%2Fb&x=%20y&flag");
    expect(seen?.headers["authorization"]).toBeUndefined();
    expect(seen?.headers["x-halo-user"]).toBe(handle);
    expect(seen?.headers["x-halo-token-id"]).toBe(tokenId);
    expect(seen?.headers["x-forwarded-for"]).toBe("100.64.1.7");
    expect(seen?.headers["x-halo-edge-secret"]).toBeUndefined();
    expect(seen?.headers["x-halo-client-addr"]).toBeUndefined();
  });

  it.each([
    ["/v2", "/"],
    ["/v2/", "/"],
    ["/v2/v1/chat/completions", "/v1/chat/completions"],
    ["/lemon/api/v1/models", "/lemonbase/api/v1/models"],
    ["/v2/a%20b/caf%C3%A9", "/a%20b/caf%C3%A9"],
    ["/v2/a:b@c", "/a:b@c"],
  ])("%s reaches the upstream as %s", async (path, expected) => {
    const { token } = await seedToken({ scopes: ["v2", "lemon"] });
    const m = marker();
    expect((await call(path, { headers: bearer(token, { "x-request-id": m }) })).status).toBe(200);
    expect((await recordedWith(m))[0]?.target).toBe(expected);
  });

  it("matches a route on Host when it names one, and falls back to the generic route otherwise", async () => {
    const upstream = testConfig().routes[0]!.upstream;
    const config = testConfig({
      routes: [
        { name: "v2", path: "/v2", upstream, strip_prefix: true, auth: "bearer" },
        { name: "v2", path: "/v2", host: "studio.mesh", upstream: `${upstream}/hosted`, strip_prefix: true, auth: "bearer" },
      ],
    });
    const { token } = await seedToken();
    const hosted = marker();
    await gatewayClient(config)("/v2/x", { headers: bearer(token, { host: "Studio.Mesh", "x-request-id": hosted }) });
    expect((await recordedWith(hosted))[0]?.target).toBe("/hosted/x");
    const generic = marker();
    await gatewayClient(config)("/v2/x", { headers: bearer(token, { host: "other.mesh", "x-request-id": generic }) });
    expect((await recordedWith(generic))[0]?.target).toBe("/x");
  });

  it("does not trust a client address without the edge secret: the request is refused", async () => {
    const { token } = await seedToken();
    const m = marker();
    const response = await call("/v2/x", {
      headers: bearer(token, { "x-request-id": m, "x-halo-edge-secret": "guess", "x-halo-client-addr": "6.6.6.6" }),
    });
    expect(response.status).toBe(403);
    expect(await recordedWith(m)).toHaveLength(0);
  });

  it("streams request bodies through and returns the upstream status", async () => {
    const { token } = await seedToken();
    const m = marker();
    const response = await call("/v2/v1/echo", {
      method: "POST",
      headers: bearer(token, { "x-request-id": m, "content-type": "application/json" }),
      body: JSON.stringify({ prompt: "x".repeat(500) }),
    });
    expect(response.status).toBe(200);
    const [seen] = await recordedWith(m);
    expect(seen?.method).toBe("POST");
    expect(seen?.bodyBytes).toBe(JSON.stringify({ prompt: "x".repeat(500) }).length);
  });

  it("removes the upstream's hop-by-hop headers and those it names in Connection", async () => {
    const { token } = await seedToken();
    const response = await call("/v2/hop-by-hop", { headers: bearer(token) });
    expect(response.headers.get("x-visible")).toBe("yes");
    expect(response.headers.get("x-upstream-private")).toBeNull();
    expect(response.headers.get("keep-alive")).toBeNull();
  });

  it("delivers SSE events one by one as the upstream emits them", async () => {
    const { token } = await seedToken();
    const app = createGateway(testConfig());
    const ctx = createExecutionContext();
    const response = await app.fetch(
      new Request("http://gateway.test/v2/v1/sse?n=4&gap=250", { headers: viaEdge(bearer(token)) }),
      env,
      ctx,
    );
    expect(response.headers.get("content-type")).toBe("text/event-stream");
    const events = await readTimedEvents(response.body!);
    await waitOnExecutionContext(ctx);
    expect(events).toHaveLength(4);
    // Not buffered: every event reached the client before the upstream had even sent the next one.
    expect(deliveredOneByOne(events), JSON.stringify(events)).toBe(true);
  });

  it("refuses a declared body over the limit with 413 before contacting the upstream", async () => {
    const { token } = await seedToken();
    const m = marker();
    const response = await call("/v2/v1/echo", {
      method: "POST",
      headers: bearer(token, { "x-request-id": m, "content-length": "2048" }),
      body: "x".repeat(2048),
    });
    expect(response.status).toBe(413);
    expect(((await response.json()) as { error: { code: string } }).error.code).toBe("payload_too_large");
    expect(await recordedWith(m)).toHaveLength(0);
  });

  it("cuts off an undeclared (streamed) body that grows past the limit with 413", async () => {
    const { token } = await seedToken();
    const m = marker();
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        for (let index = 0; index < 8; index++) controller.enqueue(new Uint8Array(512));
        controller.close();
      },
    });
    const response = await call("/v2/v1/echo", {
      method: "POST",
      headers: bearer(token, { "x-request-id": m }),
      body,
      // @ts-expect-error -- duplex is required by the fetch spec for stream bodies; workers-types lacks it
      duplex: "half",
    });
    expect(response.status).toBe(413);
    // The upstream must never have completed a request with a truncated body.
    expect(await recordedWith(m)).toHaveLength(0);
  });

  it("answers 502 when the upstream is unreachable", async () => {
    const { token } = await seedToken({ scopes: ["down"] });
    const response = await call("/down/v1/models", { headers: bearer(token) });
    expect(response.status).toBe(502);
    expect(((await response.json()) as { error: { code: string } }).error.code).toBe("upstream_unavailable");
  });

  it("answers 504 when no response headers arrive within upstream_timeout", async () => {
    const { token } = await seedToken();
    const quick = gatewayClient(testConfig({ upstream_timeout: "300ms" }));
    const started = Date.now();
    const response = await quick("/v2/slow-headers?ms=1500", { headers: bearer(token) });
    expect(response.status).toBe(504);
    expect(Date.now() - started).toBeLessThan(1400);
  });

  it("lets a started stream run past upstream_timeout", async () => {
    const { token } = await seedToken();
    const quick = gatewayClient(testConfig({ upstream_timeout: "300ms" }));
    const response = await quick("/v2/sse?n=3&gap=250", { headers: bearer(token) });
    expect(response.status).toBe(200);
    expect((await response.text()).match(/data:/g)).toHaveLength(3);
  });

  it("a request whose slot was cancelled before it was forwarded (its client left meanwhile) never reaches the upstream", async () => {
    const config = testConfig();
    const m = marker();
    const request = new Request("http://gateway.test/sd/v1/images", { method: "POST", headers: { "x-request-id": m }, body: "{}" });
    const options = { route: config.routes.find((route) => route.name === "sd")!, canonicalPath: "/sd/v1/images", rawQuery: "", clientAddress: "100.64.1.7", upstreamTimeoutMs: 2_000, bodyLimitBytes: 1024, identity: null };
    await expect(forward(request, { ...options, cancel: AbortSignal.abort(new Error("the client went away")) })).rejects.toThrow();
    expect(await recordedWith(m)).toEqual([]);
    // The same request with a live signal does reach it (the marker is seen).
    const live = new Request("http://gateway.test/sd/v1/images", { method: "POST", headers: { "x-request-id": m }, body: "{}" });
    expect((await forward(live, { ...options, cancel: new AbortController().signal })).status).toBe(200);
    expect(await recordedWith(m)).toHaveLength(1);
  });
});
