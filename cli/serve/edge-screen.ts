/**
 * What the edge refuses before a request may reach the core: the decisions only a layer that sees
 * the raw request can make. Pure functions over what Node's HTTP parser (llhttp, strict mode) has
 * already accepted; every refusal is a 4xx with an OpenAI-shaped JSON body, never a 5xx.
 *
 * Why each rule exists (issue 7, all reproduced with raw sockets before the fix):
 *   - a body on GET/HEAD has no defined meaning and was the request-desync vector; it is refused,
 *     and every other body reaches the core re-framed by undici (Content-Length or chunked);
 *   - `#` never belongs in a request target (the old edge screened up to it and forwarded the rest);
 *   - a Host the gateway does not serve is a DNS-rebinding page driving the mesh-only routes (421);
 *   - a declared body over the limit is answered 413 at once, not raced against the core (was 502).
 */
import type { IncomingMessage } from "node:http";
import { isIP } from "node:net";
import type { GatewayConfig, RouteConfig } from "../../src/shared/config";
import { ALLOWED_METHODS } from "../../src/shared/methods";
import { normalizePath, splitRequestTarget } from "../../src/shared/path";
import { refusals, type Refusal } from "../../src/shared/refusals";
import { matchRoute } from "../../src/shared/routes";

/** More request headers than any real client sends (curl ~5, browsers ~20, the OpenAI SDKs ~15). */
export const MAX_REQUEST_HEADERS = 100;

/** A refusal from the shared catalogue (src/shared/refusals.ts), or a body of its own (`/healthz`'s). */
export type EdgeRefusal = Refusal & { body?: unknown };

/** A Host header is a hostname, an IPv4 address or a bracketed IPv6 address, with an optional port. */
const HOST_SYNTAX = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*\.?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$/;

/** The hostname part of a Host value, lower-case, without brackets or a trailing dot. */
export function hostName(host: string): string {
  const withoutPort = host.startsWith("[") ? host.slice(1, host.indexOf("]")) : host.replace(/:[0-9]*$/, "");
  return withoutPort.toLowerCase().replace(/\.$/, "");
}

/** The Host names the gateway answers for (issue 7): everything else is a rebinding attempt. */
export function servedHosts(options: { bindHost: string; tlsNames: readonly string[]; config: GatewayConfig }): ReadonlySet<string> {
  const names = new Set(["localhost", "127.0.0.1", "::1", hostName(options.bindHost.includes(":") && isIP(options.bindHost) === 6 ? `[${options.bindHost}]` : options.bindHost)]);
  for (const name of options.tlsNames) names.add(hostName(name));
  if (options.config.public_url) names.add(hostName(new URL(options.config.public_url).host));
  for (const route of options.config.routes) if (route.host) names.add(hostName(route.host));
  return names;
}

/** A request body, as Node's parser framed it: declared length, chunked, or none. */
export function declaredBody(request: IncomingMessage): { length: number | null; present: boolean } {
  if (request.headers["transfer-encoding"] !== undefined) return { length: null, present: true };
  const declared = request.headers["content-length"];
  if (declared === undefined) return { length: 0, present: false };
  const length = Number(declared); // llhttp has already refused anything but one decimal number
  return { length, present: length > 0 };
}

export interface ScreenPolicy {
  hosts: ReadonlySet<string>;
  bodyLimitBytes: number;
}

/** Why a request must not reach the core, or undefined when it may. */
export function screenRequest(request: IncomingMessage, policy: ScreenPolicy): EdgeRefusal | undefined {
  const method = request.method ?? "";
  if (!ALLOWED_METHODS.has(method)) {
    return refusals.methodNotAllowed(method);
  }
  if (request.rawHeaders.length / 2 > MAX_REQUEST_HEADERS) {
    return refusals.tooManyHeaders(MAX_REQUEST_HEADERS);
  }
  const target = request.url ?? "";
  if (!target.startsWith("/")) return refusals.invalidPath("Rejected request target: it must be an origin-form path.");
  if (target.includes("#")) return refusals.invalidPath("Rejected request target: a fragment (#) is never sent to a server.");
  const normalized = normalizePath(splitRequestTarget(`http://edge${target}`).rawPath);
  if (!normalized.ok) return refusals.invalidPath(`Rejected path: ${normalized.reason}.`);

  const hosts = request.headersDistinct.host ?? [];
  if (hosts.length !== 1 || !HOST_SYNTAX.test(hosts[0]!)) return refusals.invalidHost();
  if (!policy.hosts.has(hostName(hosts[0]!))) {
    return refusals.misdirected();
  }

  const body = declaredBody(request);
  if (body.present && (method === "GET" || method === "HEAD")) {
    return refusals.bodyNotAllowed(method);
  }
  if (body.length !== null && body.length > policy.bodyLimitBytes) {
    return refusals.payloadTooLarge(policy.bodyLimitBytes);
  }
  return undefined;
}

/** The path as the core will route it (decoded and normalised once, as src/shared/path.ts does), or null. */
export function routedPath(request: IncomingMessage): string | null {
  const normalized = normalizePath(splitRequestTarget(`http://edge${request.url ?? "/"}`).rawPath);
  return normalized.ok ? normalized.path : null;
}

/** The route a request would take (the core decides again; the edge only needs to know WebSocket routes). */
export function routeOf(request: IncomingMessage, routes: readonly RouteConfig[]): RouteConfig | undefined {
  const path = routedPath(request);
  return path === null ? undefined : matchRoute(routes, path, request.headers.host ?? null);
}

/** Only a GET asking for `Upgrade: websocket` on a WebSocket route (a ws:// or wss:// upstream) is upgraded. */
export function isWebSocketUpgrade(request: IncomingMessage, routes: readonly RouteConfig[]): boolean {
  if (request.method !== "GET" || request.headers.upgrade?.toLowerCase() !== "websocket") return false;
  const route = routeOf(request, routes);
  return route !== undefined && /^wss?:$/.test(new URL(route.upstream).protocol);
}
