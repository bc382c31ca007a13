/**
 * The admin commands: each one call to the running serve's loopback admin API. Their arguments are
 * declared in cli/commands.ts; whatever depends on the configuration comes from the running
 * gateway (serve.json), never from a wrangler.toml here. Output goes through cli/output.ts.
 */
import { readFileSync } from "node:fs";
import { AdminApiError, adminRequest, runningGateway } from "../admin-client";
import type { Input } from "../commands";
import { CliError } from "../errors";
import { headscaleAvailable, headscaleUserId, mintPreAuthKeyFor, revokeMeshAccess } from "../headscale";
import { accessMessage, seatsFullMessage } from "../invite-message";
import { print, printError, printJson, printJsonText, printTable, toSecond, type Column, type Style } from "../output";
import type { RuntimeInfo } from "../state";
import { MESH_USER_PATTERN } from "../../src/shared/mesh-identity";
import { AUDIT_END, type ImportReport, type IssuedToken, type ListedUser, type TokenStatus, type UserUsage, type UserView } from "../../src/shared/admin-wire";

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

/**
 * `--mesh-user NAME|ID` (issue 10): a number is a mesh user id as is; a name is looked up with
 * headscale (its numeric id is what tailscaled's whois reports). Resolved before anything changes.
 */
async function resolveMeshUser(value: string): Promise<string> {
  if (MESH_USER_PATTERN.test(value)) return value;
  if (!(await headscaleAvailable())) {
    throw new CliError(`--mesh-user ${value}: headscale is not on PATH here to find that user's id; give the numeric id instead (on the Headscale host: headscale users list)`);
  }
  let id: string | undefined;
  try {
    id = await headscaleUserId(value);
  } catch (error) {
    throw new CliError(`--mesh-user ${value}: ${(error as Error).message.split("\n")[0]}`);
  }
  if (id === undefined) throw new CliError(`--mesh-user ${value}: Headscale has no user of that name (headscale users list)`);
  return id;
}

/** Under mesh.identity warn/enforce, a user without a mesh user cannot use their token from the mesh (enforce) or is recorded on every request (warn). */
function unboundNote(runtime: RuntimeInfo, handles: string[]): string | undefined {
  const mode = runtime.mesh_identity;
  if (handles.length === 0 || mode === undefined || mode === "off") return undefined;
  const what = mode === "enforce" ? "their requests from the mesh are refused (403 mesh_mismatch)" : "their requests from the mesh are recorded as mesh_mismatch, and enforce would refuse them";
  return `halo-gate: mesh.identity = ${mode}: no mesh user recorded for ${handles.join(", ")}: ${what}. Bind one: halo-gate update <handle> --mesh-user NAME|ID`;
}

export async function invite({ args, flags, stateDir }: Input<"invite">): Promise<number> {
  const handle = args[0]!;
  const runtime = runningGateway(stateDir);
  // Named by hand: resolved first, so a typo refuses the invite before a token exists.
  const named = flags["mesh-user"] === undefined ? undefined : await resolveMeshUser(flags["mesh-user"]);
  const issued = await adminRequest<IssuedToken>(
    stateDir,
    "POST",
    "/admin/users",
    withoutUndefined({ handle, scopes: flags.scopes, ttl: flags.ttl, ...limitsPayload(flags), mesh_user: named }),
  ).catch(async (error: unknown) => {
    throw await explainSeats(error, stateDir);
  });
  if (flags.json) {
    printJson(issued);
    const note = named === undefined ? unboundNote(runtime, [handle]) : undefined;
    if (note) printError(note);
    return 0;
  }
  let authkey = flags.authkey;
  let keyNote = "";
  // The Headscale user the key is minted for (created if missing) owns the user's devices: the token is bound to it.
  let meshUser = named;
  if (await headscaleAvailable()) {
    try {
      if (!authkey) {
        const minted = await mintPreAuthKeyFor(issued.handle, {}, named);
        authkey = minted.key;
        keyNote = " (single-use, valid 24 h)";
        meshUser = minted.userId;
      } else if (meshUser === undefined) {
        meshUser = await headscaleUserId(issued.handle);
      }
    } catch (error) {
      keyNote = authkey ? keyNote : ` (headscale failed: ${(error as Error).message.split("\n")[0]})`;
    }
  }
  let bindFailed: string | undefined;
  if (meshUser !== undefined && named === undefined) {
    try {
      await adminRequest<UserView>(stateDir, "PATCH", userPath(issued.handle), { mesh_user: meshUser });
    } catch (error) {
      bindFailed = `halo-gate: the token was issued, but recording ${issued.handle}'s mesh user ${meshUser} failed: ${(error as Error).message}; run: halo-gate update ${issued.handle} --mesh-user ${meshUser}`;
    }
  }
  print(accessMessage({ kind: "invite", issued, runtime, authkey, keyNote, certificatePem: selfSignedCertificate(runtime) }));
  if (bindFailed) {
    printError(bindFailed);
    return 1;
  }
  const note = meshUser === undefined ? unboundNote(runtime, [handle]) : undefined;
  if (note) printError(note);
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
  const issued = await adminRequest<IssuedToken>(stateDir, "POST", userPath(args[0]!, "/rotate"), flags.grace ? { grace: flags.grace } : undefined);
  if (flags.json) printJson(issued);
  else {
    print(accessMessage({ kind: "rotate", issued, runtime, certificatePem: selfSignedCertificate(runtime) }));
    if (flags.grace) print(`(The old token keeps working for ${flags.grace}, so clients can switch without downtime.)`);
  }
  return 0;
}

const formatLimits = (limits: UserView["limits"]) => `${limits.rps} rps (burst ${limits.burst}), ${limits.streams} stream(s), ${limits.daily_tokens} tokens/day`;

export async function update({ args, flags, stateDir }: Input<"update">): Promise<number> {
  const changes = withoutUndefined({ scopes: flags.scopes, ttl: flags.ttl, ...limitsPayload(flags) });
  if (Object.keys(changes).length === 0 && flags["mesh-user"] === undefined) {
    throw new CliError("update: nothing to change (give --ttl, --scopes, a limit or --mesh-user; see 'halo-gate update --help')", 2);
  }
  const payload = { ...changes, ...(flags["mesh-user"] === undefined ? {} : { mesh_user: await resolveMeshUser(flags["mesh-user"]) }) };
  const user = await adminRequest<UserView>(stateDir, "PATCH", userPath(args[0]!), payload);
  const mesh = user.mesh_user === null ? "no mesh user" : `mesh user ${user.mesh_user}`;
  print(`${user.handle}: ${user.status}, scopes ${user.scopes.join(",")}, expires ${toSecond(user.expires_at)}, limits ${formatLimits(user.limits)}, ${mesh}`);
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
  { header: "LAST DEVICE", cell: (user) => user.last_device ?? "—", drop: 3, shrink: true },
  { header: "MESH USER", cell: (user) => user.mesh_user ?? "none", wide: true },
  { header: "RPS/BURST", cell: (user) => `${user.limits.rps}/${user.limits.burst}`, wide: true },
  { header: "STREAMS", cell: (user) => user.limits.streams, align: "right", wide: true },
  { header: "TOKENS TODAY", cell: (user) => `${user.tokens_today} / ${user.limits.daily_tokens}`, align: "right", drop: 2 },
];

export async function list({ flags, stateDir }: Input<"list">): Promise<number> {
  const { users } = await adminRequest<{ users: ListedUser[] }>(stateDir, "GET", "/admin/users");
  if (flags.json) printJson(users, 2);
  else if (users.length === 0) print("no users yet: halo-gate invite <handle>");
  else printTable(LIST_COLUMNS, users, flags.wide);
  // On stderr, so the table (and --json) stay what scripts read.
  const note = unboundNote(runningGateway(stateDir), users.filter((user) => user.status === "active" && user.mesh_user === null).map((user) => user.handle));
  if (note) printError(note);
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
  { header: "MESH WARN/DENY", cell: (user) => `${count(user.mesh?.warned)}/${count(user.mesh?.refused)}`, wide: true },
  { header: "TOKENS TODAY", cell: (user) => `${user.tokens_today} / ${user.daily_tokens}`, align: "right" },
  { header: "IN FLIGHT", cell: (user) => `${user.in_flight} / ${user.streams}`, align: "right" },
  {
    header: "LATENCY",
    cell: (user) => (user.upstream_latency.count ? `${Math.round((user.upstream_latency.sum_seconds / user.upstream_latency.count) * 1000)} ms` : "—"),
    align: "right",
    drop: 2,
  },
  { header: "DAY", cell: (user) => user.day, wide: true },
  // The fair queue (issue 12): waiting now, and the mean wait of those that waited.
  { header: "QUEUED", cell: (user) => count(user.queue?.queued), align: "right", wide: true },
  { header: "WAIT AVG/MAX", cell: (user) => (user.queue?.waited ? `${Math.round(user.queue.wait_ms_total / user.queue.waited)}/${user.queue.wait_ms_max} ms` : "—"), align: "right", wide: true },
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
  const lines = (await adminRequest<string>(stateDir, "GET", `/admin/audit${since}`)).split("\n").filter(Boolean);
  // The export ends with a line saying it is whole; without it some rows were not read (issue 9):
  // exit 1, so the nightly archive job fails instead of saving a short file.
  const closing = lines.at(-1);
  const whole = closing !== undefined && (JSON.parse(closing) as Record<string, unknown>)[AUDIT_END] === true;
  const events = whole ? lines.slice(0, -1) : lines;
  if (events.length > 0) printJsonText(events.join("\n") + "\n");
  if (!whole) {
    printError(`halo-gate: the audit export was cut short after ${events.length} event(s): the gateway could not read every row; nothing is complete, try again`);
    return 1;
  }
  return 0;
}
