/**
 * The state directory holds the operator token (admin access to every user's token) and the TLS
 * key, so doctor checks it exists with owner-only modes, and that its filesystem has room: D1 and
 * the audit log write there, and a full disk turns /healthz unhealthy.
 */
import { constants, existsSync } from "node:fs";
import { access, stat, statfs } from "node:fs/promises";
import { dirname, join } from "node:path";
import { check, octal, reason, type Check } from "./check";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
export const FREE_SPACE = { warnBelow: GiB, failBelow: 100 * MiB } as const;

export async function stateDirCheck(dir: string): Promise<Check> {
  let info;
  try {
    info = await stat(dir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") {
      return check("state-dir", "state dir", "warn", `${dir} does not exist yet`, `halo-gate serve --state ${dir} creates it (mode 0700) on first start`);
    }
    return check("state-dir", "state dir", "fail", `cannot look at ${dir}: ${reason(error)}`, "run doctor as the user serve runs as (e.g. sudo -u halo-gate halo-gate doctor --state …)");
  }
  if (!info.isDirectory()) return check("state-dir", "state dir", "fail", `${dir} is not a directory`, `move it away; serve creates the directory`);
  const mode = octal(info.mode);
  try {
    await access(dir, constants.R_OK | constants.W_OK | constants.X_OK);
  } catch {
    return check("state-dir", "state dir", "fail", `${dir} (mode ${mode}, uid ${info.uid}) is not readable and writable by you`, "run doctor as the user serve runs as (e.g. sudo -u halo-gate halo-gate doctor --state …)", { mode });
  }
  if ((info.mode & 0o077) !== 0) return check("state-dir", "state dir", "fail", `${dir} has mode ${mode}: other users can look inside`, `chmod 700 ${dir}`, { mode });
  return check("state-dir", "state dir", "ok", `${dir}, mode ${mode}`, undefined, { mode });
}

/** The operator token and the TLS key: 0600 each (a missing token only means serve never started here). */
export async function secretsCheck(dir: string): Promise<Check> {
  if (!existsSync(dir)) return check("secrets", "secret files", "skip", "no state dir yet");
  const files = [join(dir, "operator-token"), join(dir, "tls", "key.pem")];
  const problems: string[] = [];
  const fixes: string[] = [];
  const seen: string[] = [];
  for (const file of files) {
    try {
      const info = await stat(file);
      seen.push(`${file.slice(dir.length + 1)} ${octal(info.mode)}`);
      if ((info.mode & 0o077) !== 0) {
        problems.push(`${file} has mode ${octal(info.mode)}`);
        fixes.push(`chmod 600 ${file}`);
      }
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") problems.push(`cannot look at ${file}: ${reason(error)}`);
    }
  }
  if (problems.length > 0) return check("secrets", "secret files", "fail", `${problems.join("; ")}: other users could read it`, fixes.join(" && ") || undefined);
  if (!existsSync(files[0]!)) return check("secrets", "secret files", "warn", "no operator-token yet", `serve creates it (mode 0600) on first start: halo-gate serve --state ${dir}`);
  return check("secrets", "secret files", "ok", seen.join(", "));
}

const nearestExisting = (path: string): string => (existsSync(path) || dirname(path) === path ? path : nearestExisting(dirname(path)));

export const formatBytes = (bytes: number) => (bytes >= GiB ? `${(bytes / GiB).toFixed(1)} GiB` : `${Math.round(bytes / MiB)} MiB`);

export async function freeSpaceCheck(dir: string): Promise<Check> {
  const where = nearestExisting(dir);
  try {
    const info = await statfs(where);
    return spaceCheck(info.bavail * info.bsize, where);
  } catch (error) {
    return check("free-space", "free space", "skip", `cannot read the filesystem of ${where}: ${reason(error)}`);
  }
}

/** The verdict on `free` bytes available to serve on the filesystem of `where`. */
export function spaceCheck(free: number, where: string): Check {
  const detail = `${formatBytes(free)} free for ${where}`;
  const data = { free_bytes: free, path: where };
  if (free < FREE_SPACE.failBelow) return check("free-space", "free space", "fail", `only ${detail} (under 100 MiB: writes start failing, /healthz turns unhealthy)`, "free space on that filesystem, or move the state dir (--state) to a larger one", data);
  if (free < FREE_SPACE.warnBelow) return check("free-space", "free space", "warn", `only ${detail} (under 1 GiB)`, "free space on that filesystem before it fills up", data);
  return check("free-space", "free space", "ok", detail, undefined, data);
}
