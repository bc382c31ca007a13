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

/** The edge's id for this request (a UUID), so it can tell the core when the client went away. */
export const EDGE_REQUEST_HEADER = "x-halo-edge-request";
export const EDGE_REQUEST_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * The edge tells the core here (`POST`, with the secret and the request's id) that a client went
 * away before its response ended. workerd does not tell the worker itself until it next writes to
 * that connection — measured: `request.signal` never fired while a request waited in the fair queue
 * (issue 12), which then kept its place and took its slot; a waiting stream's departure was seen only
 * at its next comment line. The core takes the request out of the queue and reports it to the
 * `Departures` object, through which a request holding a slot learns it (src/http/departures.ts).
 */
export const ABANDONED_PATH = "/_halo/abandoned";

/** Header prefixes that steer the core's (or the runtime's) trust: a client may never send them. */
export const INTERNAL_HEADER_PREFIXES = ["x-halo-", "mf-", "cf-"] as const;

export const isInternalHeader = (name: string): boolean => INTERNAL_HEADER_PREFIXES.some((prefix) => name.startsWith(prefix));
