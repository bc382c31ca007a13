/**
 * The whole gateway configuration, validated with zod. Lives in `wrangler.toml` `[vars.HALO_CONFIG]`
 * (the one documented place); `halo-gate serve` and the worker both parse it with this schema, so a
 * misspelled key or an unsafe combination refuses to start and is named.
 *
 * Pure TypeScript, no Node or Workers APIs: the CLI imports it too.
 */
import { z } from "zod";
import { AUTH_KIND_NAMES, AUTH_KINDS } from "./auth-kinds";
import { durationProblem, MAX_TTL, parseDuration } from "./duration";

export const HANDLE_PATTERN = /^[a-z0-9][a-z0-9._-]{0,31}$/;
/** HANDLE_PATTERN in words, for every message that refuses a handle. */
export const HANDLE_RULE = "1–32 of a-z 0-9 . _ -, starting with a letter or digit";
export const SCOPE_PATTERN = /^[a-z][a-z0-9_-]{0,31}$/;
/** Paths the gateway answers itself; no route may shadow them. */
export const GATEWAY_PATHS = ["/healthz", "/api", "/auth", "/_halo", "/metrics", "/admin"] as const;

/** A duration of at most `max`: an overlong one would overflow a date or a timer, so it refuses to start. */
const duration = (what: string, max: string) =>
  z.string().superRefine((text, ctx) => {
    const problem = durationProblem(text, max);
    if (problem) ctx.addIssue({ code: "custom", message: `${what} ${problem}` });
  });

export interface NumberBounds {
  min: number;
  /** `min` itself is not allowed. */
  exclusiveMin?: boolean;
  max: number;
  integer: boolean;
}

/** The per-user limits' bounds: one definition for the config, the admin API and the CLI's flags. */
export const LIMIT_BOUNDS = {
  rps: { min: 0, exclusiveMin: true, max: 10_000, integer: false },
  burst: { min: 1, max: 100_000, integer: true },
  streams: { min: 1, max: 1_000, integer: true },
  daily_tokens: { min: 0, max: Number.MAX_SAFE_INTEGER, integer: true },
} as const satisfies Record<string, NumberBounds>;

export function boundedNumber(bounds: NumberBounds) {
  const number = bounds.integer ? z.number().int() : z.number();
  return (bounds.exclusiveMin ? number.gt(bounds.min) : number.min(bounds.min)).max(bounds.max);
}

const limitsSchema = z.strictObject({
  /** Requests per second (token bucket refill rate). */
  rps: boundedNumber(LIMIT_BOUNDS.rps),
  /** Bucket size; defaults to `rps`. */
  burst: boundedNumber(LIMIT_BOUNDS.burst).optional(),
  /** Concurrent in-flight requests across all of a user's routes. */
  streams: boundedNumber(LIMIT_BOUNDS.streams),
  /** LLM tokens a user may consume per day (the day of `timezone`). */
  daily_tokens: boundedNumber(LIMIT_BOUNDS.daily_tokens),
});

const routeSchema = z
  .strictObject({
    /** Route name; also the scope a token needs, unless `scope` says otherwise. */
    name: z.string().regex(SCOPE_PATTERN, "route name must match [a-z][a-z0-9_-]{0,31}"),
    /** Case-sensitive path: a prefix (`/v2` matches `/v2` and `/v2/...`) or, with match = "exact", one path. */
    path: z
      .string()
      .regex(/^(\/[A-Za-z0-9._~-]+)+$/, "route path must be like /v2 or /audio/ws (no trailing slash)"),
    match: z.enum(["prefix", "exact"]).default("prefix"),
    /** Optional Host header the route is limited to (lower-case, port allowed). */
    host: z.string().regex(/^[a-z0-9.-]+(:[0-9]{1,5})?$/).optional(),
    upstream: z.url({ protocol: /^(https?|wss?)$/ }),
    strip_prefix: z.boolean().default(false),
    /** How a request proves itself: src/shared/auth-kinds.ts. */
    auth: z.enum(AUTH_KIND_NAMES),
    scope: z.string().regex(SCOPE_PATTERN).optional(),
    /** LLM endpoints whose `usage` is charged against the daily token quota. */
    metered: z.boolean().default(false),
    /**
     * Issue 12: at most this many admitted requests that hold a slot (POST/PUT/PATCH, WebSocket
     * upgrades) are in flight to the upstream at once, across all users; the rest wait in a fair
     * queue (src/queue/). Absent: unlimited, no queue (a user over its `streams` cap gets 429 at once).
     */
    max_in_flight: z.number().int().min(1).max(1_000).optional(),
    /** How long a request may wait in this route's queue (default: HALO_CONFIG.queue_timeout). */
    queue_timeout: duration("queue_timeout", "10m").optional(),
  })
  .superRefine((route, ctx) => {
    const url = new URL(route.upstream);
    if (url.username || url.password) {
      ctx.addIssue({ code: "custom", path: ["upstream"], message: "upstream must not embed credentials" });
    }
    if (url.search || url.hash) {
      ctx.addIssue({ code: "custom", path: ["upstream"], message: "upstream must not carry a query or fragment" });
    }
    const open = !AUTH_KINDS[route.auth].credentials;
    if (open && route.scope !== undefined) {
      ctx.addIssue({ code: "custom", path: ["scope"], message: 'a route with auth = "none" takes no scope' });
    }
    if (open && route.max_in_flight !== undefined) {
      ctx.addIssue({ code: "custom", path: ["max_in_flight"], message: 'a queued route needs auth (cannot be "none"): the queue is fair between users' });
    }
    if (route.queue_timeout !== undefined && route.max_in_flight === undefined) {
      ctx.addIssue({ code: "custom", path: ["queue_timeout"], message: "queue_timeout needs max_in_flight (without it the route has no queue)" });
    }
    if (open && route.metered) {
      ctx.addIssue({ code: "custom", path: ["metered"], message: 'a metered route needs auth (cannot be "none")' });
    }
    const shadowed = GATEWAY_PATHS.find((own) => route.path === own || route.path.startsWith(`${own}/`));
    if (shadowed) {
      ctx.addIssue({ code: "custom", path: ["path"], message: `${route.path} would shadow the gateway's own ${shadowed}` });
    }
  })
  .transform((route) => ({
    ...route,
    scope: AUTH_KINDS[route.auth].credentials ? (route.scope ?? route.name) : null,
    queue_timeout_ms: route.queue_timeout === undefined ? undefined : (parseDuration(route.queue_timeout) as number),
  }));

export const DEFAULT_ROUTES: z.input<typeof routeSchema>[] = [
  { name: "v2", path: "/v2", upstream: "http://127.0.0.1:8080", strip_prefix: true, auth: "bearer", metered: true },
  { name: "lemon", path: "/lemon", upstream: "http://127.0.0.1:8000", strip_prefix: true, auth: "bearer", metered: true },
  { name: "sd", path: "/sd", upstream: "http://127.0.0.1:7860", strip_prefix: true, auth: "bearer" },
  { name: "audio", path: "/audio/ws", match: "exact", upstream: "ws://127.0.0.1:8090/ws", auth: "bearer_or_ticket" },
  { name: "studio", path: "/studio", upstream: "http://127.0.0.1:5173", strip_prefix: false, auth: "none" },
];

/**
 * Where users reach the gateway (e.g. `https://box.tail1234.ts.net:8443`): an origin, with at most a
 * "/" after it. Paths are the routes' business, and credentials or a query in it would be handed out.
 */
const publicUrl = z.string().superRefine((text, ctx) => {
  const problem = publicUrlProblem(text);
  if (problem) ctx.addIssue({ code: "custom", message: `public_url ${problem}` });
});

function publicUrlProblem(text: string): string | null {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return "must be an absolute http(s) URL such as https://box.example.ts.net";
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") return "must be an http or https URL";
  if (url.username || url.password) return "must not embed credentials";
  if (text.includes("?") || text.includes("#")) return "must not carry a query or fragment";
  // Checked on the text as written: the URL parser would resolve "/." or "/x/.." to "/".
  if (!/^https?:\/\/[^/?#]+\/?$/i.test(text)) return 'must have no path beyond "/"';
  return null;
}

/** tailscaled's LocalAPI socket on Linux (the Debian/Ubuntu/Fedora packages and `tailscaled --socket`'s default). */
export const DEFAULT_TAILSCALED_SOCKET = "/var/run/tailscale/tailscaled.sock";

/**
 * The mesh (issue 10). `login_server` is printed in invites. The rest binds tokens to their owner's
 * devices: a token works only from a device of the mesh user it was issued for.
 *
 * - `identity`: `"off"` never looks; `"warn"` (the default: stage before enforcing) admits every
 *   request but records each one `enforce` would refuse — an audit row with action `allow` and reason
 *   `mesh_mismatch` (or `mesh_unavailable`), the device in its detail, and a count in `usage`;
 *   `"enforce"` refuses them: 403 `mesh_mismatch` (the user is told to use their own device), or 503
 *   `mesh_unavailable` with Retry-After when tailscaled cannot say who the peer is (fail-closed).
 *   Only requests that passed authentication (the token is current and scoped) are compared, on
 *   every route, WebSocket upgrade and `POST /auth/ticket`, and again when a ticket is used.
 * - Who owns the peer: under `halo-gate serve` the edge asks the local tailscaled
 *   (`GET /localapi/v0/whois?addr=IP:PORT` on `tailscaled_socket`) for the real TCP peer, only for
 *   requests that carry credentials, and passes the answer to the core beside the client address,
 *   proven by the same per-boot secret. Answers are cached per address: 10 s for a known node (a
 *   user's or a tagged one), 2 s for an address tailscaled does not know, 1 s when it could not
 *   answer (cli/serve/mesh-identity.ts). Without an edge (`wrangler dev`: no EDGE_SECRET) the check
 *   is off; on Cloudflare (`client_address_source = "cf-connecting-ip"`) there is no tailscaled, so
 *   `identity` must be `"off"` there or the gateway refuses to start.
 * - A token's owner is the mesh user recorded for its user (`users.mesh_user`: the Headscale user id
 *   that `invite` created or found, or `--mesh-user`). A user with none recorded is treated like a
 *   mismatch: refused under `enforce` (fail-closed; `halo-gate list` names such users and the fix,
 *   `halo-gate update HANDLE --mesh-user NAME|ID`), recorded under `warn`.
 * - `trust_loopback` (default true): peers on 127.0.0.0/8 and ::1 are on-box tools and are admitted
 *   without a lookup. false resolves them like any other peer (how the tests drive the check from
 *   127.0.0.x).
 * - A peer tailscaled does not know (not a mesh device) is always refused under `enforce`. A tagged
 *   node (a server or CI runner: it belongs to no user) is refused too unless `allow_tagged = true`,
 *   which lets any valid token be used from tagged nodes.
 */
const meshSchema = z.strictObject({
  login_server: z.url({ protocol: /^https?$/ }).default("https://headscale.1bit.systems"),
  identity: z.enum(["off", "warn", "enforce"]).default("warn"),
  tailscaled_socket: z.string().startsWith("/", "tailscaled_socket must be an absolute path").default(DEFAULT_TAILSCALED_SOCKET),
  trust_loopback: z.boolean().default(true),
  allow_tagged: z.boolean().default(false),
});

export const configSchema = z
  .strictObject({
    max_users: z.number().int().min(1).max(1_000).default(10),
    default_scopes: z.array(z.string().regex(SCOPE_PATTERN)).min(1).default(["v2"]),
    default_ttl: duration("default_ttl", MAX_TTL).default("10d"),
    /** IANA timezone whose midnight ends the quota day. */
    timezone: z
      .string()
      .refine(isTimeZone, { message: "timezone must be an IANA name such as UTC or Europe/Berlin" })
      .default("UTC"),
    upstream_timeout: duration("upstream_timeout", "24h").default("60s"),
    body_limit_bytes: z.number().int().positive().max(1024 ** 3).default(32 * 1024 * 1024),
    client_address_source: z.enum(["edge", "cf-connecting-ip"]).default("edge"),
    audit_retention_days: z.number().int().min(1).max(3650).default(90),
    /** In-flight slots are leases renewed while a stream runs; an unreleased one frees after this (a restart frees all). */
    quota_lease: duration("quota_lease", "24h").default("30s"),
    /** How long a request may wait in a queued route's fair queue (routes with `max_in_flight`) before 429. */
    queue_timeout: duration("queue_timeout", "10m").default("30s"),
    /** Per-user quota enforcement. Off only to measure its cost (bench/) or in an emergency: serve warns. */
    quotas: z.boolean().default(true),
    limits: limitsSchema.default({ rps: 5, burst: 10, streams: 1, daily_tokens: 2_000_000 }),
    mesh: meshSchema.prefault({}),
    routes: z.array(routeSchema).min(1).prefault(DEFAULT_ROUTES),
    /** The URL users are given; `/api/info` reports it. */
    public_url: publicUrl.optional(),
  })
  .superRefine((config, ctx) => {
    if (config.client_address_source === "cf-connecting-ip" && config.mesh.identity !== "off") {
      ctx.addIssue({
        code: "custom",
        path: ["mesh", "identity"],
        message: `"${config.mesh.identity}" needs halo-gate serve's edge and a local tailscaled, and HALO_CONFIG.client_address_source = "cf-connecting-ip" (Cloudflare) has neither: set HALO_CONFIG.mesh.identity = "off" there`,
      });
    }
    const seen = new Map<string, number>();
    config.routes.forEach((route, index) => {
      const key = `${route.host ?? "*"} ${route.path}`;
      const earlier = seen.get(key);
      if (earlier !== undefined) {
        ctx.addIssue({ code: "custom", path: ["routes", index, "path"], message: `duplicates routes[${earlier}]` });
      }
      seen.set(key, index);
    });
    // Any client chooses its Host header, so a Host-matched route is open to everyone on the paths
    // it takes over from the generic route: it must be at least as strict as that route.
    config.routes.forEach((route, index) => {
      if (route.host === undefined) return;
      for (const twin of genericTwins(config.routes, route)) {
        const weaker = weakerThan(route, twin);
        if (!weaker) continue;
        const twinIndex = config.routes.indexOf(twin);
        ctx.addIssue({
          code: "custom",
          path: ["routes", index],
          message:
            `route "${route.name}" (host ${route.host}, path ${route.path}) is weaker than routes[${twinIndex}] "${twin.name}" (path ${twin.path}), ` +
            `whose requests it takes for that Host: ${weaker}. Any client can send Host: ${route.host}, so give it the same auth, scope and metering, or another path`,
        });
      }
    });
    const scopes = new Set(config.routes.flatMap((route) => (route.scope ? [route.scope] : [])));
    config.default_scopes.forEach((scope, index) => {
      if (!scopes.has(scope)) {
        ctx.addIssue({ code: "custom", path: ["default_scopes", index], message: `"${scope}" names no route` });
      }
    });
  })
  .transform((config) => ({
    ...config,
    default_ttl_ms: parseDuration(config.default_ttl) as number,
    upstream_timeout_ms: parseDuration(config.upstream_timeout) as number,
    quota_lease_ms: parseDuration(config.quota_lease) as number,
    queue_timeout_ms: parseDuration(config.queue_timeout) as number,
    limits: { ...config.limits, burst: config.limits.burst ?? defaultBurst(config.limits.rps) },
  }));

type ResolvedRoute = z.output<typeof routeSchema>;

const servesPath = (route: ResolvedRoute, path: string) =>
  route.match === "exact" ? path === route.path : path === route.path || path.startsWith(`${route.path}/`);

const longest = (routes: ResolvedRoute[]) => routes.reduce<ResolvedRoute | undefined>((best, route) => (!best || route.path.length > best.path.length ? route : best), undefined);

/**
 * The generic (Host-less) routes whose requests `route` takes when its Host is sent: the one that
 * would serve its own path, and, for a prefix route, the one that would serve the paths below it
 * (the longest path wins and a Host route wins a tie, as src/shared/routes.ts matches).
 */
function genericTwins(routes: ResolvedRoute[], route: ResolvedRoute): Set<ResolvedRoute> {
  const generic = routes.filter((candidate) => candidate.host === undefined && servesPath(candidate, route.path));
  const twins = [longest(generic), route.match === "prefix" ? longest(generic.filter((candidate) => candidate.match === "prefix")) : undefined];
  return new Set(twins.filter((twin): twin is ResolvedRoute => twin !== undefined));
}


/** How `route` is weaker than `twin`, in words, or `undefined` when it is at least as strict. */
function weakerThan(route: ResolvedRoute, twin: ResolvedRoute): string | undefined {
  if (AUTH_KINDS[route.auth].strength < AUTH_KINDS[twin.auth].strength) return `auth = "${route.auth}" where it has auth = "${twin.auth}"`;
  if (twin.scope !== null && route.scope !== twin.scope) return `scope "${route.scope}" where it needs scope "${twin.scope}"`;
  if (twin.metered && !route.metered) return "not metered where it is metered (the daily token quota would not apply)";
  return undefined;
}

/** docs/contract.md §6: the burst defaults to the rate (at least one request). */
export const defaultBurst = (rps: number) => Math.max(1, Math.ceil(rps));

export type GatewayConfig = z.output<typeof configSchema>;
export type RouteConfig = GatewayConfig["routes"][number];
export type UserLimits = GatewayConfig["limits"];

function isTimeZone(name: string): boolean {
  try {
    new Intl.DateTimeFormat("en-US", { timeZone: name });
    return true;
  } catch {
    return false;
  }
}

/** A configuration that must not start; the message names the offending key. */
export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration: ${problems.join("; ")}`);
    this.name = "ConfigError";
  }
}

/** Validates raw configuration, naming every offending key as `HALO_CONFIG.path.to.key`. */
export function parseConfig(raw: unknown): GatewayConfig {
  const result = configSchema.safeParse(raw ?? {});
  if (result.success) return result.data;
  throw new ConfigError(
    result.error.issues.map((issue) => {
      const base = ["HALO_CONFIG", ...issue.path.map((part) => (typeof part === "number" ? `[${part}]` : String(part)))]
        .join(".")
        .replace(/\.\[/g, "[");
      if (issue.code === "unrecognized_keys") {
        return issue.keys.map((key) => `${base}.${key}: unknown key`).join("; ");
      }
      return `${base}: ${issue.message}`;
    }),
  );
}
