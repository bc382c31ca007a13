/**
 * Header hygiene for both directions. Everything a client could use to impersonate the gateway is
 * removed *before* the gateway adds its own identity headers, so naming a header in `Connection`
 * (CVE-2024-45410) or spelling it with `_` or another case (CVE-2025-64484) cannot remove or forge them.
 */
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

/** Client-sent headers that claim an identity or an address only the gateway may assert. */
const CLIENT_CLAIMS = new Set([
  "authorization",
  "forwarded",
  "x-forwarded-for",
  "x-forwarded-host",
  "x-forwarded-proto",
  "x-real-ip",
  "true-client-ip",
  "cf-connecting-ip",
  "mf-cf-blob",
]);

/** Lower-case with `_` read as `-`, the way CGI-style upstreams fold header names. */
export const canonicalName = (name: string) => name.toLowerCase().replace(/_/g, "-");

const isGatewayOwned = (name: string) =>
  name.startsWith("x-halo-") || name.startsWith("cf-") || name.startsWith("mf-") || CLIENT_CLAIMS.has(name);

function namedInConnection(headers: Headers): Set<string> {
  const named = new Set<string>();
  for (const token of (headers.get("connection") ?? "").split(",")) {
    const name = canonicalName(token.trim());
    if (name) named.add(name);
  }
  return named;
}

export interface UpstreamIdentity {
  handle: string;
  tokenId: string;
}

/** Headers for the upstream request: hygiene first, then the gateway's own identity headers. */
export function upstreamRequestHeaders(
  incoming: Headers,
  identity: UpstreamIdentity | null,
  clientAddress: string,
  webSocket: boolean,
): Headers {
  const named = namedInConnection(incoming);
  const outgoing = new Headers();
  incoming.forEach((value, rawName) => {
    const name = canonicalName(rawName);
    if (HOP_BY_HOP.has(name) || named.has(name) || isGatewayOwned(name) || name === "host") return;
    outgoing.append(rawName, value);
  });
  if (webSocket) {
    outgoing.set("upgrade", "websocket");
    outgoing.set("connection", "Upgrade");
  }
  if (identity) {
    outgoing.set("x-halo-user", identity.handle);
    outgoing.set("x-halo-token-id", identity.tokenId);
  }
  outgoing.set("x-forwarded-for", clientAddress);
  return outgoing;
}

/** Headers for the client: the upstream's hop-by-hop headers and those it named in `Connection` removed. */
export function clientResponseHeaders(upstream: Headers): Headers {
  const named = namedInConnection(upstream);
  const outgoing = new Headers();
  upstream.forEach((value, rawName) => {
    const name = canonicalName(rawName);
    if (HOP_BY_HOP.has(name) || named.has(name)) return;
    outgoing.append(rawName, value);
  });
  return outgoing;
}
