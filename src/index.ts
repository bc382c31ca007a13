/**
 * Worker entry: `{ fetch, scheduled }` for workerd (`halo-gate serve`, `wrangler dev`) and Cloudflare.
 */
import { WorkerEntrypoint } from "cloudflare:workers";
import type { Hono } from "hono";
import { createAdminApi } from "./admin/api";
import { parseConfig, ConfigError, type GatewayConfig } from "./shared/config";
import { errors } from "./http/errors";
import { createGateway, type GatewayEnv } from "./gateway";
import { sweepExpiredTokens } from "./auth/sweep";

export { UserQuota } from "./quota/user-quota";
export { AuthThrottle } from "./auth/failed-auth-throttle";
export { UpstreamScheduler } from "./queue/upstream-scheduler";
export { Departures } from "./http/departures";

/** One parsed config per isolate (the env object is stable for an isolate's lifetime). */
const configs = new WeakMap<object, GatewayConfig>();
const gateways = new WeakMap<GatewayConfig, Hono<GatewayEnv>>();
const adminApis = new WeakMap<GatewayConfig, Hono<{ Bindings: Env }>>();

function configFor(env: Env): GatewayConfig {
  const raw = env.HALO_CONFIG as unknown as object;
  let config = configs.get(raw);
  if (!config) {
    config = parseConfig(raw);
    configs.set(raw, config);
  }
  return config;
}

function gatewayFor(env: Env): Hono<GatewayEnv> {
  const config = configFor(env);
  let gateway = gateways.get(config);
  if (!gateway) gateways.set(config, (gateway = createGateway(config)));
  return gateway;
}

/**
 * The admin API as its own entrypoint: `halo-gate serve` gives it a loopback-only socket, so it is
 * structurally unreachable from the mesh-facing socket (whose `fetch` has no admin paths).
 */
export class AdminApi extends WorkerEntrypoint<Env> {
  override async fetch(request: Request): Promise<Response> {
    const config = configFor(this.env);
    let admin = adminApis.get(config);
    if (!admin) adminApis.set(config, (admin = createAdminApi(config)));
    return admin.fetch(request, this.env, this.ctx);
  }
}

export default {
  async fetch(request, env, ctx) {
    let gateway: Hono<GatewayEnv>;
    try {
      gateway = gatewayFor(env);
    } catch (error) {
      if (!(error instanceof ConfigError)) throw error;
      console.error(`halo-gate: ${error.message}`);
      return errors.misconfigured().getResponse();
    }
    return gateway.fetch(request, env, ctx);
  },

  async scheduled(controller, env, ctx) {
    ctx.waitUntil(sweepExpiredTokens(env.DB, configFor(env), controller.scheduledTime));
  },
} satisfies ExportedHandler<Env>;
