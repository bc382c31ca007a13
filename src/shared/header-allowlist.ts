/**
 * Header hygiene for both directions.
 *
 * Upstream requests: an ALLOWLIST (issue 9, item 8). A client header reaches an upstream only when
 * its name is on the list below; everything else is dropped, whatever it is called. Then, and only
 * then, the gateway adds its own identity headers, so nothing a client sends can forge, remove or
 * shadow them: not naming them in `Connection` (CVE-2024-45410), not another case or `_` spelling
 * (CVE-2025-64484), not a header the gateway has never heard of.
 *
 * Why an allowlist and not a denylist of identity conventions: trusted-header single sign-on is
 * configured per upstream app with a header name of the operator's choosing (Grafana's
 * `auth.proxy.header_name`, Open WebUI's `WEBUI_AUTH_TRUSTED_EMAIL_HEADER`, ComfyUI's `comfy-user`,
 * Tailscale serve's `Tailscale-User-*`, oauth2-proxy's `X-Auth-Request-*`, Authelia's `Remote-*`,
 * Azure's `X-MS-CLIENT-PRINCIPAL*`, …). A denylist can only ever name the conventions someone thought
 * of; the allowlist makes "a client header the upstream trusts as identity" impossible as a class,
 * because no identity or address header is on it, under any spelling. What it costs: an upstream
 * app that needs some other request header does not get it until that name is added here (a
 * reviewed code change). The upstreams behind the gateway are OpenAI-compatible LLM servers
 * (llama-server, Lemonade), Stable Diffusion, an audio WebSocket and the web studio; what they use
 * is below, each with its reason. None of them asserts who the client is or where it connects from.
 *
 * THE RULE (the README quotes it). A client request header reaches the upstream if and only if
 *   1. its name, as sent, contains no `_` (nothing below is spelled with one, and an upstream that
 *      folds `_` into `-` must never see a second spelling of a header), and
 *   2. it is not hop-by-hop (`HOP_BY_HOP`) and not named in the request's `Connection` header, and
 *   3. its lower-cased name is one of `FORWARDED_REQUEST_HEADERS` or starts with one of
 *      `FORWARDED_REQUEST_PREFIXES`.
 * Then the gateway sets `X-Halo-User` and `X-Halo-Token-Id` (authenticated routes only) and
 * `X-Forwarded-For` (the client address, every route); a WebSocket upgrade gets `Upgrade: websocket`
 * and `Connection: Upgrade`. `Host` is never copied (the runtime sets the upstream's).
 *
 * Deliberately NOT on the list, so always dropped: `Authorization`, `Proxy-Authorization`,
 * `X-Api-Key` (the client's halo-gate token, under whichever name an SDK puts it), every
 * `X-Forwarded-*`/`Forwarded`/`X-Real-IP`/`*-Client-IP`/`X-Original-*` (addresses), every user,
 * e-mail, group, principal, claim, JWT-assertion and `Remote-*` header of any SSO convention,
 * `X-Halo-*`, `CF-*` and `MF-*` (the gateway's and the runtime's own), method and URL overrides
 * (`X-HTTP-Method-Override`, `X-Original-URL`, `X-Rewrite-URL`), `Expect` (the edge answers it),
 * and `Baggage` (free-form key/values, often a user id).
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

/** Client request headers an upstream receives (lower case, exact names); see THE RULE above. */
export const FORWARDED_REQUEST_HEADERS: ReadonlySet<string> = new Set([
  // What the body is. Content-Length keeps a declared body declared (the runtime enforces it, so
  // the body limit holds without buffering); Content-Encoding for clients that compress uploads.
  "content-type",
  "content-length",
  "content-encoding",
  // Content negotiation: JSON vs `text/event-stream`, compressed answers, the UI's language.
  "accept",
  "accept-encoding",
  "accept-language",
  // Every client and SDK names itself here; upstream logs and SDK-specific quirks depend on it.
  "user-agent",
  // Caching and conditional/partial requests: the studio's static assets, image and audio files.
  "cache-control",
  "pragma",
  "if-match",
  "if-none-match",
  "if-modified-since",
  "if-unmodified-since",
  "if-range",
  "range",
  // Browser origin signals: upstream CSRF and WebSocket origin checks (Vite's HMR socket, Gradio)
  // need them; dropping them would only make a request look less cross-site than it is.
  "origin",
  "referer",
  "x-requested-with",
  // The web studio's own sessions. The studio route is unauthenticated and halo-gate sets and reads
  // no cookie (the token lives in the tab's memory), so a cookie carries no halo-gate secret; it is
  // the upstream app's own credential, which that app verifies itself — not an asserted identity.
  // The CSRF tokens are that cookie's double-submit companions (Angular, Django, Rails style).
  "cookie",
  "x-csrf-token",
  "x-xsrf-token",
  // OpenAI SDKs send an idempotency key on retried POSTs.
  "idempotency-key",
  // Request correlation (W3C Trace Context, the common request id): opaque ids, no identity.
  "traceparent",
  "tracestate",
  "x-request-id",
]);

/** Client request header name prefixes an upstream receives (lower case); see THE RULE above. */
export const FORWARDED_REQUEST_PREFIXES: readonly string[] = [
  // OpenAI SDKs: `OpenAI-Organization`, `OpenAI-Project`, `OpenAI-Beta`.
  "openai-",
  // Anthropic SDKs (llama-server also speaks `/v1/messages`): `anthropic-version`, `anthropic-beta`.
  "anthropic-",
  // Stainless-generated SDKs (OpenAI and Anthropic, Node and Python): language, package version,
  // OS, arch, runtime, retry count, timeout. Telemetry about the client library, never the user.
  "x-stainless-",
  // WebSocket handshake (the audio route, the studio's dev socket): key, version, protocol, extensions.
  "sec-websocket-",
  // Fetch metadata (`Sec-Fetch-Site/Mode/Dest/User`): upstream CSRF defences read them.
  "sec-fetch-",
];

/** Lower-case with `_` read as `-`, the way CGI-style upstreams fold header names. */
export const canonicalName = (name: string) => name.toLowerCase().replace(/_/g, "-");

/** Step 3 of THE RULE, for a lower-case name. */
export const isForwardableName = (name: string) =>
  FORWARDED_REQUEST_HEADERS.has(name) || FORWARDED_REQUEST_PREFIXES.some((prefix) => name.startsWith(prefix));

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

/** Headers for the upstream request: the allowlist first, then the gateway's own identity headers. */
export function upstreamRequestHeaders(
  incoming: Headers,
  identity: UpstreamIdentity | null,
  clientAddress: string,
  webSocket: boolean,
): Headers {
  const named = namedInConnection(incoming);
  const outgoing = new Headers();
  incoming.forEach((value, rawName) => {
    if (rawName.includes("_")) return;
    const name = rawName.toLowerCase();
    if (HOP_BY_HOP.has(name) || named.has(name) || !isForwardableName(name)) return;
    outgoing.append(name, value);
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
