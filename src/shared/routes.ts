/** Route selection on the normalised path (and the Host, where a route names one). Case-sensitive. */
import type { RouteConfig } from "./config";

export function matchRoute(routes: readonly RouteConfig[], path: string, host: string | null): RouteConfig | undefined {
  const requestHost = host?.toLowerCase() ?? null;
  let best: RouteConfig | undefined;
  for (const route of routes) {
    if (route.host !== undefined && route.host !== requestHost) continue;
    const matches =
      route.match === "exact" ? path === route.path : path === route.path || path.startsWith(`${route.path}/`);
    // The longest matching path wins, and a Host-specific route beats a generic one of the same length.
    if (matches && (!best || route.path.length > best.path.length || (route.path.length === best.path.length && route.host))) {
      best = route;
    }
  }
  return best;
}

/** The path the upstream receives: the route's upstream base path joined with the (stripped) rest. */
export function upstreamUrl(route: RouteConfig, canonicalPath: string, rawQuery: string): URL {
  const url = new URL(route.upstream);
  if (url.protocol === "ws:") url.protocol = "http:";
  if (url.protocol === "wss:") url.protocol = "https:";
  if (route.match === "exact") {
    url.search = rawQuery;
    return url;
  }
  const rest = route.strip_prefix ? canonicalPath.slice(route.path.length) : canonicalPath;
  const base = url.pathname.replace(/\/+$/, "");
  const joined = `${base}${rest.startsWith("/") || rest === "" ? rest : `/${rest}`}`;
  url.pathname = joined === "" ? "/" : joined;
  url.search = rawQuery;
  return url;
}
