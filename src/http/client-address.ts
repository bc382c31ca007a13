/**
 * The client address comes only from the real TCP peer. Under `halo-gate serve` the edge socket
 * (the only listener on the mesh address) reads it off the socket and passes it in
 * `x-halo-client-addr`, proven by the per-boot `EDGE_SECRET`; a client cannot forge either, because
 * the edge strips every client-sent `x-halo-*` header. Deployed on Cloudflare, `CF-Connecting-IP`
 * is the source (config `client_address_source`). Beside the address the edge passes who owns the
 * peer on the mesh (`x-halo-mesh*`, issue 10: src/shared/mesh-identity.ts), trusted under the same secret.
 *
 * The core's own socket is on loopback, but any local process can reach it, and what reaches it
 * directly skipped the edge's raw-target screening. So when `EDGE_SECRET` is bound and the address
 * comes from the edge, a request without the exact secret is refused (403) before anything else
 * runs — `/healthz` included. Without `EDGE_SECRET` (`wrangler dev`, no edge in front) nothing is
 * refused and the client is "unknown".
 */
import { createMiddleware } from "hono/factory";
import type { GatewayConfig } from "../shared/config";
import { EDGE_CLIENT_HEADER, EDGE_REQUEST_HEADER, EDGE_REQUEST_ID, EDGE_SECRET_HEADER, EDGE_TLS_HEADER } from "../shared/edge-protocol";
import { parseMeshHeaders, type MeshPeer } from "../shared/mesh-identity";
import { errors } from "./errors";
import { timingSafeEqual } from "./timing-safe";

export const UNKNOWN_CLIENT = "unknown";

/** What the core knows of the peer that sent a request. */
export interface Peer {
  address: string;
  /** Set only by the edge (proven by the secret) when it terminated TLS. */
  tlsFingerprint: string | null;
  /**
   * Who owns the peer on the mesh, as the edge learned it from tailscaled (src/shared/mesh-identity.ts);
   * null when no edge is in front (`wrangler dev`, Cloudflare): the mesh check is then off.
   */
  mesh: MeshPeer | null;
  /** The edge's id for this request (null without an edge): how the edge names it when its client leaves. */
  requestId: string | null;
}

export type PeerVariables = { peer: Peer };

/** The request's peer, or null when it must be refused: EDGE_SECRET is bound and the request lacks it. */
export function peerOf(request: Request, config: GatewayConfig, edgeSecret: string | undefined): Peer | null {
  if (config.client_address_source === "cf-connecting-ip") {
    return { address: request.headers.get("cf-connecting-ip") ?? UNKNOWN_CLIENT, tlsFingerprint: null, mesh: null, requestId: null };
  }
  if (!edgeSecret) return { address: UNKNOWN_CLIENT, tlsFingerprint: null, mesh: null, requestId: null };
  const presented = request.headers.get(EDGE_SECRET_HEADER);
  if (presented === null || !timingSafeEqual(presented, edgeSecret)) return null;
  return {
    address: request.headers.get(EDGE_CLIENT_HEADER) ?? UNKNOWN_CLIENT,
    tlsFingerprint: request.headers.get(EDGE_TLS_HEADER),
    mesh: parseMeshHeaders(request.headers),
    requestId: EDGE_REQUEST_ID.test(request.headers.get(EDGE_REQUEST_HEADER) ?? "") ? request.headers.get(EDGE_REQUEST_HEADER) : null,
  };
}

/**
 * The gateway's first middleware: refuses what did not come through the edge, and leaves the peer in
 * `c.var.peer` for everything after it.
 *
 * @example
 * app.use(edgeGuard(config));
 * app.get("/x", (c) => c.text(c.var.peer.address));
 */
export function edgeGuard(config: GatewayConfig) {
  return createMiddleware<{ Bindings: Env; Variables: PeerVariables }>(async (c, next) => {
    const peer = peerOf(c.req.raw, config, c.env.EDGE_SECRET);
    if (!peer) throw errors.edgeRequired();
    c.set("peer", peer);
    await next();
  });
}
