/**
 * Bearer authentication for one route: parse (RFC 6750) → hash → look up → current? → scope.
 * Expiry and revocation are checked against the store on every request: nothing is cached, so a
 * revoked token is refused on the very next request in every isolate and process (SPEC §2).
 */
import { errors } from "../http/errors";
import { parseBearer } from "./bearer";
import { hashToken, TOKEN_PATTERN } from "./token";
import type { TokenRecord, TokenStore } from "./token-store";

export type DenyReason = "missing" | "malformed" | "unknown" | "revoked" | "expired" | "scope";

/** Raised with the reason for the audit log; the HTTP response itself never says which it was. */
export class AuthDenied extends Error {
  constructor(
    readonly reason: DenyReason,
    readonly response: Response,
    readonly token: TokenRecord | null = null,
  ) {
    super(`auth denied: ${reason}`);
  }
}

export async function authenticate(
  authorization: string | null,
  requiredScope: string,
  store: TokenStore,
  now: number,
): Promise<TokenRecord> {
  const credential = parseBearer(authorization);
  if (credential.kind === "missing") throw new AuthDenied("missing", errors.noCredentials().getResponse());
  if (credential.kind === "malformed") {
    throw new AuthDenied("malformed", errors.malformedAuthorization(credential.reason).getResponse());
  }
  // A well-formed bearer that is not a halo-gate token cannot be in the store: skip the lookup.
  const token = TOKEN_PATTERN.test(credential.token) ? await store.findByHash(await hashToken(credential.token)) : null;
  if (!token) throw new AuthDenied("unknown", errors.invalidToken().getResponse());
  if (token.revokedAt !== null) throw new AuthDenied("revoked", errors.invalidToken().getResponse(), token);
  if (now >= token.expiresAt) throw new AuthDenied("expired", errors.invalidToken().getResponse(), token);
  if (!token.scopes.includes(requiredScope)) {
    throw new AuthDenied("scope", errors.insufficientScope(requiredScope).getResponse(), token);
  }
  return token;
}
