/**
 * workerd outlives a `kill -9`'d serve (miniflare closes its stdin after sending the config), still
 * holding the admin port and the D1 files. serve records its workerd's pid; the next serve on the
 * same state dir ends that orphan before starting. (Under systemd, KillMode=control-group does this
 * too; this covers a manual restart.) Linux /proc only; elsewhere it does nothing.
 */
import { readdirSync, readFileSync } from "node:fs";

/** Pids of this process's direct children running `name`. */
export function childPids(name: string, parent = process.pid): number[] {
  let entries: string[];
  try {
    entries = readdirSync("/proc").filter((entry) => /^\d+$/.test(entry));
  } catch {
    return [];
  }
  return entries.flatMap((entry) => {
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      // "pid (comm) state ppid …": comm may contain spaces, so split after the last ")".
      const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      return comm === name && ppid === parent ? [Number(entry)] : [];
    } catch {
      return [];
    }
  });
}

/** Ends a recorded workerd whose serve is gone, if it is still a workerd. */
export async function reapOrphan(pid: number | undefined): Promise<boolean> {
  if (!pid) return false;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    if (!stat.includes("(workerd)")) return false;
    process.kill(pid, "SIGKILL");
  } catch {
    return false;
  }
  for (let attempt = 0; attempt < 50; attempt++) {
    try {
      process.kill(pid, 0);
    } catch {
      return true;
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return true;
}
