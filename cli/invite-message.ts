/**
 * The ready-to-send message of `invite` and `rotate`, built from the user's scopes and what the
 * running gateway wrote to serve.json (its routes, public_url, login server and certificate), so it
 * never tells a user to try a route they may not use or a server they should not trust.
 */
import type { IssuedToken } from "../src/shared/admin-wire";
import { toSecond } from "./output";
import type { RuntimeInfo, RuntimeRoute } from "./state";

/**
 * What the default routes (docs/contract.md §3) serve upstream, for the check and the apps' base URL. A route
 * not listed here is checked with GET <path>/, or <path>/v1/models when it is metered (an LLM).
 */
const KNOWN_APIS: Record<string, { check: string; api?: { base: string; what: string } }> = {
  v2: { check: "/v1/models", api: { base: "/v1", what: "OpenAI-compatible API" } },
  lemon: { check: "/api/v1/models", api: { base: "/api/v1", what: "OpenAI-compatible API (Lemonade)" } },
  sd: { check: "/sdapi/v1/sd-models" },
};

const PLACEHOLDER_KEY = "<ASK-THE-OPERATOR-FOR-A-PREAUTH-KEY>";
const CERT_FILE = "halo-gate.pem";


export interface MessageInput {
  kind: "invite" | "rotate";
  issued: IssuedToken;
  runtime: RuntimeInfo;
  /** The pre-auth key (invite), and a note on where it came from. */
  authkey?: string | undefined;
  keyNote?: string;
  /** The served certificate's PEM, when it is self-signed and readable. */
  certificatePem?: string | undefined;
}

function apiOf(route: RuntimeRoute) {
  const known = KNOWN_APIS[route.name];
  if (known) return known;
  return route.metered ? { check: "/v1/models", api: { base: "/v1", what: "OpenAI-compatible API" } } : { check: "/" };
}

/** The URL a user is given: public_url when configured, else the gateway's own address. */
export const publicBase = (runtime: RuntimeInfo) => (runtime.public_url ?? runtime.gateway).replace(/\/+$/, "");

/** The user's routes, scope by scope in their order; a Host-less route before a Host-matched one. */
function userRoutes(routes: RuntimeRoute[], scopes: string[]): RuntimeRoute[] {
  return scopes.flatMap((scope) => routes.filter((route) => route.scope === scope).sort((a, b) => Number(a.host !== undefined) - Number(b.host !== undefined)));
}

function routeUrl(base: string, route: RuntimeRoute, path: string): { url: string; hostHeader?: string } {
  return route.host ? { url: `${base}${path}`, hostHeader: route.host } : { url: `${base}${path}` };
}

/** One curl line the user can run: a GET of a route they may use, or a ticket for a WebSocket-only user. */
function checkCommand(base: string, token: string, routes: RuntimeRoute[], tls: string): string | undefined {
  const auth = `-H "Authorization: Bearer ${token}"`;
  const http = routes.find((route) => !route.websocket);
  if (http) {
    const path = http.match === "exact" ? http.path : `${http.path}${apiOf(http).check}`;
    const { url, hostHeader } = routeUrl(base, http, path);
    return `curl ${tls}${auth}${hostHeader ? ` -H "Host: ${hostHeader}"` : ""} ${url}`;
  }
  const socket = routes.find((route) => route.websocket);
  if (socket) return `curl ${tls}-X POST ${auth} -H "content-type: application/json" -d '{"scope":"${socket.scope}"}' ${base}/auth/ticket`;
  return undefined;
}

function usageLines(base: string, routes: RuntimeRoute[]): string[] {
  const wsBase = base.replace(/^http/, "ws");
  const seen = new Set<string>();
  return routes.flatMap((route) => {
    if (seen.has(route.scope ?? "")) return [];
    seen.add(route.scope ?? "");
    const host = route.host ? ` (with the header Host: ${route.host})` : "";
    if (route.websocket) {
      return [`${route.scope}: WebSocket ${wsBase}${route.path}${host} with the token as a bearer; browsers: POST ${base}/auth/ticket {"scope":"${route.scope}"}, then ?ticket=`];
    }
    const api = apiOf(route).api;
    if (api && route.match === "prefix") return [`${route.scope}: ${api.what} at ${base}${route.path}${api.base}${host}, the token as the API key`];
    return [`${route.scope}: ${base}${route.path}${route.match === "prefix" ? "/" : ""}${host} with the header Authorization: Bearer <token>`];
  });
}

export function accessMessage(input: MessageInput): string {
  const { issued, runtime } = input;
  const base = publicBase(runtime);
  const routes = runtime.routes ?? [];
  const mine = userRoutes(routes, issued.scopes);
  const loginServer = runtime.login_server ?? "<LOGIN-SERVER: restart halo-gate serve so serve.json names it>";
  const selfSigned = runtime.tls?.self_signed === true ? runtime.tls : undefined;
  const tls = selfSigned ? `--cacert ${CERT_FILE} ` : "";
  const lines: string[] = [];
  let steps = 0;
  const step = (title: string, ...body: string[]) => lines.push("", `${++steps}. ${title}`, ...body.map((line) => `   ${line}`));

  if (input.kind === "invite") {
    lines.push(`halo-gate invite for ${issued.handle}`, `Token (shown once — it is not stored anywhere): ${issued.token}`);
  } else {
    lines.push(`halo-gate: new token for ${issued.handle} (the old one is refused from now on)`, `Token (shown once — it is not stored anywhere): ${issued.token}`);
  }
  lines.push(`Scopes: ${issued.scopes.join(", ")}    Expires: ${toSecond(issued.expires_at)}`);

  const join = `tailscale up --login-server ${loginServer} --authkey ${input.authkey ?? PLACEHOLDER_KEY}${input.keyNote ?? ""}`;
  if (input.kind === "invite") step("Join the private mesh:", join);
  else step("Already on the private mesh? Skip this. Otherwise:", join);

  if (selfSigned) {
    step(
      `Trust the gateway's self-signed certificate, ${selfSigned.fingerprint}:`,
      `save the certificate below as ${CERT_FILE}, then check that this prints ${selfSigned.fingerprint.replace(/^sha256:/, "")}:`,
      `  openssl x509 -in ${CERT_FILE} -outform der | sha256sum`,
      `and use it: curl --cacert ${CERT_FILE} …, or pin the fingerprint in your client.`,
    );
    lines.push(input.certificatePem ? input.certificatePem.trimEnd() : `   (the certificate is ${selfSigned.cert_path} on the gateway: send it along)`);
  }

  const check = checkCommand(base, issued.token, mine, tls);
  if (check) step("Check it works:", check);

  const use = usageLines(base, mine);
  const open = routes.filter((route) => route.auth === "none" && !route.host).map((route) => `${base}${route.path}${route.match === "prefix" ? "/" : ""}`);
  step(
    "Use it:",
    ...use,
    // The connect page checks any token through /api/me, whatever its scopes.
    `Browser: ${base}/_halo/connect checks the token${mine.some((route) => route.websocket) ? " and the audio stream" : ""} and shows what it may use`,
    `Who am I, what may I use, when does it end: GET ${base}/api/me with the token`,
    ...(open.length ? [`On the mesh, no token needed: ${open.join(", ")}`] : []),
    `Phone: install Tailscale, choose "Use an alternate server" with ${loginServer}, sign in with the key above.`,
  );
  return lines.join("\n");
}

/** The seat-cap refusal, naming the file the running gateway's max_users comes from. */
export function seatsFullMessage(runtime: RuntimeInfo, seats: number | undefined, fallback: string): string {
  if (runtime.max_users === undefined || runtime.config_path === undefined) return fallback;
  return (
    `All seats are taken: ${seats ?? runtime.max_users} of max_users = ${runtime.max_users} users hold an active token. ` +
    `Revoke one ('halo-gate revoke <handle>') or raise max_users in ${runtime.config_path} [vars.HALO_CONFIG] and restart halo-gate serve.`
  );
}
