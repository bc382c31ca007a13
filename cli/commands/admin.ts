/**
 * The admin commands: each one call to the running serve's loopback admin API. Their arguments are
 * declared in cli/commands.ts; whatever depends on the configuration comes from the running
 * gateway (serve.json), never from a wrangler.toml here. Output goes through cli/output.ts.
 */
import { readFileSync } from "node:fs";
import { AdminApiError, adminRequest, runningGateway } from "../admin-client";
import type { Input } from "../commands";
import { CliError } from "../errors";
import { headscaleAvailable, mintPreAuthKey, revokeMeshAccess } from "../headscale";
import { accessMessage, seatsFullMessage } from "../invite-message";
import { print, printError, printJson, printJsonText, printTable, toSecond, type Column, type Style } from "../output";
import type { RuntimeInfo } from "../state";
import type { ImportReport, IssuedToken, ListedUser, TokenStatus, UserUsage, UserView } from "../../src/admin/wire";

const withoutUndefined = <T extends object>(object: T) => Object.fromEntries(Object.entries(object).filter(([, value]) => value !== undefined));
const userPath = (handle: string, action = "") => `/admin/users/${encodeURIComponent(handle)}${action}`;

async function activeSeats(stateDir: string): Promise<number | undefined> {
  try {
    const { users } = await adminRequest<{ users: ListedUser[] }>(stateDir, "GET", "/admin/users");
    return users.filter((user) => user.status === "active").length;
  } catch {
    return undefined;
  }
}

/** The seat-cap refusal reworded to name the config file the running gateway reads. */
async function explainSeats(error: unknown, stateDir: string): Promise<unknown> {
  if (!(error instanceof AdminApiError) || error.code !== "seats_full") return error;
  return new CliError(seatsFullMessage(runningGateway(stateDir), await activeSeats(stateDir), error.message));
}

/** The served certificate, to send along when it is self-signed (it is public). */
function selfSignedCertificate(runtime: RuntimeInfo): string | undefined {
  if (!runtime.tls?.self_signed) return undefined;
  try {
    return readFileSync(runtime.tls.cert_path, "utf8");
  } catch {
    return undefined;
  }
}

const limitsPayload = (flags: { rps?: number | undefined; burst?: number | undefined; streams?: number | undefined; "daily-tokens"?: number | undefined }) => ({
  rps: flags.rps,
  burst: flags.burst,
  streams: flags.streams,
  daily_tokens: flags["daily-tokens"],
});

export async function invite({ args, flags, stateDir }: Input<"invite">): Promise<number> {
  const handle = args[0]!;
  const runtime = runningGateway(stateDir);
  const issued = await adminRequest<IssuedToken>(stateDir, "POST", "/admin/users", withoutUndefined({ handle, scopes: flags.scopes, ttl: flags.ttl, ...limitsPayload(flags) })).catch(
    async (error: unknown) => {
      throw await explainSeats(error, stateDir);
    },
  );
  if (flags.json) {
    printJson(issued);
    return 0;
  }
  let authkey = flags.authkey;
  let keyNote = "";
  if (!authkey && (await headscaleAvailable())) {
    try {
      authkey = await mintPreAuthKey(issued.handle);
      keyNote = " (single-use, valid 24 h)";
    } catch (error) {
      keyNote = ` (headscale failed: ${(error as Error).message.split("\n")[0]})`;
    }
  }
  print(accessMessage({ kind: "invite", issued, runtime, authkey, keyNote, certificatePem: selfSignedCertificate(runtime) }));
  return 0;
}

export async function revoke({ args, stateDir }: Input<"revoke">): Promise<number> {
  const handle = args[0]!;
  const result = await adminRequest<{ message: string }>(stateDir, "POST", userPath(handle, "/revoke"));
  print(toSecond(result.message));
  // The token is refused from now on; the mesh step (or what is left of it by hand) is reported.
  const mesh = await revokeMeshAccess(handle);
  for (const line of mesh.stdout) print(line);
  for (const line of mesh.stderr) printError(line);
  return mesh.exitCode;
}

export async function rotate({ args, flags, stateDir }: Input<"rotate">): Promise<number> {
  const runtime = runningGateway(stateDir);
  const issued = await adminRequest<IssuedToken>(stateDir, "POST", userPath(args[0]!, "/rotate"));
  if (flags.json) printJson(issued);
  else print(accessMessage({ kind: "rotate", issued, runtime, certificatePem: selfSignedCertificate(runtime) }));
  return 0;
}

const formatLimits = (limits: UserView["limits"]) => `${limits.rps} rps (burst ${limits.burst}), ${limits.streams} stream(s), ${limits.daily_tokens} tokens/day`;

export async function update({ args, flags, stateDir }: Input<"update">): Promise<number> {
  const payload = withoutUndefined({ scopes: flags.scopes, ttl: flags.ttl, ...limitsPayload(flags) });
  if (Object.keys(payload).length === 0) throw new CliError("update: nothing to change (give --ttl, --scopes or a limit; see 'halo-gate update --help')", 2);
  const user = await adminRequest<UserView>(stateDir, "PATCH", userPath(args[0]!), payload);
  print(`${user.handle}: ${user.status}, scopes ${user.scopes.join(",")}, expires ${toSecond(user.expires_at)}, limits ${formatLimits(user.limits)}`);
  if (flags.rps !== undefined && flags.burst === undefined) print(`The burst stays ${user.limits.burst}; give --burst to change it.`);
  return 0;
}

const STATUS_STYLE: Record<TokenStatus, Style> = { active: "green", expired: "yellow", revoked: "red" };
const timeCell = (iso: string | null, none = "never") => (iso === null ? none : toSecond(iso));

const LIST_COLUMNS: Column<ListedUser>[] = [
  { header: "HANDLE", cell: (user) => user.handle, shrink: true },
  { header: "STATUS", cell: (user) => user.status, style: (user) => STATUS_STYLE[user.status] },
  { header: "TOKEN", cell: (user) => user.token_hint, wide: true },
  { header: "SCOPES", cell: (user) => user.scopes.join(","), shrink: true },
  { header: "ISSUED", cell: (user) => timeCell(user.issued_at), wide: true },
  { header: "EXPIRES", cell: (user) => timeCell(user.expires_at) },
  { header: "LAST USED", cell: (user) => timeCell(user.last_used_at), drop: 1 },
  { header: "RPS/BURST", cell: (user) => `${user.limits.rps}/${user.limits.burst}`, wide: true },
  { header: "STREAMS", cell: (user) => user.limits.streams, align: "right", wide: true },
  { header: "TOKENS TODAY", cell: (user) => `${user.tokens_today} / ${user.limits.daily_tokens}`, align: "right", drop: 2 },
];

export async function list({ flags, stateDir }: Input<"list">): Promise<number> {
  const { users } = await adminRequest<{ users: ListedUser[] }>(stateDir, "GET", "/admin/users");
  if (flags.json) printJson(users, 2);
  else if (users.length === 0) print("no users yet: halo-gate invite <handle>");
  else printTable(LIST_COLUMNS, users, flags.wide);
  return 0;
}

export async function importBearers({ args, flags, stateDir }: Input<"import-bearers">): Promise<number> {
  const file = args[0]!;
  let content: string;
  try {
    content = readFileSync(file, "utf8");
  } catch (error) {
    throw new CliError(`cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
  const report = await adminRequest<ImportReport>(stateDir, "POST", "/admin/import-bearers", withoutUndefined({ content, scopes: flags.scopes }));
  const seatsFull = report.refused.some((entry) => entry.code === "seats_full")
    ? seatsFullMessage(runningGateway(stateDir), await activeSeats(stateDir), "")
    : "";
  for (const entry of report.imported) print(`line ${entry.line}: imported ${entry.handle} (${entry.status})`);
  for (const entry of report.skipped) print(`line ${entry.line}: skipped ${entry.handle}: ${toSecond(entry.reason)}`);
  for (const entry of report.refused) printError(`line ${entry.line}: refused ${entry.handle}: ${toSecond((entry.code === "seats_full" && seatsFull) || entry.reason)}`);
  for (const entry of report.malformed) printError(`line ${entry.line}: malformed: ${entry.reason}`);
  print(`imported ${report.imported.length}, skipped ${report.skipped.length}, refused ${report.refused.length}, malformed ${report.malformed.length}`);
  return report.refused.length + report.malformed.length > 0 ? 1 : 0;
}

const count = (value: number | undefined) => value ?? 0;

const USAGE_COLUMNS: Column<UserUsage>[] = [
  { header: "HANDLE", cell: (user) => user.handle, shrink: true },
  { header: "STATUS", cell: (user) => user.status, style: (user) => STATUS_STYLE[user.status] },
  { header: "2XX", cell: (user) => count(user.requests["2xx"]), align: "right" },
  { header: "3XX", cell: (user) => count(user.requests["3xx"]), align: "right", wide: true },
  { header: "4XX", cell: (user) => count(user.requests["4xx"]), align: "right" },
  { header: "5XX", cell: (user) => count(user.requests["5xx"]), align: "right" },
  { header: "ABORTED", cell: (user) => count(user.requests.aborted), align: "right", wide: true },
  { header: "429", cell: (user) => count(user.refused.rate) + count(user.refused.concurrency) + count(user.refused.daily), align: "right", drop: 1 },
  { header: "429 RATE/STREAMS/DAILY", cell: (user) => `${count(user.refused.rate)}/${count(user.refused.concurrency)}/${count(user.refused.daily)}`, wide: true },
  { header: "TOKENS TODAY", cell: (user) => `${user.tokens_today} / ${user.daily_tokens}`, align: "right" },
  { header: "IN FLIGHT", cell: (user) => `${user.in_flight} / ${user.streams}`, align: "right" },
  {
    header: "LATENCY",
    cell: (user) => (user.upstream_latency.count ? `${Math.round((user.upstream_latency.sum_seconds / user.upstream_latency.count) * 1000)} ms` : "—"),
    align: "right",
    drop: 2,
  },
  { header: "DAY", cell: (user) => user.day, wide: true },
];

export async function usage({ flags, stateDir }: Input<"usage">): Promise<number> {
  const report = await adminRequest<{ users: UserUsage[] }>(stateDir, "GET", "/admin/usage");
  if (flags.json) printJson(report, 2);
  else if (report.users.length === 0) print("no users yet");
  else printTable(USAGE_COLUMNS, report.users, flags.wide);
  return 0;
}

export async function audit({ flags, stateDir }: Input<"audit">): Promise<number> {
  const since = flags.since === undefined ? "" : `?since=${encodeURIComponent(flags.since)}`;
  printJsonText(await adminRequest<string>(stateDir, "GET", `/admin/audit${since}`));
  return 0;
}
