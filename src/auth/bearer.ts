/**
 * RFC 6750 §2.1 `Authorization: Bearer <b64token>` parsing. The scheme is case-insensitive
 * (RFC 7235 §2.1), unlike Hono's bearer-auth; exactly one well-formed credential is accepted.
 */
export type BearerCredential =
  | { kind: "missing" }
  | { kind: "malformed"; reason: string }
  | { kind: "token"; token: string };

const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;

export function parseBearer(header: string | null | undefined): BearerCredential {
  if (header === null || header === undefined || header === "") return { kind: "missing" };
  // Headers joins repeated Authorization fields with ", ": two credentials are never acceptable.
  const space = header.indexOf(" ");
  const scheme = space === -1 ? header : header.slice(0, space);
  if (!/^[A-Za-z][A-Za-z0-9!#$%&'*+\-.^_`|~]*$/.test(scheme)) {
    return { kind: "malformed", reason: "the Authorization header is not a valid credential" };
  }
  if (scheme.toLowerCase() !== "bearer") return { kind: "missing" };
  const token = space === -1 ? "" : header.slice(space).replace(/^ +/, "");
  if (token === "") return { kind: "malformed", reason: "the Bearer credential is empty" };
  if (!B64TOKEN.test(token)) {
    return { kind: "malformed", reason: "the Authorization header must be exactly 'Bearer <token>'" };
  }
  return { kind: "token", token };
}
