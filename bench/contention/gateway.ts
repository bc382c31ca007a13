/**
 * The contention bench's gateway side: a wrangler.toml copy whose `v2` route points at the slotted
 * upstream (with `max_in_flight` or without), `halo-gate serve` on it, and the invited users. Serve
 * and the admin CLI are started through bench/soak/gateway.ts (bench/lib/processes.ts underneath),
 * so a normal end, an error and Ctrl-C all end them.
 */
import { writeWranglerCopy } from "../../test/support/wrangler-copy.ts";
import { tempDir } from "../lib/processes.ts";
import { cliJson, startServe, type Serve } from "../soak/gateway.ts";

export interface UserPlan {
  handle: string;
  /** Client loops sending back to back. */
  loops: number;
  /** `--streams` for the invite (null: the config's `limits.streams`). */
  streams: number | null;
}

/** `--rps`/`--burst` for every invite (null: the config's `limits`). */
export type RateLimits = { rps: number; burst: number } | null;

/**
 * A wrangler.toml copy: the v2 route at `upstreamPort`, with `max_in_flight` when given. Nothing else
 * changes — `queue_timeout` keeps its default, and the other routes keep their (unused) upstreams.
 */
export function contentionConfig(upstreamPort: number, maxInFlight: number | null): string {
  return writeWranglerCopy(tempDir("halo-gate-contention-config-"), (halo) => {
    let found = false;
    halo.routes = halo.routes.map((route) => {
      if (route.name !== "v2") return route;
      found = true;
      return { ...route, upstream: `http://127.0.0.1:${upstreamPort}`, ...(maxInFlight === null ? {} : { max_in_flight: maxInFlight }) };
    });
    if (!found) throw new Error("wrangler.toml has no v2 route to point at the slotted upstream");
  });
}

/** Serve on a fresh state dir with `config`; rejects (with serve's output in the message) if it exits before listening. */
export async function startGateway(config: string, name: string): Promise<{ serve: Serve; stateDir: string }> {
  const stateDir = tempDir("halo-gate-contention-state-");
  const serve = await startServe(stateDir, config, 0, name);
  return { serve, stateDir };
}

/** Invites every planned user (scope v2; the flooder with its own `--streams`) and returns the bearers. */
export async function inviteUsers(stateDir: string, users: UserPlan[], rates: RateLimits): Promise<Map<string, string>> {
  const tokens = new Map<string, string>();
  for (const user of users) {
    const args = ["invite", user.handle, "--json", "--scopes", "v2"];
    if (rates) args.push("--rps", String(rates.rps), "--burst", String(rates.burst));
    if (user.streams !== null) args.push("--streams", String(user.streams));
    const { token } = await cliJson<{ token: string }>(stateDir, args);
    tokens.set(user.handle, token);
  }
  return tokens;
}
