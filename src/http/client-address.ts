/**
 * The client address comes only from the real TCP peer. Under `halo-gate serve` the edge socket
 * (the only listener on the mesh address) reads it off the socket and passes it in
 * `x-halo-client-addr`, proven by the per-boot `EDGE_SECRET`; a client cannot forge either, because
 * the edge strips every client-sent `x-halo-*` header. Deployed on Cloudflare, `CF-Connecting-IP`
 * is the source (config `client_address_source`).
 */
import type { GatewayConfig } from "../config/schema";
import { timingSafeEqual } from "./timing-safe";

export const EDGE_SECRET_HEADER = "x-halo-edge-secret";
export const EDGE_CLIENT_HEADER = "x-halo-client-addr";
export const UNKNOWN_CLIENT = "unknown";

export function clientAddress(request: Request, config: GatewayConfig, edgeSecret: string | undefined): string {
  if (config.client_address_source === "cf-connecting-ip") {
    return request.headers.get("cf-connecting-ip") ?? UNKNOWN_CLIENT;
  }
  const presented = request.headers.get(EDGE_SECRET_HEADER);
  if (!edgeSecret || presented === null || !timingSafeEqual(presented, edgeSecret)) return UNKNOWN_CLIENT;
  return request.headers.get(EDGE_CLIENT_HEADER) ?? UNKNOWN_CLIENT;
}
