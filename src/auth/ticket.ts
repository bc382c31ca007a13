/**
 * Short-lived WebSocket tickets (SPEC §4): browsers cannot set `Authorization` on a WebSocket, so
 * `POST /auth/ticket` (bearer) returns a signed ticket — HS256 via jose, at most 60 s, one scope,
 * single use — accepted as `?ticket=` on `bearer_or_ticket` routes. A ticket is only as good as its
 * token: the token is checked again (revoked or expired → refused) when the ticket is used.
 */
import { jwtVerify, SignJWT } from "jose";
import { errors } from "../http/errors";
import { AuthDenied } from "./authenticate";
import type { TokenRecord, TokenStore } from "./token-store";

export const TICKET_TTL_SECONDS = 60;
const AUDIENCE = "halo-gate:ticket";
const ISSUER = "halo-gate";

const key = (secret: string) => new TextEncoder().encode(secret);

export async function issueTicket(secret: string, token: TokenRecord, scope: string, now: number) {
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

/** The `ticket` query parameter, if any, and the query string without it (never forwarded). */
export function takeTicket(rawQuery: string): { ticket: string | null; rest: string } {
  if (!rawQuery) return { ticket: null, rest: rawQuery };
  const parts = rawQuery.slice(1).split("&");
  const ticketPart = parts.find((part) => part.startsWith("ticket="));
  if (ticketPart === undefined) return { ticket: null, rest: rawQuery };
  const rest = parts.filter((part) => !part.startsWith("ticket="));
  return { ticket: decodeURIComponent(ticketPart.slice(7)), rest: rest.length ? `?${rest.join("&")}` : "" };
}

export interface TicketUse {
  /** Marks the ticket's id used; false when it already was (single use). */
  consume(handle: string, jti: string, expiresAt: number): Promise<boolean>;
}

export async function authenticateTicket(
  ticket: string,
  requiredScope: string,
  secret: string | undefined,
  store: TokenStore,
  uses: TicketUse,
  now: number,
): Promise<TokenRecord> {
  const invalid = () => new AuthDenied("unknown", errors.invalidToken().getResponse());
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
  if (claims.scope !== requiredScope) throw new AuthDenied("scope", errors.insufficientScope(requiredScope).getResponse());
  if (typeof claims.tid !== "string" || !(await uses.consume(claims.sub!, claims.jti!, claims.exp! * 1000))) throw invalid();
  const token = await store.findById(claims.tid);
  if (!token) throw invalid();
  if (token.revokedAt !== null) throw new AuthDenied("revoked", errors.invalidToken().getResponse(), token);
  if (now >= token.expiresAt) throw new AuthDenied("expired", errors.invalidToken().getResponse(), token);
  if (!token.scopes.includes(requiredScope)) throw new AuthDenied("scope", errors.insufficientScope(requiredScope).getResponse(), token);
  return token;
}
