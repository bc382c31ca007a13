/**
 * Short-lived WebSocket tickets (docs/contract.md §4): browsers cannot set `Authorization` on a WebSocket, so
 * `POST /auth/ticket` (bearer) returns a signed ticket — HS256 via jose, at most 60 s, one scope,
 * single use — accepted as `?ticket=` on `bearer_or_ticket` routes. A ticket is only as good as its
 * token: the token is checked again (revoked or expired → refused) when the ticket is used, in the
 * same Durable Object call that admits the upgrade and marks the ticket used (only when admitted).
 */
import { jwtVerify, SignJWT } from "jose";
import { authDenied, type AuthDenied } from "./authenticate";
import type { TokenIdentity } from "./token-store";

export const TICKET_TTL_SECONDS = 60;
const AUDIENCE = "halo-gate:ticket";
const ISSUER = "halo-gate";

const key = (secret: string) => new TextEncoder().encode(secret);

export async function issueTicket(secret: string, token: TokenIdentity, scope: string, now: number) {
  const issuedAt = Math.floor(now / 1000);
  const expiresAt = issuedAt + TICKET_TTL_SECONDS;
  const ticket = await new SignJWT({ scope, tid: token.tokenId })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setSubject(token.handle)
    .setIssuer(ISSUER)
    .setAudience(AUDIENCE)
    .setJti(crypto.randomUUID())
    .setIssuedAt(issuedAt)
    .setExpirationTime(expiresAt)
    .sign(key(secret));
  return { ticket, scope, expires_at: new Date(expiresAt * 1000).toISOString() };
}

/** What a verified ticket names: the token it stands for, and its single-use id. */
export interface TicketClaims extends TokenIdentity {
  jti: string;
  expiresAt: number;
}

/** Verifies a ticket's signature, audience, age and scope; the token itself is checked by the caller. */
export async function verifyTicket(ticket: string, requiredScope: string, secret: string | undefined, now: number): Promise<TicketClaims> {
  const invalid = (): AuthDenied => authDenied("unknown", requiredScope);
  if (!secret) throw invalid();
  let claims;
  try {
    ({ payload: claims } = await jwtVerify(ticket, key(secret), {
      algorithms: ["HS256"],
      audience: AUDIENCE,
      issuer: ISSUER,
      currentDate: new Date(now),
      maxTokenAge: TICKET_TTL_SECONDS,
      requiredClaims: ["jti", "exp", "sub", "iat"],
    }));
  } catch {
    throw invalid();
  }
  if (claims.scope !== requiredScope) throw authDenied("scope", requiredScope);
  if (typeof claims.tid !== "string") throw invalid();
  return { tokenId: claims.tid, handle: claims.sub!, jti: claims.jti!, expiresAt: claims.exp! * 1000 };
}
