/** The admin commands: each one call to the running serve's loopback admin API. */
import { readFileSync } from "node:fs";
import Table from "cli-table3";
import { adminRequest } from "../admin-client";
import { LIMITS, limitValues, parse, scopeList, withoutUndefined } from "../args";
import { CliError, usageError } from "../errors";
import { expireUserAccess, headscaleAvailable, mintPreAuthKey } from "../headscale";
import { loadWorkerConfig } from "../serve/worker-config";
import { readRuntimeInfo } from "../state";
import type { ImportReport, IssuedToken, ListedUser, UserUsage, UserView } from "../../src/admin/wire";


export async function invite(args: string[]): Promise<number> {
  const { values, positionals, stateDir } = parse(args, { scopes: { type: "string" }, ttl: { type: "string" }, authkey: { type: "string" }, json: { type: "boolean" }, ...LIMITS }, 1);
  const issued = await adminRequest<IssuedToken>(stateDir, "POST", "/admin/users", withoutUndefined({ handle: positionals[0], scopes: scopeList(values.scopes), ttl: values.ttl, ...limitValues(values) }));
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

export async function revoke(args: string[]): Promise<number> {
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

export async function rotate(args: string[]): Promise<number> {
  const { values, positionals, stateDir } = parse(args, { json: { type: "boolean" } }, 1);
  const issued = await adminRequest<IssuedToken>(stateDir, "POST", `/admin/users/${encodeURIComponent(positionals[0]!)}/rotate`);
  if (values.json) console.log(JSON.stringify(issued));
  else console.log(`New token for ${issued.handle} (shown once): ${issued.token}\nScopes: ${issued.scopes.join(", ")}    Expires: ${issued.expires_at}\nThe old token is revoked.`);
  return 0;
}

export async function update(args: string[]): Promise<number> {
  const { values, positionals, stateDir } = parse(args, { scopes: { type: "string" }, ttl: { type: "string" }, ...LIMITS }, 1);
  const payload = withoutUndefined({ scopes: scopeList(values.scopes), ttl: values.ttl, ...limitValues(values) });
  if (Object.keys(payload).length === 0) throw usageError("update: nothing to change (give --ttl, --scopes or a limit)");
  const user = await adminRequest<UserView>(stateDir, "PATCH", `/admin/users/${encodeURIComponent(positionals[0]!)}`, payload);
  console.log(`${user.handle}: ${user.status}, scopes ${user.scopes.join(",")}, expires ${user.expires_at}, limits ${formatLimits(user.limits)}`);
  return 0;
}


const formatLimits = (limits: UserView["limits"]) => `${limits.rps} rps (burst ${limits.burst}), ${limits.streams} stream(s), ${limits.daily_tokens} tokens/day`;

export async function list(args: string[]): Promise<number> {
  const { values, stateDir } = parse(args, { json: { type: "boolean" } }, 0);
  const { users } = await adminRequest<{ users: ListedUser[] }>(stateDir, "GET", "/admin/users");
  if (values.json) {
    console.log(JSON.stringify(users, null, 2));
    return 0;
  }
  const table = new Table({ head: ["handle", "status", "token", "scopes", "issued", "expires", "last used", "rps/burst", "streams", "tokens today / day"] });
  for (const user of users) {
    table.push([user.handle, user.status, user.token_hint, user.scopes.join(","), user.issued_at, user.expires_at, user.last_used_at ?? "never", `${user.limits.rps}/${user.limits.burst}`, user.limits.streams, `${user.tokens_today} / ${user.limits.daily_tokens}`]);
  }
  console.log(users.length === 0 ? "no users yet: halo-gate invite <handle>" : table.toString());
  return 0;
}


export async function importBearers(args: string[]): Promise<number> {
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


export async function usage(args: string[]): Promise<number> {
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

export async function audit(args: string[]): Promise<number> {
  const { values, stateDir } = parse(args, { since: { type: "string" } }, 0);
  const since = values.since === undefined ? "" : `?since=${encodeURIComponent(String(values.since))}`;
  if (values.since !== undefined && Number.isNaN(Date.parse(String(values.since)))) throw usageError("--since must be an ISO 8601 time, e.g. 2026-11-01T00:00:00Z");
  process.stdout.write(await adminRequest<string>(stateDir, "GET", `/admin/audit${since}`));
  return 0;
}

