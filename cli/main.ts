/**
 * `halo-gate <command>`: the operator's one CLI. Exit codes: 0 done, 1 refused or failed (one line
 * on stderr, no stack trace), 2 bad usage. `--state DIR` is accepted anywhere on every command.
 */
import { readFileSync } from "node:fs";
import { parseArgs, type ParseArgsConfig } from "node:util";
import Table from "cli-table3";
import { adminRequest } from "./admin-client";
import { CliError, usageError } from "./errors";
import { expireUserAccess, headscaleAvailable, mintPreAuthKey } from "./headscale";
import { loadWorkerConfig } from "./serve/worker-config";
import { readRuntimeInfo, resolveStateDir } from "./state";

const USAGE = `usage: halo-gate <command> [--state DIR] [options]

  serve [--bind ADDR:PORT|tailscale[:PORT]] [--admin-bind ADDR:PORT] [--allow-insecure-exposure] [--cron EXPR] [--config FILE]
  invite <handle> [--scopes v2,lemon,sd,audio] [--ttl 10d] [--rps N] [--burst N] [--streams N] [--daily-tokens N] [--authkey KEY] [--json]
  revoke <handle>
  rotate <handle> [--json]
  update <handle> [--ttl D] [--scopes …] [--rps N] [--burst N] [--streams N] [--daily-tokens N]
  list [--json]
  import-bearers <file> [--scopes …]
  usage [--json]
  audit [--since T]

State dir: --state, else $HALO_GATE_STATE, else ./.halo-gate`;

type Options = NonNullable<ParseArgsConfig["options"]>;
const STATE: Options = { state: { type: "string" }, help: { type: "boolean", short: "h" } };
const LIMITS: Options = { rps: { type: "string" }, burst: { type: "string" }, streams: { type: "string" }, "daily-tokens": { type: "string" } };

function parse(args: string[], options: Options, positionals: number) {
  let parsed;
  try {
    parsed = parseArgs({ args, options: { ...STATE, ...options }, allowPositionals: true, strict: true });
  } catch (error) {
    throw usageError((error as Error).message);
  }
  if (parsed.positionals.length !== positionals) {
    throw usageError(positionals === 0 ? `unexpected argument ${parsed.positionals[0]}` : `expected ${positionals} argument(s)`);
  }
  return { values: parsed.values as Record<string, string | boolean | undefined>, positionals: parsed.positionals, stateDir: resolveStateDir(parsed.values.state as string | undefined) };
}

function number(values: Record<string, unknown>, name: string, integer: boolean): number | undefined {
  const raw = values[name];
  if (raw === undefined) return undefined;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < 0 || (integer && !Number.isInteger(value))) throw usageError(`--${name} must be a ${integer ? "whole " : ""}number`);
  return value;
}

function limitValues(values: Record<string, unknown>) {
  return {
    rps: number(values, "rps", false),
    burst: number(values, "burst", true),
    streams: number(values, "streams", true),
    daily_tokens: number(values, "daily-tokens", true),
  };
}

const scopeList = (value: unknown) => (typeof value === "string" ? value.split(",").map((scope) => scope.trim()).filter(Boolean) : undefined);
const withoutUndefined = <T extends object>(object: T) => Object.fromEntries(Object.entries(object).filter(([, value]) => value !== undefined));

interface Issued {
  handle: string;
  token: string;
  token_id: string;
  scopes: string[];
  issued_at: string;
  expires_at: string;
}

async function invite(args: string[]): Promise<number> {
  const { values, positionals, stateDir } = parse(args, { scopes: { type: "string" }, ttl: { type: "string" }, authkey: { type: "string" }, json: { type: "boolean" }, ...LIMITS }, 1);
  const issued = await adminRequest<Issued>(stateDir, "POST", "/admin/users", withoutUndefined({ handle: positionals[0], scopes: scopeList(values.scopes), ttl: values.ttl, ...limitValues(values) }));
  if (values.json) {
    console.log(JSON.stringify(issued));
    return 0;
  }
  let authkey = values.authkey as string | undefined;
  let keyNote = "";
  if (!authkey && (await headscaleAvailable())) {
    try {
      authkey = await mintPreAuthKey(issued.handle);
      keyNote = " (single-use, valid 24 h)";
    } catch (error) {
      keyNote = ` (headscale failed: ${(error as Error).message.split("\n")[0]})`;
    }
  }
  const loginServer = loadWorkerConfig().config.mesh.login_server;
  const gateway = readRuntimeInfo(stateDir)?.gateway ?? "http://<gateway>";
  console.log(`halo-gate invite for ${issued.handle}
Token (shown once — it is not stored anywhere): ${issued.token}
Scopes: ${issued.scopes.join(", ")}    Expires: ${issued.expires_at}

1. Join the private mesh:
   tailscale up --login-server ${loginServer} --authkey ${authkey ?? "<ASK-THE-OPERATOR-FOR-A-PREAUTH-KEY>"}${keyNote}
2. Check it works:
   curl -H "Authorization: Bearer ${issued.token}" ${gateway}/v2/v1/models
3. Apps: use base URL ${gateway}/v2/v1 and the token as the API key (OpenAI-compatible).
   Phone: install Tailscale, choose "Use an alternate server" with ${loginServer}, sign in with the key above.
   Browser: ${gateway}/_halo/connect checks the token and the audio stream; the studio is at ${gateway}/studio/ (mesh only, no token needed).`);
  return 0;
}

async function revoke(args: string[]): Promise<number> {
  const { positionals, stateDir } = parse(args, {}, 1);
  const result = await adminRequest<{ message: string }>(stateDir, "POST", `/admin/users/${encodeURIComponent(positionals[0]!)}/revoke`);
  console.log(result.message);
  if (await headscaleAvailable()) {
    try {
      const expired = await expireUserAccess(positionals[0]!);
      console.log(`headscale: expired ${expired.keys} pre-auth key(s) and ${expired.nodes} node(s) of ${positionals[0]}`);
    } catch (error) {
      console.error(`halo-gate: token revoked, but headscale failed: ${(error as Error).message.split("\n")[0]}`);
      return 1;
    }
  }
  return 0;
}

async function rotate(args: string[]): Promise<number> {
  const { values, positionals, stateDir } = parse(args, { json: { type: "boolean" } }, 1);
  const issued = await adminRequest<Issued>(stateDir, "POST", `/admin/users/${encodeURIComponent(positionals[0]!)}/rotate`);
  if (values.json) console.log(JSON.stringify(issued));
  else console.log(`New token for ${issued.handle} (shown once): ${issued.token}\nScopes: ${issued.scopes.join(", ")}    Expires: ${issued.expires_at}\nThe old token is revoked.`);
  return 0;
}

async function update(args: string[]): Promise<number> {
  const { values, positionals, stateDir } = parse(args, { scopes: { type: "string" }, ttl: { type: "string" }, ...LIMITS }, 1);
  const payload = withoutUndefined({ scopes: scopeList(values.scopes), ttl: values.ttl, ...limitValues(values) });
  if (Object.keys(payload).length === 0) throw usageError("update: nothing to change (give --ttl, --scopes or a limit)");
  const user = await adminRequest<UserView>(stateDir, "PATCH", `/admin/users/${encodeURIComponent(positionals[0]!)}`, payload);
  console.log(`${user.handle}: ${user.status}, scopes ${user.scopes.join(",")}, expires ${user.expires_at}, limits ${formatLimits(user.limits)}`);
  return 0;
}

interface UserView {
  handle: string;
  status: string;
  token_hint: string;
  scopes: string[];
  issued_at: string;
  expires_at: string;
  last_used_at: string | null;
  limits: { rps: number; burst: number; streams: number; daily_tokens: number };
}

const formatLimits = (limits: UserView["limits"]) => `${limits.rps} rps (burst ${limits.burst}), ${limits.streams} stream(s), ${limits.daily_tokens} tokens/day`;

async function list(args: string[]): Promise<number> {
  const { values, stateDir } = parse(args, { json: { type: "boolean" } }, 0);
  const { users } = await adminRequest<{ users: UserView[] }>(stateDir, "GET", "/admin/users");
  if (values.json) {
    console.log(JSON.stringify(users, null, 2));
    return 0;
  }
  const table = new Table({ head: ["handle", "status", "token", "scopes", "issued", "expires", "last used", "rps/burst", "streams", "tokens/day"] });
  for (const user of users) {
    table.push([user.handle, user.status, user.token_hint, user.scopes.join(","), user.issued_at, user.expires_at, user.last_used_at ?? "never", `${user.limits.rps}/${user.limits.burst}`, user.limits.streams, user.limits.daily_tokens]);
  }
  console.log(users.length === 0 ? "no users yet: halo-gate invite <handle>" : table.toString());
  return 0;
}

interface ImportReport {
  imported: Array<{ line: number; handle: string; status: string }>;
  skipped: Array<{ line: number; handle: string; reason: string }>;
  refused: Array<{ line: number; handle: string; reason: string }>;
  malformed: Array<{ line: number; reason: string }>;
}

async function importBearers(args: string[]): Promise<number> {
  const { values, positionals, stateDir } = parse(args, { scopes: { type: "string" } }, 1);
  let content: string;
  try {
    content = readFileSync(positionals[0]!, "utf8");
  } catch (error) {
    throw new CliError(`cannot read ${positionals[0]}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
  const report = await adminRequest<ImportReport>(stateDir, "POST", "/admin/import-bearers", withoutUndefined({ content, scopes: scopeList(values.scopes) }));
  for (const entry of report.imported) console.log(`line ${entry.line}: imported ${entry.handle} (${entry.status})`);
  for (const entry of report.skipped) console.log(`line ${entry.line}: skipped ${entry.handle}: ${entry.reason}`);
  for (const entry of report.refused) console.error(`line ${entry.line}: refused ${entry.handle}: ${entry.reason}`);
  for (const entry of report.malformed) console.error(`line ${entry.line}: malformed: ${entry.reason}`);
  console.log(`imported ${report.imported.length}, skipped ${report.skipped.length}, refused ${report.refused.length}, malformed ${report.malformed.length}`);
  return report.refused.length + report.malformed.length > 0 ? 1 : 0;
}

interface UserUsage {
  handle: string;
  status: string;
  requests: Record<string, number>;
  refused: Record<string, number>;
  tokens_today: number;
  daily_tokens: number;
  in_flight: number;
  streams: number;
  upstream_latency: { count: number; sum_seconds: number };
}

async function usage(args: string[]): Promise<number> {
  const { values, stateDir } = parse(args, { json: { type: "boolean" } }, 0);
  const report = await adminRequest<{ users: UserUsage[] }>(stateDir, "GET", "/admin/usage");
  if (values.json) {
    console.log(JSON.stringify(report, null, 2));
    return 0;
  }
  const table = new Table({ head: ["handle", "status", "2xx", "4xx", "5xx", "aborted", "429 rate/streams/daily", "tokens today", "in flight", "mean upstream latency"] });
  for (const user of report.users) {
    const latency = user.upstream_latency.count ? `${Math.round((user.upstream_latency.sum_seconds / user.upstream_latency.count) * 1000)} ms` : "—";
    table.push([
      user.handle,
      user.status,
      user.requests["2xx"] ?? 0,
      user.requests["4xx"] ?? 0,
      user.requests["5xx"] ?? 0,
      user.requests.aborted ?? 0,
      `${user.refused.rate ?? 0}/${user.refused.concurrency ?? 0}/${user.refused.daily ?? 0}`,
      `${user.tokens_today} / ${user.daily_tokens}`,
      `${user.in_flight} / ${user.streams}`,
      latency,
    ]);
  }
  console.log(report.users.length === 0 ? "no users yet" : table.toString());
  return 0;
}

async function audit(args: string[]): Promise<number> {
  const { values, stateDir } = parse(args, { since: { type: "string" } }, 0);
  const since = values.since === undefined ? "" : `?since=${encodeURIComponent(String(values.since))}`;
  if (values.since !== undefined && Number.isNaN(Date.parse(String(values.since)))) throw usageError("--since must be an ISO 8601 time, e.g. 2026-11-01T00:00:00Z");
  process.stdout.write(await adminRequest<string>(stateDir, "GET", `/admin/audit${since}`));
  return 0;
}

async function serveCommand(args: string[]): Promise<number> {
  const { values, stateDir } = parse(
    args,
    { bind: { type: "string" }, "admin-bind": { type: "string" }, "allow-insecure-exposure": { type: "boolean" }, cron: { type: "string" }, config: { type: "string" } },
    0,
  );
  // Loaded only for serve: miniflare and esbuild are heavy, and every other command is a quick admin call.
  const { serve } = await import("./commands/serve");
  return serve({
    stateDir,
    bind: (values.bind as string | undefined) ?? "127.0.0.1:8443",
    adminBind: (values["admin-bind"] as string | undefined) ?? "127.0.0.1:8444",
    allowInsecureExposure: values["allow-insecure-exposure"] === true,
    cron: values.cron as string | undefined,
    config: values.config as string | undefined,
    meshWaitMs: Number(process.env.HALO_GATE_MESH_WAIT_MS ?? 60_000),
    graceMs: Number(process.env.HALO_GATE_SHUTDOWN_GRACE_MS ?? 30_000),
  });
}

const COMMANDS: Record<string, (args: string[]) => Promise<number>> = {
  serve: serveCommand,
  invite,
  revoke,
  rotate,
  update,
  list,
  "import-bearers": importBearers,
  usage,
  audit,
};

/** `--state DIR` may also come before the command: move it after, where every command parses it. */
function commandFirst(argv: string[]): string[] {
  const leading: string[] = [];
  let index = 0;
  while (index < argv.length && argv[index]!.startsWith("--state")) {
    const takesValue = argv[index] === "--state";
    leading.push(...argv.slice(index, index + (takesValue ? 2 : 1)));
    index += takesValue ? 2 : 1;
  }
  return [...argv.slice(index, index + 1), ...leading, ...argv.slice(index + 1)];
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = commandFirst(argv);
  if (command === undefined || command === "help" || command === "--help" || command === "-h") {
    console.log(USAGE);
    return command === undefined ? 2 : 0;
  }
  const run = COMMANDS[command];
  try {
    if (!run) throw usageError(`unknown command "${command}"`);
    if (rest.includes("--help") || rest.includes("-h")) {
      console.log(USAGE);
      return 0;
    }
    return await run(rest);
  } catch (error) {
    if (error instanceof CliError) {
      console.error(`halo-gate: ${error.message}`);
      if (error.exitCode === 2) console.error("run 'halo-gate --help' for usage");
      return error.exitCode;
    }
    console.error(`halo-gate: ${(error as Error).message ?? String(error)}`);
    return 1;
  }
}
