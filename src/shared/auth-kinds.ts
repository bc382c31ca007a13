/**
 * A route's auth kind, in one table (issue 11): everything that differs between kinds is a column
 * here, so adding a kind is one row, and the config schema, the hot path (src/gateway.ts), the
 * ticket endpoint, the edge and the route-twin rule all read it.
 *
 * Pure TypeScript, no Node or Workers APIs (src/shared/).
 */
export const AUTH_KINDS = {
  /** Open to anyone on the mesh (the web studio): no credentials, no scope, never metered. */
  none: { credentials: false, tickets: false, strength: 0 },
  /** A bearer token, or — for browsers, which cannot set `Authorization` on a WebSocket — a single-use `?ticket=`. */
  bearer_or_ticket: { credentials: true, tickets: true, strength: 1 },
  /** A bearer token carrying the route's scope. */
  bearer: { credentials: true, tickets: false, strength: 2 },
} as const satisfies Record<string, AuthKindRules>;

export interface AuthKindRules {
  /** Whether a request must present credentials (and so is authenticated, audited, admitted). */
  credentials: boolean;
  /** Whether a single-use WebSocket ticket (`POST /auth/ticket`) stands in for the bearer. */
  tickets: boolean;
  /** How strict, against the others: a Host-matched route may not stand in for a stricter one. */
  strength: number;
}

export type AuthKind = keyof typeof AUTH_KINDS;

export const AUTH_KIND_NAMES = Object.keys(AUTH_KINDS) as [AuthKind, ...AuthKind[]];

/** What a request to a route of this kind presents, and the query left to forward (a ticket never is). */
export type Credential = { kind: "none" } | { kind: "bearer"; authorization: string | null } | { kind: "ticket"; ticket: string };

/**
 * The credential a request presents on a route of `auth`: none on an open route; the `?ticket=`
 * when the kind takes tickets, one was sent and no `Authorization` header was; else the bearer
 * header (possibly missing).
 */
export function presentedCredential(auth: AuthKind, authorization: string | null, rawQuery: string): { credential: Credential; rawQuery: string } {
  const rules: AuthKindRules = AUTH_KINDS[auth];
  if (!rules.credentials) return { credential: { kind: "none" }, rawQuery };
  if (rules.tickets && authorization === null) {
    const { ticket, rest } = takeTicket(rawQuery);
    // Neither a header nor a ticket: the bearer is missing (401 missing_token, as on any route).
    if (ticket !== null) return { credential: { kind: "ticket", ticket }, rawQuery: rest };
  }
  return { credential: { kind: "bearer", authorization }, rawQuery };
}

/** Removes `ticket=` from a raw query (it is a credential: never forwarded), returning its value. */
export function takeTicket(rawQuery: string): { ticket: string | null; rest: string } {
  if (!rawQuery) return { ticket: null, rest: rawQuery };
  const parts = rawQuery.slice(1).split("&");
  const ticketPart = parts.find((part) => part.startsWith("ticket="));
  if (ticketPart === undefined) return { ticket: null, rest: rawQuery };
  const rest = parts.filter((part) => !part.startsWith("ticket="));
  return { ticket: decodeOrKeep(ticketPart.slice(7)), rest: rest.length ? `?${rest.join("&")}` : "" };
}

/** A ticket is base64url: a bad %-escape cannot be one, and fails verification as sent. */
function decodeOrKeep(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}
