/**
 * Bearer authentication, in two steps on two owners (issue 8):
 *   1. here, in the isolate: parse (RFC 6750) → hash → which token of which user (`identifyBearer`);
 *   2. in the user's `UserQuota` Durable Object, in the same call that admits the request: is the
 *      token still current (not revoked, not expired) and does it carry the route's scope.
 * The object is told of every revocation before `revoke` returns, so a revoked token is refused on
 * the very next request in every isolate and process, as when D1 was read on every request.
 */
import { errors, Refused } from "../http/errors";
import type { Refusal } from "../shared/refusals";
import { parseBearer } from "./bearer";
import { hashToken, TOKEN_PATTERN } from "./token";
import type { TokenIdentity, TokenStore } from "./token-store";

/** `mesh_*`: a good token from a device that is not its owner's (issue 10, src/shared/mesh-identity.ts). */
export type DenyReason = "missing" | "malformed" | "unknown" | "revoked" | "expired" | "scope" | "mesh_mismatch" | "mesh_unavailable";

/**
 * Whether a denial probes the token store (and so counts toward the failed-auth throttle): guessing
 * at tokens does; a valid token on the wrong route, from the wrong device, or with no token, does not.
 */
const PROBES_TOKEN_STORE: Record<DenyReason, boolean> = {
  missing: false,
  malformed: true,
  unknown: true,
  revoked: true,
  expired: true,
  scope: false,
  mesh_mismatch: false,
  mesh_unavailable: false,
};

export const probesTokenStore = (reason: DenyReason): boolean => PROBES_TOKEN_STORE[reason];

/**
 * A refusal with the reason for the audit log (the response itself never says which it was: an
 * unknown, a revoked and an expired token get the same 401).
 */
export class AuthDenied extends Refused {
  constructor(
    readonly reason: DenyReason,
    refused: Refused | Refusal,
    readonly token: TokenIdentity | null = null,
    /** More for the audit row (e.g. the device a mesh refusal came from). */
    readonly detail: Record<string, unknown> | null = null,
  ) {
    super(refused instanceof Refused ? refused.refusal : refused);
  }
}

/** The refusal for a reason: unknown, revoked and expired tokens get the identical 401 body. */
export function authDenied(reason: DenyReason, requiredScope: string, token: TokenIdentity | null = null): AuthDenied {
  if (reason === "scope") return new AuthDenied("scope", errors.insufficientScope(requiredScope), token);
  return new AuthDenied(reason, errors.invalidToken(), token);
}

/** Which token the `Authorization` header names; throws `AuthDenied` when none. */
export async function identifyBearer(authorization: string | null, store: TokenStore): Promise<TokenIdentity> {
  const credential = parseBearer(authorization);
  if (credential.kind === "missing") throw new AuthDenied("missing", errors.noCredentials());
  if (credential.kind === "malformed") {
    throw new AuthDenied("malformed", errors.malformedAuthorization(credential.reason));
  }
  // A well-formed bearer that is not a halo-gate token cannot be in the store: skip the lookup.
  const identity = TOKEN_PATTERN.test(credential.token) ? await store.identify(await hashToken(credential.token)) : null;
  if (!identity) throw authDenied("unknown", "");
  return identity;
}
