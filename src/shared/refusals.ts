/**
 * Every refusal halo-gate answers, as data, in one place (issue 11): the OpenAI-shaped JSON error
 * (`{"error":{"message","type","code"}}`), its status and its headers. The worker throws them as
 * `Refused` (src/http/errors.ts); the Node edge writes them itself (cli/serve/edge.ts) for what it
 * refuses before the core sees a byte — so a refusal reads the same whichever side made it.
 * Messages tell the user what to do and never echo a credential. The table is docs/contract.md §5.
 *
 * Pure TypeScript, no Node or Workers APIs (src/shared/).
 */
import { ALLOW_HEADER } from "./methods";

export const REALM = 'Bearer realm="halo-gate"';

/** OpenAI's error types (the SDKs map them to exception classes), plus the gateway's own. */
export type ErrorType = "invalid_request_error" | "permission_error" | "requests" | "insufficient_quota" | "server_error" | "upstream_error";

export interface ErrorBody {
  message: string;
  type: ErrorType;
  code: string;
}

export interface Refusal extends ErrorBody {
  status: number;
  headers?: Record<string, string>;
}

/** The one spelling of a refusal's body. */
export const refusalJson = (refusal: ErrorBody): string => JSON.stringify({ error: { message: refusal.message, type: refusal.type, code: refusal.code } });

const RETRY_SHORTLY = { "retry-after": "5" };

const refusal = (status: number, type: ErrorType, code: string, message: string, headers?: Record<string, string>): Refusal => ({
  status,
  type,
  code,
  message,
  ...(headers ? { headers } : {}),
});

export const refusals = {
  // ── the request itself (the edge's screen, the core's guard) ──
  badRequest: (message: string, code = "bad_request") => refusal(400, "invalid_request_error", code, message),
  methodNotAllowed: (method: string) =>
    refusal(405, "invalid_request_error", "method_not_allowed", `Method ${method.replace(/[^A-Z0-9_-]/gi, "?").slice(0, 20)} is not supported by halo-gate.`, { allow: ALLOW_HEADER }),
  invalidPath: (why: string) => refusal(400, "invalid_request_error", "invalid_path", why),
  invalidHost: () => refusal(400, "invalid_request_error", "invalid_host", "The Host header must be one host name or address, with an optional port."),
  misdirected: () => refusal(421, "invalid_request_error", "misdirected_request", "This gateway does not serve that host name; use the address in your invite."),
  headersTooLarge: () => refusal(431, "invalid_request_error", "headers_too_large", "Request Header Fields Too Large"),
  tooManyHeaders: (limit: number) => refusal(431, "invalid_request_error", "too_many_headers", `The request has more than ${limit} header lines.`),
  bodyNotAllowed: (method: string) => refusal(400, "invalid_request_error", "body_not_allowed", `A ${method} request cannot carry a body.`),
  payloadTooLarge: (limit: number) => refusal(413, "invalid_request_error", "payload_too_large", `Request body is larger than the gateway's limit of ${limit} bytes.`),
  requestTimeout: (what: string) => refusal(408, "invalid_request_error", "request_timeout", what),
  tooManyInFlight: (limit: number, address: string) =>
    refusal(429, "requests", "too_many_requests", `More than ${limit} requests in flight from ${address}.`, { "retry-after": "1" }),
  notFound: () => refusal(404, "invalid_request_error", "not_found", "No such route. See /api/info for the routes this gateway serves."),

  // ── credentials ──
  noCredentials: () =>
    refusal(401, "invalid_request_error", "missing_token", "Missing bearer token: send 'Authorization: Bearer sk-halo-…' (ask the operator for an invite).", {
      "www-authenticate": REALM,
    }),
  malformedAuthorization: (reason: string) =>
    refusal(400, "invalid_request_error", "invalid_request", `Malformed Authorization header: ${reason}.`, { "www-authenticate": `${REALM}, error="invalid_request"` }),
  invalidToken: () =>
    refusal(401, "invalid_request_error", "invalid_token", "Invalid token: it is unknown, revoked or expired. Ask the operator for a new invite.", {
      "www-authenticate": `${REALM}, error="invalid_token"`,
    }),
  insufficientScope: (scope: string) =>
    refusal(403, "permission_error", "insufficient_scope", `This token is not allowed on this route (it needs the "${scope}" scope). Ask the operator to add it.`, {
      "www-authenticate": `${REALM}, error="insufficient_scope", scope="${scope}"`,
    }),
  tooManyAuthFailures: (seconds: number) =>
    refusal(429, "requests", "too_many_auth_failures", `Too many failed authentication attempts from your address. Retry in ${seconds} s.`, { "retry-after": String(seconds) }),
  /** Issue 10: a good token from a device that is not its owner's (the message says which case, in the user's words). */
  meshMismatch: (message: string) => refusal(403, "permission_error", "mesh_mismatch", message),
  meshUnavailable: () =>
    refusal(
      503,
      "server_error",
      "mesh_unavailable",
      "halo-gate cannot tell which mesh device this request came from right now (tailscaled is not answering), so it refuses. Retry shortly.",
      RETRY_SHORTLY,
    ),
  edgeRequired: () =>
    refusal(403, "permission_error", "edge_required", "Requests must come through the gateway's listener (the address halo-gate serve prints), not its internal socket."),
  ticketsDisabled: () => refusal(503, "server_error", "tickets_disabled", "WebSocket tickets are not enabled on this gateway (no TICKET_SECRET); use a bearer token."),

  // ── the fair queue (issue 12) ──
  queueTimeout: (route: string, seconds: number) =>
    refusal(429, "requests", "queue_timeout", `The ${route} service stayed busy: this request waited ${seconds} s in the queue and was not served. Retry shortly.`, {
      "retry-after": "1",
      "retry-after-ms": "1000",
    }),
  queueUnavailable: () =>
    refusal(503, "server_error", "queue_unavailable", "halo-gate is restarting and could not keep this request's place in the queue. Retry shortly.", RETRY_SHORTLY),

  // ── the gateway's own parts ──
  upstreamUnavailable: () =>
    refusal(502, "upstream_error", "upstream_unavailable", "The compute service behind this route is not reachable right now. Try again shortly."),
  upstreamTimeout: (seconds: number) => refusal(504, "upstream_error", "upstream_timeout", `The compute service did not start answering within ${seconds} s.`),
  coreUnavailable: () => refusal(502, "server_error", "gateway_unavailable", "The gateway core is not reachable; try again shortly."),
  quotaUnavailable: () =>
    refusal(503, "server_error", "quota_unavailable", "The quota service is not answering, so halo-gate refuses rather than run unmetered. Retry shortly.", RETRY_SHORTLY),
  storageUnavailable: () =>
    refusal(
      503,
      "server_error",
      "storage_unavailable",
      "halo-gate cannot write its storage right now (the operator has been told in the gateway log). Retry shortly.",
      RETRY_SHORTLY,
    ),
  misconfigured: () => refusal(503, "server_error", "misconfigured", "halo-gate is misconfigured; the operator has been told in the gateway log."),
  internal: () => refusal(500, "server_error", "internal_error", "Internal gateway error."),
} as const;
