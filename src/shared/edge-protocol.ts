/**
 * What `halo-gate serve`'s edge tells the core beside each request (docs/contract.md §2): the real
 * TCP peer, the certificate it was served over, and the proof that the request came through the edge
 * at all. The core trusts these only with the exact per-boot secret (src/http/client-address.ts);
 * the edge drops every client-sent header with an internal prefix first (cli/serve/edge.ts), and
 * adds who owns the peer on the mesh (src/shared/mesh-identity.ts).
 *
 * Pure TypeScript, no Node or Workers APIs (src/shared/).
 */
export const EDGE_SECRET_HEADER = "x-halo-edge-secret";
export const EDGE_CLIENT_HEADER = "x-halo-client-addr";
/** The SHA-256 fingerprint of the certificate the edge served this request with (serve --tls). */
export const EDGE_TLS_HEADER = "x-halo-tls-fingerprint";

/** Header prefixes that steer the core's (or the runtime's) trust: a client may never send them. */
export const INTERNAL_HEADER_PREFIXES = ["x-halo-", "mf-", "cf-"] as const;

export const isInternalHeader = (name: string): boolean => INTERNAL_HEADER_PREFIXES.some((prefix) => name.startsWith(prefix));
