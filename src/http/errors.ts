/**
 * OpenAI-compatible JSON errors (`{"error":{"message","type","code"}}`) thrown as Hono
 * `HTTPException`s, so every layer can refuse a request the same way. Messages tell the user what
 * to do and never echo a credential.
 */
import { HTTPException } from "hono/http-exception";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { ALLOW_HEADER } from "./methods";

export const REALM = 'Bearer realm="halo-gate"';

export interface ErrorBody {
  message: string;
  type: string;
  code: string;
}

export function errorResponse(status: ContentfulStatusCode, body: ErrorBody, headers?: HeadersInit): Response {
  const response = new Response(JSON.stringify({ error: body }), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", "cache-control": "no-store" },
  });
  new Headers(headers).forEach((value, name) => response.headers.set(name, value));
  return response;
}

export function gatewayError(status: ContentfulStatusCode, body: ErrorBody, headers?: HeadersInit): HTTPException {
  return new HTTPException(status, { message: body.message, res: errorResponse(status, body, headers) });
}

/** Shorthands for the docs/contract.md §5 table. */
export const errors = {
  noCredentials: () =>
    gatewayError(
      401,
      {
        message: "Missing bearer token: send 'Authorization: Bearer sk-halo-…' (ask the operator for an invite).",
        type: "invalid_request_error",
        code: "missing_token",
      },
      { "www-authenticate": REALM },
    ),
  malformedAuthorization: (reason: string) =>
    gatewayError(
      400,
      { message: `Malformed Authorization header: ${reason}.`, type: "invalid_request_error", code: "invalid_request" },
      { "www-authenticate": `${REALM}, error="invalid_request"` },
    ),
  invalidToken: () =>
    gatewayError(
      401,
      {
        message: "Invalid token: it is unknown, revoked or expired. Ask the operator for a new invite.",
        type: "invalid_request_error",
        code: "invalid_token",
      },
      { "www-authenticate": `${REALM}, error="invalid_token"` },
    ),
  insufficientScope: (scope: string) =>
    gatewayError(
      403,
      {
        message: `This token is not allowed on this route (it needs the "${scope}" scope). Ask the operator to add it.`,
        type: "permission_error",
        code: "insufficient_scope",
      },
      { "www-authenticate": `${REALM}, error="insufficient_scope", scope="${scope}"` },
    ),
  badRequest: (message: string, code = "bad_request") =>
    gatewayError(400, { message, type: "invalid_request_error", code }),
  methodNotAllowed: (method: string) =>
    gatewayError(
      405,
      { message: `Method ${method} is not supported by halo-gate.`, type: "invalid_request_error", code: "method_not_allowed" },
      { allow: ALLOW_HEADER },
    ),
  notFound: () =>
    gatewayError(404, {
      message: "No such route. See /api/info for the routes this gateway serves.",
      type: "invalid_request_error",
      code: "not_found",
    }),
  payloadTooLarge: (limit: number) =>
    gatewayError(413, {
      message: `Request body is larger than the gateway's limit of ${limit} bytes.`,
      type: "invalid_request_error",
      code: "payload_too_large",
    }),
  upstreamUnavailable: () =>
    gatewayError(502, {
      message: "The compute service behind this route is not reachable right now. Try again shortly.",
      type: "upstream_error",
      code: "upstream_unavailable",
    }),
  upstreamTimeout: (seconds: number) =>
    gatewayError(504, {
      message: `The compute service did not start answering within ${seconds} s.`,
      type: "upstream_error",
      code: "upstream_timeout",
    }),
  quotaUnavailable: () =>
    gatewayError(
      503,
      {
        message: "The quota service is not answering, so halo-gate refuses rather than run unmetered. Retry shortly.",
        type: "server_error",
        code: "quota_unavailable",
      },
      { "retry-after": "5" },
    ),
  storageUnavailable: () =>
    gatewayError(
      503,
      {
        message: "halo-gate cannot write its storage right now (the operator has been told in the gateway log). Retry shortly.",
        type: "server_error",
        code: "storage_unavailable",
      },
      { "retry-after": "5" },
    ),
  edgeRequired: () =>
    gatewayError(403, {
      message: "Requests must come through the gateway's listener (the address halo-gate serve prints), not its internal socket.",
      type: "permission_error",
      code: "edge_required",
    }),
  ticketsDisabled: () =>
    gatewayError(503, {
      message: "WebSocket tickets are not enabled on this gateway (no TICKET_SECRET); use a bearer token.",
      type: "server_error",
      code: "tickets_disabled",
    }),
  /** Issue 10: a good token from a device that is not its owner's (the message says which case, in the user's words). */
  meshMismatch: (message: string) =>
    gatewayError(403, {
      message,
      type: "permission_error",
      code: "mesh_mismatch",
    }),
  meshUnavailable: () =>
    gatewayError(
      503,
      {
        message: "halo-gate cannot tell which mesh device this request came from right now (tailscaled is not answering), so it refuses. Retry shortly.",
        type: "server_error",
        code: "mesh_unavailable",
      },
      { "retry-after": "5" },
    ),
  misconfigured: () =>
    gatewayError(503, {
      message: "halo-gate is misconfigured; the operator has been told in the gateway log.",
      type: "server_error",
      code: "misconfigured",
    }),
} as const;
