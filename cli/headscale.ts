/**
 * Headscale integration, used only when `headscale` is on PATH: create the user if missing and mint
 * a single-use 24 h pre-auth key on invite; expire the user's keys and nodes on revoke. Recent
 * Headscale versions want the numeric user id for `preauthkeys --user`, so it is looked up first.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";

const run = async (args: string[]) => (await promisify(execFile)("headscale", args, { timeout: 20_000 })).stdout;

export async function headscaleAvailable(): Promise<boolean> {
  try {
    await promisify(execFile)("headscale", ["version"], { timeout: 10_000 });
    return true;
  } catch (error) {
    // Installed but failing is still "present": the caller then reports the real error.
    return (error as NodeJS.ErrnoException).code !== "ENOENT";
  }
}

interface HeadscaleUser {
  id: string | number;
  name: string;
}

async function findUserId(handle: string): Promise<string | undefined> {
  const users = JSON.parse(await run(["users", "list", "-o", "json"])) as HeadscaleUser[] | null;
  const user = (users ?? []).find((candidate) => candidate.name === handle);
  return user === undefined ? undefined : String(user.id);
}

/** A single-use pre-auth key valid for 24 h, creating the Headscale user first if needed. */
export async function mintPreAuthKey(handle: string): Promise<string> {
  let id = await findUserId(handle);
  if (id === undefined) {
    await run(["users", "create", handle]);
    id = await findUserId(handle);
    if (id === undefined) throw new Error(`headscale did not list user ${handle} after creating it`);
  }
  const output = await run(["preauthkeys", "create", "--user", id, "--expiration", "24h", "-o", "json"]);
  const key = (JSON.parse(output) as { key?: string }).key;
  if (!key) throw new Error("headscale printed no key");
  return key;
}

/** Expires every pre-auth key and node of the user; returns what it did. */
export async function expireUserAccess(handle: string): Promise<{ keys: number; nodes: number }> {
  const id = await findUserId(handle);
  if (id === undefined) return { keys: 0, nodes: 0 };
  const keys = (JSON.parse(await run(["preauthkeys", "list", "--user", id, "-o", "json"])) ?? []) as Array<{ key: string }>;
  for (const entry of keys) await run(["preauthkeys", "expire", "--user", id, entry.key]);
  const nodes = (JSON.parse(await run(["nodes", "list", "--user", handle, "-o", "json"])) ?? []) as Array<{ id: string | number }>;
  for (const node of nodes) await run(["nodes", "expire", "--identifier", String(node.id)]);
  return { keys: keys.length, nodes: nodes.length };
}
