/**
 * The gateway as one Hono app. The compute hot path — route → bearer → scope → quota → forward →
 * release — reads top to bottom in `handleCompute`; everything it calls does one job in its own module.
 */
import { Hono, type Context } from "hono";
import { HTTPException } from "hono/http-exception";
import { z } from "zod";
import packageJson from "../package.json";
import { AUTH_AUDIT_FLUSH_MS, recordAuthDecision } from "./audit/auth-audit";
import { AuthDenied, authenticate, type DenyReason } from "./auth/authenticate";
import { recordAuthFailure, throttledResponse } from "./auth/failed-auth-throttle";
import { authenticateTicket, issueTicket, takeTicket, type TicketUse } from "./auth/ticket";
import { D1TokenStore, type TokenRecord } from "./auth/token-store";
import type { GatewayConfig, RouteConfig } from "./config/schema";
import { edgeGuard, UNKNOWN_CLIENT, type Peer, type PeerVariables } from "./http/client-address";
import { errorResponse, errors } from "./http/errors";
import { CONNECT_CSS, CONNECT_HTML, CONNECT_JS, PAGE_HEADERS } from "./pages/connect";
import { requestGuard, type GuardVariables } from "./http/request-guard";
import { meteringStream, METERED_ENDPOINTS, planMeteredRequest, type MeterPlan, type UsageTally } from "./metering/usage";
import { forward, readBodyText } from "./proxy/forward";
import { matchRoute } from "./proxy/routes";
import { DurableObjectQuota, userQuota } from "./quota/durable-object-quota";
import { quotaExceeded, quotaHeaders } from "./quota/headers";
import { effectiveLimits } from "./quota/limits";
import { unlimitedQuota, type QuotaService } from "./quota/quota";
import { endSlotWhenDone, holdSlot } from "./quota/slot";
import { isStorageFailure } from "./storage/failure";
import { storageWritable } from "./storage/health";

export type GatewayEnv = { Bindings: Env; Variables: GuardVariables & PeerVariables };

export interface GatewayOptions {
  /** The clock; tests pin it to check expiry and the quota day at their exact boundaries. */
  now?: () => number;
  /** The quota implementation; the Durable Object one unless a test substitutes another. */
  quota?: (env: Env) => QuotaService;
  /** How long auth decisions are buffered before one batched audit write (default 1 s). */
  auditFlushMs?: number;
}

const ticketRequest = z.strictObject({ scope: z.string().max(32).optional() });

/** Single use of tickets, recorded in the ticket owner's UserQuota Durable Object. */
const ticketUses = (env: Env): TicketUse => ({
  consume: (handle, jti, expiresAt) => userQuota(env.USER_QUOTA, handle).consumeTicket(jti, expiresAt),
});

/** Failures that probe the token store; a valid token on the wrong route is not one. */
const PROBING: ReadonlySet<DenyReason> = new Set(["malformed", "unknown", "revoked", "expired"]);

export function createGateway(config: GatewayConfig, options: GatewayOptions = {}): Hono<GatewayEnv> {
  const now = options.now ?? Date.now;
  const quotaFor = options.quota ?? (config.quotas ? (env: Env) => new DurableObjectQuota(env.USER_QUOTA) : () => unlimitedQuota);
  const auditFlushMs = options.auditFlushMs ?? AUTH_AUDIT_FLUSH_MS;
  const app = new Hono<GatewayEnv>();

  // First, before anything else runs: under serve, only what came through the edge is answered.
  app.use(edgeGuard(config));
  app.use(requestGuard());
  app.get("/healthz", async (c) => {
    if (await storageWritable(c.env.DB, (promise) => c.executionCtx.waitUntil(promise))) return c.json({ status: "ok" }, 200, NO_STORE);
    return c.json({ status: "unhealthy", reason: "storage" }, 503, { ...NO_STORE, "retry-after": "5" });
  });
  app.get("/api/info", (c) => c.json(publicInfo(config, c.var.peer)));

  app.get("/_halo/connect", (c) => c.html(CONNECT_HTML, 200, PAGE_HEADERS));
  app.get("/_halo/connect.js", (c) => c.body(CONNECT_JS, 200, { ...PAGE_HEADERS, "content-type": "text/javascript; charset=utf-8" }));
  app.get("/_halo/connect.css", (c) => c.body(CONNECT_CSS, 200, { ...PAGE_HEADERS, "content-type": "text/css; charset=utf-8" }));
  app.post("/auth/ticket", handleTicket);
  app.all("*", handleCompute);

  /**
   * Steps 1–2 of every authenticated request, audited: an address that keeps failing is refused
   * before the token store is touched; then bearer (or a single-use ticket) → token → scope.
   */
  async function authenticateRequest(c: Context<GatewayEnv>, routeName: string, scope: string, client: string, ticket: string | null): Promise<TokenRecord> {
    const throttled = client === UNKNOWN_CLIENT ? null : throttledResponse(client, now());
    if (throttled) throw new HTTPException(429, { res: throttled });
    const store = new D1TokenStore(c.env.DB);
    try {
      const token =
        ticket === null
          ? await authenticate(c.req.header("authorization") ?? null, scope, store, now())
          : await authenticateTicket(ticket, scope, c.env.TICKET_SECRET, store, ticketUses(c.env), now());
      c.executionCtx.waitUntil(store.touch(token.tokenId, now()).catch(logStorageFailure("last_used_at")));
      return token;
    } catch (error) {
      if (!(error instanceof AuthDenied)) throw error;
      recordAuthDecision(c.env.DB, c.executionCtx, { at: now(), action: "deny", reason: error.reason, handle: error.token?.handle, tokenId: error.token?.tokenId, route: routeName, status: error.response.status, client }, auditFlushMs);
      if (PROBING.has(error.reason) && client !== UNKNOWN_CLIENT) c.executionCtx.waitUntil(recordAuthFailure(c.env.AUTH_THROTTLE, client, now()).catch(logStorageFailure("failed-auth throttle")));
      throw error;
    }
  }

  /** `POST /auth/ticket` {"scope"?: "audio"} (bearer) → a ticket for that scope's WebSocket route. */
  async function handleTicket(c: Context<GatewayEnv>): Promise<Response> {
    const ticketScopes = config.routes.flatMap((route) => (route.auth === "bearer_or_ticket" && route.scope ? [route.scope] : []));
    const body = ticketRequest.safeParse(await c.req.json().catch(() => ({})));
    const scope = body.success ? (body.data.scope ?? ticketScopes[0]) : undefined;
    if (!scope || !ticketScopes.includes(scope)) {
      throw errors.badRequest(`Send {"scope": …} naming a WebSocket route's scope: ${ticketScopes.join(", ") || "none configured"}.`, "invalid_scope");
    }
    if (!c.env.TICKET_SECRET) throw errors.ticketsDisabled();
    const client = c.var.peer.address;
    const token = await authenticateRequest(c, "auth/ticket", scope, client, null);
    recordAuthDecision(c.env.DB, c.executionCtx, { at: now(), action: "ticket", handle: token.handle, tokenId: token.tokenId, route: "auth/ticket", status: 201, client }, auditFlushMs);
    return c.json(await issueTicket(c.env.TICKET_SECRET, token, scope, now()), 201, { "cache-control": "no-store" });
  }

  async function handleCompute(c: Context<GatewayEnv>): Promise<Response> {
    const request = c.req.raw;
    const route = matchRoute(config.routes, c.var.canonicalPath, c.req.header("host") ?? null);
    if (!route) throw errors.notFound();
    const client = c.var.peer.address;
    // Browsers cannot set Authorization on a WebSocket: those routes also take `?ticket=`, never forwarded.
    const takesTicket = route.auth === "bearer_or_ticket" && c.req.header("authorization") === undefined;
    const { ticket, rest: rawQuery } = takesTicket ? takeTicket(c.var.rawQuery) : { ticket: null, rest: c.var.rawQuery };
    const forwardOptions = {
      route,
      canonicalPath: c.var.canonicalPath,
      rawQuery,
      clientAddress: client,
      upstreamTimeoutMs: config.upstream_timeout_ms,
      bodyLimitBytes: config.body_limit_bytes,
    };
    if (route.scope === null) return forward(request, { ...forwardOptions, identity: null });

    // 1–2. Throttle → bearer (or ticket) → token (one D1 lookup: current, unexpired, unrevoked) → scope.
    const audit = { route: route.name, client };
    const token = await authenticateRequest(c, route.name, route.scope, client, ticket);
    const identity = { handle: token.handle, tokenId: token.tokenId };

    // 3. Quota: one Durable Object call admits with every check at once. If it cannot answer, fail closed.
    const limits = effectiveLimits(config, token.limits);
    const quota = quotaFor(c.env);
    // Only LLM generation endpoints spend (and are held back by) the daily token quota.
    const metered = route.metered && request.method === "POST" && METERED_ENDPOINTS.test(c.var.canonicalPath);
    const admitRequest = { handle: token.handle, limits, timezone: config.timezone, now: now(), leaseMs: config.quota_lease_ms, metered };
    const admission = await quota.admit(admitRequest).catch((error: unknown) => {
      if (isStorageFailure(error)) throw error; // it can answer, but not write: onError says so
      console.error(`halo-gate: quota service failed for ${identity.handle}: ${error instanceof Error ? error.message : String(error)}`);
      throw errors.quotaUnavailable();
    });
    if (!admission.admitted) {
      recordAuthDecision(c.env.DB, c.executionCtx, { at: now(), action: "deny", reason: `quota:${admission.refusal}`, ...identity, status: 429, ...audit }, auditFlushMs);
      return quotaExceeded(token.handle, admission.refusal, admission.retryAfterSeconds, limits, admission.state);
    }

    // 4. Forward; the slot is released and the tokens charged when the response ends, however it ends.
    const tally: UsageTally = { reported: null, deltas: 0 };
    const slot = holdSlot({
      quota,
      handle: token.handle,
      leaseId: admission.leaseId,
      leaseMs: config.quota_lease_ms,
      timezone: config.timezone,
      now,
      tally,
      waitUntil: (promise) => c.executionCtx.waitUntil(promise),
      onEnd: (status) => recordAuthDecision(c.env.DB, c.executionCtx, { at: now(), action: "allow", ...identity, status, ...audit }, auditFlushMs),
    });
    request.signal?.addEventListener("abort", () => slot.end(0), { once: true });
    let upstream: Response;
    let plan: MeterPlan = { dropInjectedUsage: false };
    try {
      let bodyOverride: string | undefined;
      if (metered) ({ body: bodyOverride, plan } = planMeteredRequest(await readBodyText(request, config.body_limit_bytes)));
      const started = Date.now();
      upstream = await forward(request, { ...forwardOptions, identity, bodyOverride });
      slot.upstreamLatencyMs = Date.now() - started;
    } catch (error) {
      slot.end(error instanceof HTTPException ? error.status : 502);
      throw error;
    }
    const headers = new Headers(upstream.headers);
    for (const [name, value] of Object.entries(quotaHeaders(limits, admission.state))) headers.set(name, value);
    if (upstream.status === 101 || !upstream.body) {
      // A WebSocket holds no request slot once upgraded (it would block the user's LLM use).
      slot.end(upstream.status);
      return new Response(upstream.body, { status: upstream.status, headers, webSocket: upstream.webSocket ?? null });
    }
    // Only generation endpoints are read for usage; every body is watched for its end (the release).
    const delivered = metered ? upstream.body.pipeThrough(meteringStream(upstream.headers.get("content-type") ?? "", plan, tally)) : upstream.body;
    const body = delivered.pipeThrough(endSlotWhenDone(slot, upstream.status));
    return new Response(body, { status: upstream.status, statusText: upstream.statusText, headers });
  }

  app.onError((error) => {
    if (error instanceof AuthDenied) return error.response;
    if (error instanceof HTTPException) return error.getResponse();
    // D1 or Durable Object storage cannot be used (e.g. a full disk): retryable, and the operator's to fix.
    if (isStorageFailure(error)) {
      console.error("halo-gate: storage unavailable:", error.message);
      return errors.storageUnavailable().getResponse();
    }
    // Never a stack trace or internal detail to the client; the operator sees it in the log.
    console.error("halo-gate: unexpected error:", error instanceof Error ? error.message : String(error));
    return errorResponse(500, { message: "Internal gateway error.", type: "server_error", code: "internal_error" });
  });
  return app;
}

const NO_STORE = { "cache-control": "no-store" };

/** A write made off the request path failed: logged, and never the request's failure. */
const logStorageFailure = (what: string) => (error: unknown) => {
  console.error(`halo-gate: could not write ${what}: ${error instanceof Error ? error.message : String(error)}`);
};

/** What `/api/info` tells anyone on the mesh: no upstream addresses, no secrets. */
function publicInfo(config: GatewayConfig, peer: Peer) {
  return {
    name: "halo-gate",
    version: packageJson.version,
    ...(config.public_url ? { public_url: config.public_url } : {}),
    // The certificate this request came in over, so a client can pin what it sees (serve --tls).
    ...(peer.tlsFingerprint ? { tls: { fingerprint: peer.tlsFingerprint } } : {}),
    auth: { scheme: "bearer", token_format: "sk-halo-<32 hex>", websocket_ticket: "POST /auth/ticket", connect_page: "/_halo/connect" },
    routes: config.routes.map((route: RouteConfig) => ({
      path: route.match === "prefix" ? `${route.path}/*` : route.path,
      auth: route.auth,
      scope: route.scope,
      ...(route.host ? { host: route.host } : {}),
    })),
  };
}
