/**
 * Every command of the CLI, declared once: its arguments and its flags (type, value name,
 * description, default). cli/args.ts derives the parser and the help from this table, and
 * cli/main.ts must give each entry a runner (the compiler refuses a missing one).
 */
import { MAX_ROTATE_GRACE, MAX_TTL } from "../src/shared/duration";
import { HANDLE_RULE, LIMIT_BOUNDS } from "../src/shared/config";
import type { ArgSpec, CommandInput, CommandSpec, FlagSpec } from "./args";
import { DEFAULT_TAILSCALED_SOCKET } from "./doctor/tailscaled";

const handle = { name: "handle", kind: "handle", description: `the user (${HANDLE_RULE})` } as const satisfies ArgSpec;

const json = { kind: "boolean", description: "print JSON for scripts instead of text" } as const satisfies FlagSpec;
const wide = { kind: "boolean", description: "show every column (by default the table fits 100 columns)" } as const satisfies FlagSpec;

const scopes = {
  kind: "scopes",
  description: "the routes the token may use, comma-separated, e.g. v2,sd",
  otherwise: "the config's default_scopes",
} as const satisfies FlagSpec;

const ttl = { kind: "duration", max: MAX_TTL, description: `how long the token is valid, e.g. 10d, 24h, 30m (at most ${MAX_TTL})`, otherwise: "the config's default_ttl" } as const satisfies FlagSpec;

/** The mesh user a user's token works from (issue 10). */
const meshUser = {
  kind: "string",
  value: "NAME|ID",
  description: "the mesh (Headscale) user whose devices may use the token: a numeric id as is, a name resolved with headscale on PATH",
} as const satisfies FlagSpec;

/** The per-user limits of invite and update. */
const LIMIT_FLAGS = {
  rps: { kind: "number", bounds: LIMIT_BOUNDS.rps, description: `requests per second, above 0 and up to ${LIMIT_BOUNDS.rps.max}`, otherwise: "the config's limits.rps" },
  burst: { kind: "number", bounds: LIMIT_BOUNDS.burst, description: `requests allowed at once before --rps applies, 1 to ${LIMIT_BOUNDS.burst.max}`, otherwise: "--rps when given, else the config's limits.burst" },
  streams: { kind: "number", bounds: LIMIT_BOUNDS.streams, description: `requests in flight at once, 1 to ${LIMIT_BOUNDS.streams.max}`, otherwise: "the config's limits.streams" },
  "daily-tokens": { kind: "number", bounds: LIMIT_BOUNDS.daily_tokens, description: "LLM tokens per day (the day of the config's timezone)", otherwise: "the config's limits.daily_tokens" },
} as const satisfies Record<string, FlagSpec>;

/** The same flags for update, where an absent flag leaves the value as it is. */
function unchanged<F extends Record<string, FlagSpec>>(flags: F): { [N in keyof F]: Omit<F[N], "otherwise"> & { otherwise: string } } {
  return Object.fromEntries(Object.entries(flags).map(([name, flag]) => [name, { ...flag, otherwise: "unchanged" }])) as { [N in keyof F]: Omit<F[N], "otherwise"> & { otherwise: string } };
}

export const COMMANDS = {
  serve: {
    summary: "run the gateway: the listener on --bind, the workerd core, the admin API on loopback",
    description:
      "Runs the gateway in the foreground until SIGTERM or SIGINT (then finishes in-flight requests). It writes serve.json and the operator token to the state directory, where the other commands find it.",
    args: [],
    flags: {
      bind: {
        kind: "string",
        value: "ADDR[:PORT]|tailscale[:PORT]",
        default: "127.0.0.1:8443",
        description: "where users connect: a loopback or mesh address, or tailscale for this node's mesh address (waits up to 60 s for the mesh)",
      },
      "admin-bind": { kind: "string", value: "ADDR[:PORT]", default: "127.0.0.1:8444", description: "the admin API the other commands use (loopback only)" },
      "allow-insecure-exposure": { kind: "boolean", description: "allow a --bind address that is neither loopback nor on a tailscale* interface" },
      cron: { kind: "string", value: "EXPR", description: "the nightly sweep's cron expression (UTC)", otherwise: "the config's [triggers] crons" },
      config: {
        kind: "string",
        value: "FILE",
        description:
          "a wrangler.toml anywhere, e.g. a copy of this install's: its HALO_CONFIG, crons, bindings and compatibility settings are used; the worker is always this install's own (its main is ignored)",
        otherwise: "this install's wrangler.toml",
      },
      tls: { kind: "boolean", description: "serve HTTPS with a self-signed certificate kept in <state>/tls (clients pin its fingerprint)" },
      "tls-name": { kind: "strings", value: "NAME", description: "a host name the self-signed certificate is for (with --tls)" },
      "tls-cert": { kind: "string", value: "FILE", description: "serve this PEM certificate instead (with --tls-key; re-read on SIGHUP)" },
      "tls-key": { kind: "string", value: "FILE", description: "the PEM key of --tls-cert" },
    },
    examples: ["halo-gate serve --bind tailscale --tls --tls-name strixhalo.local --state /var/lib/halo-gate"],
  },
  invite: {
    summary: "mint a token for a new user and print a ready-to-send invite",
    description:
      "Mints the user's token and prints a message to send them: the token (shown once, stored only as a hash), the tailscale up line with a pre-auth key (minted with headscale when it is on PATH), and a check against a route their scopes allow. The seat cap is the config's max_users.",
    args: [handle],
    flags: {
      scopes,
      ttl,
      ...LIMIT_FLAGS,
      authkey: { kind: "string", value: "KEY", description: "the pre-auth key to put in the message", otherwise: "a single-use 24 h key from headscale when it is on PATH" },
      "mesh-user": { ...meshUser, otherwise: "the Headscale user invite creates or finds (headscale on PATH, not with --json)" },
      json,
    },
    examples: ["halo-gate invite alice --scopes v2,sd", "halo-gate invite bob --ttl 24h --rps 2 --json"],
  },
  revoke: {
    summary: "refuse the user's token from the next request on",
    description: "Revokes the user's token (it is refused from the next request on) and, with headscale on PATH, expires the user's pre-auth keys and nodes.",
    args: [handle],
    flags: {},
  },
  rotate: {
    summary: "give the user a new token (same scopes, limits and expiry) and print a ready-to-send message",
    description: "Replaces the user's active token: the old one is refused at once (or, with --grace, keeps working that long so the user can switch clients), the new one keeps its scopes, limits and expiry. Prints the same ready-to-send message as invite.",
    args: [handle],
    flags: {
      grace: { kind: "duration", max: MAX_ROTATE_GRACE, description: `how long the old token keeps working, e.g. 1h (at most ${MAX_ROTATE_GRACE})`, otherwise: "none: refused at once" },
      json,
    },
  },
  update: {
    summary: "change a user's expiry, scopes or limits",
    description: "Changes only what is given: --ttl counts from now, --scopes replaces the list, and a limit changes that limit alone (--rps keeps the burst; give --burst to change it).",
    args: [handle],
    flags: { ...unchanged({ ttl, scopes, ...LIMIT_FLAGS }), "mesh-user": { ...meshUser, otherwise: "unchanged" } },
    examples: ["halo-gate update alice --ttl 10d --scopes v2", "halo-gate update bob --rps 2 --burst 4"],
  },
  list: {
    summary: "every user: status, scopes, expiry, last use, tokens today",
    description:
      "Lists every user with their current token. Times are UTC, to the second. --wide adds the mesh user each token works from and the device it was last used from; users whose requests mesh.identity refuses (or would refuse) for want of a mesh user are named below the table.",
    args: [],
    flags: { wide, json },
  },
  "import-bearers": {
    summary: "import the old Caddy bearers file (idempotent)",
    description:
      "Reads lines 'sk-halo-… # handle # issued T # expires T'. A token already stored is skipped, expired lines are imported as expired, and a line is refused when its handle was revoked after the line was issued. Malformed and refused lines are reported by number (exit 1); the good lines are imported.",
    args: [{ name: "file", kind: "text", description: "the bearers file, e.g. /etc/caddy/bearers.txt" }],
    flags: { scopes },
  },
  usage: {
    summary: "requests, refusals, tokens today, in-flight requests and latency per user",
    description: "Per-user usage since the gateway started, and today's tokens against the daily quota.",
    args: [],
    flags: { wide, json },
  },
  audit: {
    summary: "the audit log as NDJSON, oldest first",
    description: "Prints the audit log, one JSON event a line (admin actions and auth decisions, never a token).",
    args: [],
    flags: { since: { kind: "time", description: "only events from then on: a date (its midnight UTC) or an ISO 8601 time", otherwise: "everything kept" } },
    examples: ["halo-gate audit --since 2026-11-25", "halo-gate audit --since 2026-11-25T08:00:00+01:00"],
  },
  doctor: {
    summary: "check the state dir, the running serve, TLS, the mesh and Headscale; print how to fix each problem",
    description:
      "Changes nothing. Checks the state dir (it exists, mode 0700, operator-token and tls/key.pem 0600, free space), whether a serve runs there and answers /healthz, the TLS certificate (names, days left, fingerprint), the bind rules (tailscale, its mesh address on a tailscale* interface), tailscaled's LocalAPI and Headscale's version. One line per check with the fix for each problem; exit 1 when a check failed.",
    args: [],
    flags: {
      json: { kind: "boolean", description: "print the checks as JSON for scripts instead of text" },
      "tailscaled-socket": { kind: "string", value: "PATH", default: DEFAULT_TAILSCALED_SOCKET, description: "tailscaled's LocalAPI socket" },
    },
    examples: ["halo-gate doctor --state /var/lib/halo-gate", "halo-gate doctor --json"],
  },
} as const satisfies Record<string, CommandSpec>;

export type CommandName = keyof typeof COMMANDS;

/** What a command's runner receives: its arguments and typed flags, parsed from its declaration. */
export type Input<N extends CommandName> = CommandInput<(typeof COMMANDS)[N]>;
