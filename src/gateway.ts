/**
 * The gateway as one Hono app. The compute hot path — route → bearer → (token, scope, the peer's
 * mesh owner and quota in one call to the user's Durable Object) → forward → release — reads top to bottom in
 * `handleCompute`; everything it calls does one job in its own module.
 */
import { Hono, type Context } from "hono";
import { HTTPException } from "hono/http-exception";
import { z } from "zod";
import packageJson from "../package.json";
import { AUTH_AUDIT_FLUSH_MS, recordAuthDecision } from "./audit/auth-audit";
import { AuthDenied, authDenied, identifyBearer, probesTokenStore } from "./auth/authenticate";
import { recordAuthFailure, throttledRefusal } from "./auth/failed-auth-throttle";
import { issueTicket, verifyTicket, type TicketClaims } from "./auth/ticket";
import { D1TokenStore, type TokenIdentity } from "./auth/token-store";
import type { GatewayConfig, RouteConfig, UserLimits } from "./shared/config";
import { edgeGuard, UNKNOWN_CLIENT, type Peer, type PeerVariables } from "./http/client-address";
import { departuresStub, watchDeparture } from "./http/departures";
import { meshAuditReason, meshCheck, type MeshVerdict } from "./shared/mesh-identity";
import { answerError, errors } from "./http/errors";
import { AUTH_KINDS, presentedCredential, type Credential } from "./shared/auth-kinds";
import { ABANDONED_PATH } from "./shared/edge-protocol";
import { CONNECT_CSS, CONNECT_HTML, CONNECT_JS, PAGE_HEADERS } from "./pages/connect";
import { requestGuard, type GuardVariables } from "./http/request-guard";
import { meteringStream, METERED_ENDPOINTS, planMeteredRequest, requestsStream, type MeterPlan, type UsageTally } from "./metering/usage";
import { forward, readBodyText, type ForwardOptions } from "./proxy/forward";
import { holdOutsideQueue, QUEUE_WAIT_HEADER, queueing, queueSnapshot, queueUsage, takeTurn, upstreamSchedulerStub } from "./queue/queue-wait";
import { matchRoute } from "./shared/routes";
import { DurableObjectQuota } from "./quota/durable-object-quota";
import { quotaExceeded, quotaHeaders } from "./quota/headers";
import type { Admission, AuthorizeRequest, QuotaService, QuotaState } from "./quota/quota";
import { holdSlot, watchBody, type Slot } from "./quota/slot";
import { relayWebSocket } from "./proxy/websocket-relay";
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

/** A request whose token is good: its quota decision (null when only the token was asked about). */
interface Authorized {
  token: TokenIdentity;
  quota: QuotaService;
  admission: Admission | null;
  limits: UserLimits | null;
  /** For the request's audit row: the device it came from, and a mesh would-deny under `warn`. */
  note: AuditNote;
}

/** An admitted request on its way to the upstream (see `respond`). */
interface Respond {
  request: Request;
  forwardOptions: ForwardOptions;
  slot: Slot;
  limits: UserLimits;
  state: QuotaState;
  metered: boolean;
  plan: MeterPlan;
  tally: UsageTally;
  /** How long it waited for its upstream slot; null on a route without a queue. */
  waitedMs: number | null;
}

/** What the mesh check adds to an audit row (issue 10). */
interface AuditNote {
  reason?: string;
  detail?: Record<string, unknown>;
}

/** Methods that submit work; they hold a concurrent slot (see handleCompute). */
const SUBMITS_WORK: ReadonlySet<string> = new Set(["POST", "PUT", "PATCH"]);

export function createGateway(config: GatewayConfig, options: GatewayOptions = {}): Hono<GatewayEnv> {
  const now = options.now ?? Date.now;
  const quotaFor = options.quota ?? ((env: Env) => new DurableObjectQuota(env.USER_QUOTA));
  const auditFlushMs = options.auditFlushMs ?? AUTH_AUDIT_FLUSH_MS;
  // Some route has a fair queue (issue 12): its scheduler then counts every slot a user holds.
  const hasQueues = queueing(config);
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
  // The edge: this request's client went away before its response started (src/shared/edge-protocol.ts).
  app.post(ABANDONED_PATH, async (c) => {
    const id = c.var.peer.requestId;
    if (!id) return c.body(null, 204);
    // A request holding a slot is told through its watch; one waiting in the queue leaves it.
    await departuresStub(c.env.DEPARTURES).report(id);
    if (hasQueues) await upstreamSchedulerStub(c.env.UPSTREAM_SCHEDULER).leave(id);
    return c.body(null, 204);
  });
  // Self-service (issue 9): any valid token learns who it is, what it may use and what is left.
  app.get("/api/me", async (c) => {
    const { token, quota, note } = await authorizeRequest(c, { name: "api/me", scope: null }, bearerOf(c), false);
    const profile = await quota.profile(token, now(), config.limits, config.timezone);
    if (!profile) throw errors.invalidToken();
    // The fair queue (issue 12): what this user waits for now, and has waited, since serve started.
    const queues = await queueSnapshot(c.env, config);
    if (queues) {
      profile.in_flight += queues.users[token.handle]?.inFlight ?? 0;
      profile.queue = queueUsage(queues, token.handle);
    }
    // A mesh would-deny (warn) is recorded here too; other /api/me calls leave no row, as before.
    if (note.reason) recordAuthDecision(c.env.DB, c.executionCtx, { at: now(), action: "allow", handle: token.handle, tokenId: token.tokenId, route: "api/me", status: 200, client: c.var.peer.address, ...note }, auditFlushMs);
    return c.json(profile, 200, NO_STORE);
  });
  app.all("*", handleCompute);

  /**
   * Steps 1–3 of every authenticated request, audited: an address that keeps failing is refused
   * before the token store is touched; then which token the credential names (a bearer, or a
   * single-use ticket: src/shared/auth-kinds.ts); then one
   * call to the user's object confirms the token is current and scoped and, with `admit`, admits
   * the request. If the object cannot answer, fail closed.
   */
  async function authorizeRequest(
    c: Context<GatewayEnv>,
    route: { name: string; scope: string | null },
    credential: Exclude<Credential, { kind: "none" }>,
    admit: AuthorizeRequest["admit"],
  ): Promise<Authorized> {
    const client = c.var.peer.address;
    const throttled = client === UNKNOWN_CLIENT ? null : throttledRefusal(client, now());
    if (throttled) throw throttled;
    const store = new D1TokenStore(c.env.DB);
    const quota = quotaFor(c.env);
    let token: TokenIdentity | null = null;
    try {
      let claims: TicketClaims | null = null;
      if (credential.kind === "bearer") token = await identifyBearer(credential.authorization, store);
      else token = claims = await verifyTicket(credential.ticket, route.scope ?? "", c.env.TICKET_SECRET, now());
      // Whose device this is, when the edge looked (issue 10): compared by the object, after the token.
      const mesh = meshCheck(config, c.var.peer.mesh);
      const request: AuthorizeRequest = {
        token,
        scope: route.scope,
        now: now(),
        admit,
        ...(claims ? { ticket: { jti: claims.jti, expiresAt: claims.expiresAt } } : {}),
        ...(mesh ? { mesh } : {}),
      };
      const decision = await quota.authorize(request).catch((error: unknown) => {
        if (isStorageFailure(error)) throw error; // it can answer, but not write: onError says so
        console.error(`halo-gate: quota service failed for ${token!.handle}: ${error instanceof Error ? error.message : String(error)}`);
        throw errors.quotaUnavailable();
      });
      if (!decision.ok && decision.reason === "mesh") throw meshDenied(decision.mesh, token);
      // A ticket already used is as good as none: the same 401 as an unknown token.
      if (!decision.ok) throw authDenied(decision.reason === "ticket_used" ? "unknown" : decision.reason, route.scope ?? "", token);
      const device = decision.mesh?.device ?? null;
      c.executionCtx.waitUntil(store.touch(token.tokenId, now(), device).catch(logStorageFailure("last_used_at")));
      return { token, quota, admission: decision.admission, limits: decision.limits, note: auditNote(decision.mesh) };
    } catch (error) {
      if (!(error instanceof AuthDenied)) throw error;
      recordAuthDecision(
        c.env.DB,
        c.executionCtx,
        { at: now(), action: "deny", reason: error.reason, handle: error.token?.handle, tokenId: error.token?.tokenId, route: route.name, status: error.status, client, ...(error.detail ? { detail: error.detail } : {}) },
        auditFlushMs,
      );
      if (probesTokenStore(error.reason) && client !== UNKNOWN_CLIENT) c.executionCtx.waitUntil(recordAuthFailure(c.env.AUTH_THROTTLE, client, now()).catch(logStorageFailure("failed-auth throttle")));
      throw error;
    }
  }

  /** `POST /auth/ticket` {"scope"?: "audio"} (bearer) → a ticket for that scope's WebSocket route. */
  async function handleTicket(c: Context<GatewayEnv>): Promise<Response> {
    const ticketScopes = config.routes.flatMap((route) => (AUTH_KINDS[route.auth].tickets && route.scope ? [route.scope] : []));
    const body = ticketRequest.safeParse(await c.req.json().catch(() => ({})));
    const scope = body.success ? (body.data.scope ?? ticketScopes[0]) : undefined;
    if (!scope || !ticketScopes.includes(scope)) {
      throw errors.badRequest(`Send {"scope": …} naming a WebSocket route's scope: ${ticketScopes.join(", ") || "none configured"}.`, "invalid_scope");
    }
    if (!c.env.TICKET_SECRET) throw errors.ticketsDisabled();
    const client = c.var.peer.address;
    const { token, note } = await authorizeRequest(c, { name: "auth/ticket", scope }, bearerOf(c), false);
    recordAuthDecision(c.env.DB, c.executionCtx, { at: now(), action: "ticket", handle: token.handle, tokenId: token.tokenId, route: "auth/ticket", status: 201, client, ...note }, auditFlushMs);
    return c.json(await issueTicket(c.env.TICKET_SECRET, token, scope, now()), 201, { "cache-control": "no-store" });
  }

  async function handleCompute(c: Context<GatewayEnv>): Promise<Response> {
    const request = c.req.raw;
    const route = matchRoute(config.routes, c.var.canonicalPath, c.req.header("host") ?? null);
    if (!route) throw errors.notFound();
    const client = c.var.peer.address;
    // What the route's auth kind takes: nothing, a bearer, or a `?ticket=` (never forwarded).
    const { credential, rawQuery } = presentedCredential(route.auth, c.req.header("authorization") ?? null, c.var.rawQuery);
    const forwardOptions = {
      route,
      canonicalPath: c.var.canonicalPath,
      rawQuery,
      clientAddress: client,
      upstreamTimeoutMs: config.upstream_timeout_ms,
      bodyLimitBytes: config.body_limit_bytes,
    };
    if (credential.kind === "none") return forward(request, { ...forwardOptions, identity: null });

    // 1–3. Throttle → bearer (or ticket) → one call to the user's object: token, scope, quota.
    const audit = { route: route.name, client };
    // Only LLM generation endpoints spend (and are held back by) the daily token quota.
    const metered = route.metered && request.method === "POST" && METERED_ENDPOINTS.test(c.var.canonicalPath);
    // Work holds one of the user's concurrent slots (generation, image generation, uploads, sockets);
    // reads (GET /v1/models, HEAD, OPTIONS) are governed by the rate bucket alone (issue 9).
    const webSocket = c.req.header("upgrade")?.toLowerCase() === "websocket";
    const holdsSlot = webSocket || SUBMITS_WORK.has(request.method);
    // On a route with `max_in_flight`, work waits its turn in the fair queue instead (issue 12). Once a
    // route has a queue, its scheduler counts every slot a user holds (the `streams` cap is one number
    // across routes), and the user's object counts none.
    const queued = route.max_in_flight !== undefined && holdsSlot;
    const admit = { defaults: config.limits, timezone: config.timezone, leaseMs: config.quota_lease_ms, metered, holdsSlot: holdsSlot && !hasQueues, enforce: config.quotas };
    const authorized = await authorizeRequest(c, { name: route.name, scope: route.scope }, credential, admit);
    const { token, quota, note } = authorized;
    // Asked to admit, the object always answers with an admission and the user's limits.
    const [admission, limits] = [authorized.admission!, authorized.limits!];
    const identity = { handle: token.handle, tokenId: token.tokenId };
    // A denial's audit row keeps the mesh check's detail; its reason is the denial's own.
    const deniedNote = note.detail ? { detail: note.detail } : {};
    if (!admission.admitted) {
      recordAuthDecision(c.env.DB, c.executionCtx, { at: now(), action: "deny", reason: `quota:${admission.refusal}`, ...identity, status: 429, ...audit, ...deniedNote }, auditFlushMs);
      throw quotaExceeded(token.handle, admission.refusal, admission.retryAfterSeconds, limits, admission.state);
    }

    // 4. The slot is released and the tokens charged when the response ends, however it ends.
    const tally: UsageTally = { reported: null, deltas: 0 };
    // A request that never reached the upstream because its wait in the queue ended, or its user was at
    // the cap the scheduler counts (issue 12), is audited as a denial with that reason.
    let denial: string | null = null;
    const slot = holdSlot({
      quota,
      token,
      leaseId: admission.leaseId,
      leaseMs: config.quota_lease_ms,
      timezone: config.timezone,
      now,
      tally,
      waitUntil: (promise) => c.executionCtx.waitUntil(promise),
      onEnd: (status) =>
        recordAuthDecision(
          c.env.DB,
          c.executionCtx,
          denial ? { at: now(), action: "deny", reason: denial, ...identity, status, ...audit, ...deniedNote } : { at: now(), action: "allow", ...identity, status, ...audit, ...note },
          auditFlushMs,
        ),
    });
    request.signal?.addEventListener("abort", () => void slot.end(0), { once: true });
    // The edge's word that the client left (workerd's own comes only when it writes): src/http/departures.ts.
    if (c.var.peer.requestId) watchDeparture(departuresStub(c.env.DEPARTURES), c.var.peer.requestId, slot, (promise) => c.executionCtx.waitUntil(promise));
    // Work on a route without a queue, beside queued ones: the user's cap is counted in the scheduler
    // (one more call: +0.10–0.22 ms median on a ~4 ms POST, measured interleaved against a config
    // without a queued route).
    if (holdsSlot && !queued && hasQueues && config.quotas) {
      const lease = await holdOutsideQueue(upstreamSchedulerStub(c.env.UPSTREAM_SCHEDULER), { user: token.handle, cap: limits.streams, leaseMs: config.quota_lease_ms }).catch((error: unknown) => {
        console.error(`halo-gate: the upstream scheduler failed: ${error instanceof Error ? error.message : String(error)}`);
        denial = "quota:unavailable";
        void slot.end(503);
        throw errors.quotaUnavailable();
      });
      if (!lease) {
        denial = "quota:concurrency";
        void slot.end(429, "concurrency");
        throw quotaExceeded(token.handle, "concurrency", 1, limits, admission.state);
      }
      slot.attach(lease);
    }
    // A generation request's body is read for metering, and a queued route's to know whether it streams.
    let bodyOverride: string | undefined;
    let plan: MeterPlan = { dropInjectedUsage: false };
    let streams = false;
    // (Any JSON spelling, or none: a client that sends `"stream": true` must get its early 200.)
    const contentType = (c.req.header("content-type") ?? "").toLowerCase();
    const readsBody = metered || (queued && !webSocket && (contentType === "" || contentType.startsWith("application/json")));
    if (readsBody) {
      try {
        bodyOverride = await readBodyText(request, config.body_limit_bytes);
      } catch (error) {
        void slot.end(error instanceof HTTPException ? error.status : 400);
        throw error;
      }
      streams = requestsStream(bodyOverride);
      if (metered) ({ body: bodyOverride, plan } = planMeteredRequest(bodyOverride));
    }

    // 5. Forward; on a queued route, when its turn comes (issue 12).
    const run = (waitedMs: number | null) =>
      respond(c, { request, forwardOptions: { ...forwardOptions, identity, bodyOverride, cancel: slot.revoked }, slot, limits, state: admission.state, metered, plan, tally, waitedMs });
    if (!queued) return run(null);
    return takeTurn({
      scheduler: upstreamSchedulerStub(c.env.UPSTREAM_SCHEDULER),
      // The edge's id for the request, so that it can take it out of the queue if its client leaves.
      request: {
        id: c.var.peer.requestId ?? crypto.randomUUID(),
        route: route.name,
        maxInFlight: route.max_in_flight!,
        user: token.handle,
        cap: config.quotas ? limits.streams : Infinity,
        leaseMs: config.quota_lease_ms,
        timeoutMs: route.queue_timeout_ms ?? config.queue_timeout_ms,
      },
      slot,
      streams,
      signal: request.signal,
      waitUntil: (promise) => c.executionCtx.waitUntil(promise),
      run,
      onRefused: (kind) => (denial = `queue:${kind}`),
    });
  }

  /**
   * Forwards an admitted request and hands its response back with the user's quota state (and how
   * long it waited in the queue, on a queued route); the slot ends when the response has ended.
   */
  async function respond(c: Context<GatewayEnv>, r: Respond): Promise<Response> {
    const { slot } = r;
    let upstream: Response;
    try {
      const started = Date.now();
      upstream = await forward(r.request, r.forwardOptions);
      slot.upstreamLatencyMs = Date.now() - started;
    } catch (error) {
      void slot.end(slot.departed ? 0 : error instanceof HTTPException ? error.status : 502);
      throw error;
    }
    const headers = new Headers(upstream.headers);
    for (const [name, value] of Object.entries(quotaHeaders(r.limits, r.state))) headers.set(name, value);
    if (r.waitedMs !== null) headers.set(QUEUE_WAIT_HEADER, String(r.waitedMs));
    // A WebSocket holds its slot for its life, and is closed if the token is revoked (issue 9).
    if (upstream.status === 101 && upstream.webSocket) {
      const relay = relayWebSocket(upstream.webSocket, slot.revoked);
      c.executionCtx.waitUntil(relay.closed.then(() => slot.end(101)));
      return new Response(null, { status: 101, headers, webSocket: relay.client });
    }
    // The slot ends at the headers when the work is done by then: no body, or a fixed-length body
    // that is not metered (issue 8: the body is then handed through untouched, no stream between).
    if (!upstream.body || (!r.metered && upstream.headers.has("content-length"))) {
      void slot.end(upstream.status);
      return new Response(upstream.body, { status: upstream.status, statusText: upstream.statusText, headers, webSocket: upstream.webSocket ?? null });
    }
    // Only generation endpoints are read for usage; every other stream passes a native pipe that
    // ends the slot when the body ends, however it ends.
    const delivered = r.metered ? upstream.body.pipeThrough(meteringStream(upstream.headers.get("content-type") ?? "", r.plan, r.tally)) : upstream.body;
    const sse = (upstream.headers.get("content-type") ?? "").startsWith("text/event-stream");
    const body = watchBody(delivered, slot, upstream.status, { signal: r.request.signal, waitUntil: (promise) => c.executionCtx.waitUntil(promise), sse });
    return new Response(body, { status: upstream.status, statusText: upstream.statusText, headers });
  }

  app.onError(answerError("halo-gate"));
  return app;
}

const NO_STORE = { "cache-control": "no-store" };

/** The audit row's device (when the edge said) and, under `warn`, the would-deny (issue 10). */
function auditNote(verdict: MeshVerdict | undefined): AuditNote {
  if (!verdict) return {};
  const device = verdict.device ? { device: verdict.device } : {};
  if (verdict.kind === "match") return verdict.device ? { detail: device } : {};
  return { reason: meshAuditReason(verdict.finding), detail: { ...device, mesh: verdict.finding } };
}

/** Issue 10's refusal, in the user's words: 403 `mesh_mismatch`, or 503 when tailscaled could not say. */
function meshDenied(verdict: MeshVerdict & { kind: "refuse" }, token: TokenIdentity): AuthDenied {
  const detail = { mesh: verdict.finding, ...(verdict.device ? { device: verdict.device } : {}) };
  if (verdict.finding === "unavailable") return new AuthDenied("mesh_unavailable", errors.meshUnavailable(), token, detail);
  const on = verdict.device ? ` (${verdict.device})` : "";
  const message = {
    other_user: `This token belongs to another mesh user than the device this request came from${on}. Use your token only from your own devices on the mesh.`,
    unknown: "This request did not come from a device on the mesh, and a halo-gate token works only from its owner's mesh devices. Connect from your own device on the mesh.",
    tagged: `This request came from a tagged mesh device${on}, which belongs to no user, and a halo-gate token works only from its owner's devices. Use your own device.`,
    unbound: `This token is not bound to a mesh user yet, so halo-gate cannot tell your devices from others'. Ask the operator to bind it: halo-gate update ${token.handle} --mesh-user <your mesh user>.`,
  }[verdict.finding];
  return new AuthDenied("mesh_mismatch", errors.meshMismatch(message), token, detail);
}

/** The bearer credential of a gateway path that takes only bearers (`/api/me`, `/auth/ticket`). */
const bearerOf = (c: Context<GatewayEnv>) => ({ kind: "bearer", authorization: c.req.header("authorization") ?? null }) as const;

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
