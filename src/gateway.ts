/**
 * The gateway as one Hono app. The compute hot path — route → bearer → scope → forward — reads top
 * to bottom in `handleCompute`; everything it calls does one job in its own module.
 */
import { Hono, type Context } from "hono";
import { HTTPException } from "hono/http-exception";
import packageJson from "../package.json";
import { AuthDenied, authenticate } from "./auth/authenticate";
import { D1TokenStore } from "./auth/token-store";
import type { GatewayConfig } from "./config/schema";
import { clientAddress } from "./http/client-address";
import { errorResponse, errors } from "./http/errors";
import { requestGuard, type GuardVariables } from "./http/request-guard";
import { forward } from "./proxy/forward";
import { matchRoute } from "./proxy/routes";

export type GatewayEnv = { Bindings: Env; Variables: GuardVariables };

export interface GatewayOptions {
  /** The clock; tests pin it to check expiry at its exact boundary. */
  now?: () => number;
}

export function createGateway(config: GatewayConfig, options: GatewayOptions = {}): Hono<GatewayEnv> {
  const now = options.now ?? Date.now;
  const app = new Hono<GatewayEnv>();

  app.use(requestGuard());
  app.get("/healthz", (c) => c.json({ status: "ok" }));
  app.get("/api/info", (c) => c.json(publicInfo(config)));
  app.all("*", handleCompute);

  async function handleCompute(c: Context<GatewayEnv>): Promise<Response> {
    const route = matchRoute(config.routes, c.var.canonicalPath, c.req.header("host") ?? null);
    if (!route) throw errors.notFound();
    const client = clientAddress(c.req.raw, config, c.env.EDGE_SECRET);
    let identity = null;
    if (route.scope !== null) {
      const store = new D1TokenStore(c.env.DB);
      const token = await authenticate(c.req.header("authorization") ?? null, route.scope, store, now());
      c.executionCtx.waitUntil(store.touch(token.tokenId, now()));
      identity = { handle: token.handle, tokenId: token.tokenId };
    }
    return forward(c.req.raw, {
      route,
      canonicalPath: c.var.canonicalPath,
      rawQuery: c.var.rawQuery,
      identity,
      clientAddress: client,
      upstreamTimeoutMs: config.upstream_timeout_ms,
      bodyLimitBytes: config.body_limit_bytes,
    });
  }

  app.onError((error) => {
    if (error instanceof AuthDenied) return error.response;
    if (error instanceof HTTPException) return error.getResponse();
    // Never a stack trace or internal detail to the client; the operator sees it in the log.
    console.error("halo-gate: unexpected error:", error instanceof Error ? error.message : String(error));
    return errorResponse(500, { message: "Internal gateway error.", type: "server_error", code: "internal_error" });
  });
  return app;
}

/** What `/api/info` tells anyone on the mesh: no upstream addresses, no secrets. */
function publicInfo(config: GatewayConfig) {
  return {
    name: "halo-gate",
    version: packageJson.version,
    auth: { scheme: "bearer", token_format: "sk-halo-<32 hex>", websocket_ticket: "POST /auth/ticket" },
    routes: config.routes.map((route) => ({
      path: route.match === "prefix" ? `${route.path}/*` : route.path,
      auth: route.auth,
      scope: route.scope,
      ...(route.host ? { host: route.host } : {}),
    })),
  };
}
