/**
 * Worker entry: `{ fetch, scheduled }` for workerd (`halo-gate serve`, `wrangler dev`) and Cloudflare.
 */
import type { Hono } from "hono";
import { parseConfig, ConfigError } from "./config/schema";
import { errors } from "./http/errors";
import { createGateway, type GatewayEnv } from "./gateway";
import { sweepExpiredTokens } from "./auth/sweep";

export { UserQuota } from "./quota/user-quota";

/** One parsed config and app per isolate (the env object is stable for an isolate's lifetime). */
const gateways = new WeakMap<object, Hono<GatewayEnv>>();

function gatewayFor(env: Env): Hono<GatewayEnv> {
  const raw = env.HALO_CONFIG as unknown as object;
  let gateway = gateways.get(raw);
  if (!gateway) {
    gateway = createGateway(parseConfig(raw));
    gateways.set(raw, gateway);
  }
  return gateway;
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
    const config = parseConfig(env.HALO_CONFIG);
    ctx.waitUntil(sweepExpiredTokens(env.DB, config, controller.scheduledTime));
  },
} satisfies ExportedHandler<Env>;
