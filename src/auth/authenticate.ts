/**
 * Bearer authentication, in two steps on two owners (issue 8):
 *   1. here, in the isolate: parse (RFC 6750) → hash → which token of which user (`identifyBearer`);
 *   2. in the user's `UserQuota` Durable Object, in the same call that admits the request: is the
 *      token still current (not revoked, not expired) and does it carry the route's scope.
 * The object is told of every revocation before `revoke` returns, so a revoked token is refused on
 * the very next request in every isolate and process, as when D1 was read on every request.
 */
import { errors } from "../http/errors";
import { parseBearer } from "./bearer";
import { hashToken, TOKEN_PATTERN } from "./token";
import type { TokenIdentity, TokenStore } from "./token-store";

/** `mesh_*`: a good token from a device that is not its owner's (issue 10, src/mesh/identity.ts). */
export type DenyReason = "missing" | "malformed" | "unknown" | "revoked" | "expired" | "scope" | "mesh_mismatch" | "mesh_unavailable";

/** Raised with the reason for the audit log; the HTTP response itself never says which it was. */
export class AuthDenied extends Error {
  constructor(
    readonly reason: DenyReason,
    readonly response: Response,
    readonly token: TokenIdentity | null = null,
    /** More for the audit row (e.g. the device a mesh refusal came from). */
    readonly detail: Record<string, unknown> | null = null,
  ) {
    super(`auth denied: ${reason}`);
  }
}

/** The refusal for a reason: unknown, revoked and expired tokens get the identical 401 body. */
export function authDenied(reason: DenyReason, requiredScope: string, token: TokenIdentity | null = null): AuthDenied {
  if (reason === "scope") return new AuthDenied("scope", errors.insufficientScope(requiredScope).getResponse(), token);
  return new AuthDenied(reason, errors.invalidToken().getResponse(), token);
}

/** Which token the `Authorization` header names; throws `AuthDenied` when none. */
export async function identifyBearer(authorization: string | null, store: TokenStore): Promise<TokenIdentity> {
  const credential = parseBearer(authorization);
  if (credential.kind === "missing") throw new AuthDenied("missing", errors.noCredentials().getResponse());
  if (credential.kind === "malformed") {
    throw new AuthDenied("malformed", errors.malformedAuthorization(credential.reason).getResponse());
  }
  // A well-formed bearer that is not a halo-gate token cannot be in the store: skip the lookup.
  const identity = TOKEN_PATTERN.test(credential.token) ? await store.identify(await hashToken(credential.token)) : null;
  if (!identity) throw authDenied("unknown", "");
  return identity;
}
