/** Helpers for tests that run inside workerd against real D1 and a real loopback upstream. */
import { createExecutionContext, env, waitOnExecutionContext } from "cloudflare:test";
import { inject } from "vitest";
import { revokeUser } from "../../src/admin/users";
import { generateToken, generateTokenId, hashToken, tokenHint } from "../../src/auth/token";
import { userQuotaStub } from "../../src/quota/durable-object-quota";
import { parseConfig, type GatewayConfig } from "../../src/shared/config";
import { createGateway, type GatewayOptions } from "../../src/gateway";
import { EDGE_SECRET_HEADER } from "../../src/shared/edge-protocol";
import { MESH_HEADER } from "../../src/shared/mesh-identity";

export const upstreamBase = () => `http://127.0.0.1:${inject("upstreamPort")}`;

/** The docs/contract.md §3 route table, pointed at the recording upstream (and one closed port). */
export function testConfig(overrides: Record<string, unknown> = {}): GatewayConfig {
  const upstream = upstreamBase();
  return parseConfig({
    upstream_timeout: "2s",
    body_limit_bytes: 1024,
    routes: [
      { name: "v2", path: "/v2", upstream, strip_prefix: true, auth: "bearer", metered: true },
      { name: "lemon", path: "/lemon", upstream: `${upstream}/lemonbase`, strip_prefix: true, auth: "bearer" },
      { name: "sd", path: "/sd", upstream, strip_prefix: true, auth: "bearer" },
      { name: "down", path: "/down", upstream: `http://127.0.0.1:${inject("closedPort")}`, strip_prefix: true, auth: "bearer" },
      { name: "studio", path: "/studio", upstream, strip_prefix: false, auth: "none" },
      { name: "audio", path: "/audio/ws", match: "exact", upstream: `${upstream}/wsbase`, auth: "bearer_or_ticket" },
    ],
    default_scopes: ["v2"],
    ...overrides,
  });
}

/**
 * Headers as serve's edge sends them: with the per-boot secret (vitest.config.ts binds EDGE_SECRET),
 * unless the test already put its own (right or wrong) secret there; and, as for a loopback peer
 * under the default `mesh.trust_loopback`, `x-halo-mesh: loopback` unless the test describes the
 * peer's mesh owner itself (test/worker/mesh.test.ts).
 */
export function viaEdge(headers?: HeadersInit): Headers {
  const all = new Headers(headers);
  if (!all.has(EDGE_SECRET_HEADER)) all.set(EDGE_SECRET_HEADER, env.EDGE_SECRET!);
  if (!all.has(MESH_HEADER)) all.set(MESH_HEADER, "loopback");
  return all;
}

export interface ClientOptions {
  /** Send the edge secret like serve's edge does (default true). */
  edge?: boolean;
  /** Bindings to replace, e.g. `{ EDGE_SECRET: undefined }` for a gateway without an edge (wrangler dev). */
  env?: Partial<Env>;
}

/** Fetch through the gateway app inside workerd; the ExecutionContext is drained after the body is read. */
export function gatewayClient(config: GatewayConfig = testConfig(), options: GatewayOptions = {}, client: ClientOptions = {}) {
  const app = createGateway(config, { auditFlushMs: 20, ...options });
  const bindings = { ...env, ...client.env };
  return async (path: string, init: RequestInit = {}): Promise<Response> => {
    const ctx = createExecutionContext();
    const headers = client.edge === false ? new Headers(init.headers) : viaEdge(init.headers);
    const response = await app.fetch(new Request(`http://gateway.test${path}`, { ...init, headers }), bindings, ctx);
    const body = await response.arrayBuffer();
    await waitOnExecutionContext(ctx);
    return new Response(response.status === 101 ? null : body, response);
  };
}

export interface SeedOptions {
  handle?: string;
  scopes?: string[];
  issuedAt?: number;
  expiresAt?: number;
  revokedAt?: number | null;
  limits?: { rps?: number; burst?: number; streams?: number; daily_tokens?: number };
}

/** Insert a token the way the admin module does (hash only) and return its plaintext for the test. */
export async function seedToken(options: SeedOptions = {}) {
  const token = generateToken();
  const tokenId = generateTokenId();
  const handle = options.handle ?? `user-${tokenId.slice(4, 12)}`;
  const now = Date.now();
  await env.DB.batch([
    env.DB.prepare("INSERT OR IGNORE INTO users (handle, created_at) VALUES (?1, ?2)").bind(handle, now),
    env.DB.prepare(
      `INSERT INTO tokens (token_id, token_hash, hint, handle, scopes, issued_at, expires_at, revoked_at, source)
       VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'invite')`,
    ).bind(
      tokenId,
      await hashToken(token),
      tokenHint(token),
      handle,
      JSON.stringify(options.scopes ?? ["v2"]),
      options.issuedAt ?? now,
      options.expiresAt ?? now + 86_400_000,
      options.revokedAt ?? null,
    ),
    env.DB.prepare("UPDATE users SET rps = ?2, burst = ?3, streams = ?4, daily_tokens = ?5 WHERE handle = ?1").bind(
      handle,
      options.limits?.rps ?? null,
      options.limits?.burst ?? null,
      options.limits?.streams ?? null,
      options.limits?.daily_tokens ?? null,
    ),
  ]);
  return { token, tokenId, handle };
}

export const bearer = (token: string, extra: Record<string, string> = {}) => ({ authorization: `Bearer ${token}`, ...extra });

/** What the recording upstream received with this marker header. */
export interface Recorded {
  method: string;
  target: string;
  headers: Record<string, string>;
  bodyBytes: number;
  body: string;
  aborted: boolean;
}

export async function recordedWith(marker: string): Promise<Recorded[]> {
  const response = await fetch(`${upstreamBase()}/__recorded?marker=${encodeURIComponent(marker)}`);
  return response.json();
}

export const marker = () => `m-${crypto.randomUUID()}`;

/** What `halo-gate revoke` does through the admin API: the user's object first, then D1. */
export async function revokeAsAdmin(handle: string): Promise<void> {
  await userQuotaStub(env.USER_QUOTA, handle).revoke(handle);
  await revokeUser(env.DB, handle, Date.now());
}
