/** WebSocket tickets (docs/contract.md §4): POST /auth/ticket → `?ticket=` on bearer_or_ticket routes. */
import { describe, expect, it } from "vitest";
import { decodeJwt } from "jose";
import { bearer, gatewayClient, marker, recordedWith, revokeAsAdmin, seedToken, testConfig } from "./helpers";

const ROOMY = { rps: 1000, burst: 1000, streams: 100, daily_tokens: 1_000_000 };

async function mint(token: string, call = gatewayClient(), scope: unknown = "audio") {
  return call("/auth/ticket", { method: "POST", headers: { ...bearer(token), "content-type": "application/json" }, body: JSON.stringify({ scope }) });
}

describe("WebSocket tickets", () => {
  it("mints a ≤60 s single-scope ticket that works once on the WebSocket route, never reaching the upstream", async () => {
    const { token, handle, tokenId } = await seedToken({ scopes: ["v2", "audio"], limits: ROOMY });
    const minted = await mint(token);
    expect(minted.status).toBe(201);
    const { ticket, scope, expires_at } = (await minted.json()) as { ticket: string; scope: string; expires_at: string };
    expect(scope).toBe("audio");
    const claims = decodeJwt(ticket);
    expect(claims.exp! - claims.iat!).toBeLessThanOrEqual(60);
    expect(Date.parse(expires_at)).toBeLessThanOrEqual(Date.now() + 61_000);
    expect(JSON.stringify(claims)).not.toContain(token);

    const m = marker();
    const used = await gatewayClient()(`/audio/ws?x=1&ticket=${ticket}&y=2`, { headers: { "x-request-id": m } });
    expect(used.status).toBe(200);
    const [seen] = await recordedWith(m);
    expect(seen?.target).toBe("/wsbase?x=1&y=2");
    expect(seen?.headers["x-halo-user"]).toBe(handle);
    expect(seen?.headers["x-halo-token-id"]).toBe(tokenId);

    const again = await gatewayClient()(`/audio/ws?ticket=${ticket}`);
    expect(again.status).toBe(401);
  });

  it("refuses an expired ticket, a tampered one, and a ticket on a bearer-only route", async () => {
    const { token } = await seedToken({ scopes: ["v2", "audio"], limits: ROOMY });
    const now = Date.now();
    const { ticket } = (await (await mint(token, gatewayClient(testConfig(), { now: () => now }))).json()) as { ticket: string };
    expect((await gatewayClient(testConfig(), { now: () => now + 61_000 })(`/audio/ws?ticket=${ticket}`)).status).toBe(401);
    const { ticket: fresh } = (await (await mint(token)).json()) as { ticket: string };
    const tampered = fresh.slice(0, -3) + (fresh.endsWith("AAA") ? "BBB" : "AAA");
    expect((await gatewayClient()(`/audio/ws?ticket=${tampered}`)).status).toBe(401);
    expect((await gatewayClient()(`/v2/v1/models?ticket=${fresh}`)).status).toBe(401);
  });

  it("refuses a ticket once its token is revoked", async () => {
    const { token, handle } = await seedToken({ scopes: ["audio"], limits: ROOMY });
    const { ticket } = (await (await mint(token)).json()) as { ticket: string };
    await revokeAsAdmin(handle);
    expect((await gatewayClient()(`/audio/ws?ticket=${ticket}`)).status).toBe(401);
  });

  it("needs a bearer holding the scope, and a scope that names a WebSocket route", async () => {
    const { token } = await seedToken({ scopes: ["v2"], limits: ROOMY });
    expect((await mint(token)).status).toBe(403);
    expect((await mint(token, gatewayClient(), "v2")).status).toBe(400);
    expect((await mint(token, gatewayClient(), 42)).status).toBe(400);
    const anonymous = await gatewayClient()("/auth/ticket", { method: "POST" });
    expect(anonymous.status).toBe(401);
  });
});
