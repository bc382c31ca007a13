/**
 * Headscale integration, used only when `headscale` is on PATH: `invite` creates the user if
 * missing and mints an untagged, single-use (not reusable, not ephemeral) 24 h pre-auth key;
 * `revoke` expires every pre-auth key and every node of the user. Headscale changed its CLI under
 * us (0.28 removed `preauthkeys list --user` and `preauthkeys expire --user ID KEY`), and a revoke
 * that silently fails leaves the revoked user on the mesh, so the version is detected first and
 * each supported version is spoken exactly; anything else is refused naming the supported range.
 *
 * The contract, from juanfont/headscale cmd/headscale/cli/*.go at v0.26.0, v0.27.0, v0.28.0, v0.29.2
 * (`-o json` is Go's encoding/json of the protobuf structs: snake_case fields, numeric ids,
 * timestamps as {seconds, nanos}, false/empty fields omitted, an empty list is `null`):
 *   every version  `version`                      0.26: the bare version (`-o` is refused there);
 *                                                 0.27+: "headscale version vX.Y.Z" and build lines
 *                  `users list -o json`           [{id, name, …}]
 *                  `users create NAME`
 *                  `preauthkeys create --user ID --expiration 24h -o json`   {id, key, …} (--user: numeric id)
 *                  `nodes list --user NAME -o json`                          [{id, expiry?, …}] (--user: the name)
 *                  `nodes expire --identifier ID`
 *   0.26, 0.27     `preauthkeys list --user ID -o json` (keys in clear), `preauthkeys expire --user ID KEY`
 *   0.28, 0.29     `preauthkeys list -o json` (every user's keys, `user.id` says whose; keys hashed,
 *                  listed as a prefix), `preauthkeys expire --id KEY_ID`
 *
 * Nodes are expired, not deleted: `nodes expire` logs the device out at once on every version and
 * needs no confirmation (`nodes delete` prompts unless --force), while the node record stays
 * visible as expired in `headscale nodes list` for the audit and, should the user be invited
 * again, re-registers as the same device instead of a new name and address.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";

export const SUPPORTED_HEADSCALE = "0.26 to 0.29";
const SUPPORTED_MINORS = { min: 26, max: 29 } as const;

export interface HeadscaleOptions {
  /** Environment for the `headscale` child (PATH decides which binary); defaults to this process's. */
  env?: NodeJS.ProcessEnv;
}

export interface HeadscaleVersion {
  /** What `headscale version` printed, first line, trimmed. */
  text: string;
  /** `0.28.0` (pre-release suffix dropped), or undefined when no version could be read (a dev build). */
  version: string | undefined;
  supported: boolean;
  /** 0.28+: pre-auth keys listed for every user and expired by key id. */
  keysById: boolean;
}

/**
 * A failed step. `reason` is what went wrong, `happened` what was done all the same, `manual` the
 * headscale commands still to run by hand; `message` says all three on one line.
 */
export class HeadscaleError extends Error {
  constructor(
    readonly reason: string,
    readonly manual: string[] = [],
    readonly done: { keys: number; nodes: number } = { keys: 0, nodes: 0 },
    readonly happened?: string,
  ) {
    const left = manual.length > 0 ? `; left to do by hand on the Headscale host: ${manual.join(" ; ")}` : "";
    super(`${reason}${happened === undefined ? "" : ` (${happened})`}${left}`);
    this.name = "HeadscaleError";
  }
}

type Run = (args: string[]) => Promise<string>;

/** Shell-quoted, except a `<PLACEHOLDER>` the operator replaces. */
const quote = (word: string) => (/^[\w@%+=:,./-]+$/.test(word) || /^<[A-Z_]+>$/.test(word) ? word : `'${word.replace(/'/g, "'\\''")}'`);
/** The command line an operator would type, e.g. `headscale nodes expire --identifier 3`. */
export const commandLine = (args: string[]) => ["headscale", ...args].map(quote).join(" ");

function runner(options: HeadscaleOptions): Run {
  return async (args) => {
    try {
      return (await promisify(execFile)("headscale", args, { timeout: 20_000, env: options.env ?? process.env })).stdout;
    } catch (error) {
      throw new HeadscaleError(`\`${commandLine(args)}\` failed: ${failureReason(error)}`);
    }
  };
}

/** The first useful line of a failed child: Headscale's own `{"error": …}` or text on stderr, else the exit. */
function failureReason(error: unknown): string {
  const failure = error as NodeJS.ErrnoException & { stderr?: string; killed?: boolean; code?: string | number };
  if (failure.code === "ENOENT") return "headscale is not on PATH";
  if (failure.killed) return "timed out after 20 s";
  const stderr = (failure.stderr ?? "").trim();
  try {
    const parsed = JSON.parse(stderr) as { error?: unknown };
    if (typeof parsed.error === "string") return parsed.error;
  } catch {
    // not JSON: use the text
  }
  const line = stderr.split("\n").find((text) => text.trim() !== "")?.trim();
  return line ?? `exit ${String(failure.code ?? "?")}`;
}

/** `0.26.0`, `v0.28.0`, `headscale version v0.29.0-beta.1`, or the JSON of `version -o json`. */
export function parseHeadscaleVersion(output: string): { major: number; minor: number; patch: number } | undefined {
  let text = output.trim().split("\n")[0] ?? ""; // the build lines after it name Go's version
  try {
    const parsed = JSON.parse(output) as { version?: unknown };
    if (typeof parsed.version === "string") text = parsed.version;
  } catch {
    // plain text
  }
  const match = /(?:^|[\s"v])v?(\d+)\.(\d+)\.(\d+)/.exec(text);
  if (!match) return undefined;
  return { major: Number(match[1]), minor: Number(match[2]), patch: Number(match[3]) };
}

const probes = new Map<string, Promise<HeadscaleVersion | undefined>>();

/**
 * The installed Headscale, or undefined when `headscale` is not on PATH; throws when it runs but
 * fails. Asked once per PATH in a process (a CLI run is short; invite and revoke both need it).
 */
export function headscaleVersion(options: HeadscaleOptions = {}): Promise<HeadscaleVersion | undefined> {
  const path = (options.env ?? process.env).PATH ?? "";
  let probe = probes.get(path);
  if (probe === undefined) {
    probe = probeVersion(options);
    probes.set(path, probe);
  }
  return probe;
}

async function probeVersion(options: HeadscaleOptions): Promise<HeadscaleVersion | undefined> {
  let output: string;
  try {
    // Plain `version`: 0.26 refuses `-o json` on it (its root init skips the persistent flags for `version`).
    output = (await promisify(execFile)("headscale", ["version"], { timeout: 10_000, env: options.env ?? process.env })).stdout;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new HeadscaleError(`\`headscale version\` failed: ${failureReason(error)}`);
  }
  const parsed = parseHeadscaleVersion(output);
  const text = output.trim().split("\n")[0]?.trim() ?? "";
  if (!parsed) return { text, version: undefined, supported: false, keysById: false };
  const supported = parsed.major === 0 && parsed.minor >= SUPPORTED_MINORS.min && parsed.minor <= SUPPORTED_MINORS.max;
  return { text, version: `${parsed.major}.${parsed.minor}.${parsed.patch}`, supported, keysById: parsed.major > 0 || parsed.minor >= 28 };
}

/** True when `headscale` is installed, whatever its version (the caller then reports what is wrong). */
export async function headscaleAvailable(options: HeadscaleOptions = {}): Promise<boolean> {
  try {
    return (await headscaleVersion(options)) !== undefined;
  } catch {
    return true; // installed but failing: mintPreAuthKey/expireUserAccess report the real error
  }
}

/** By hand: expire `handle`'s nodes (the same commands on every supported version). */
const manualNodeSteps = (handle: string) =>
  `${commandLine(["nodes", "list", "--user", handle])}    (then for each node: ${commandLine(["nodes", "expire", "--identifier", "<NODE_ID>"])})`;

/** By hand: expire the pre-auth keys of the user with numeric id `id`, in this version's dialect. */
const manualKeySteps = (keysById: boolean, handle: string, id = "<USER_ID>") =>
  keysById
    ? `${commandLine(["preauthkeys", "list"])}    (then for each key of ${handle}: ${commandLine(["preauthkeys", "expire", "--id", "<KEY_ID>"])})`
    : `${commandLine(["preauthkeys", "list", "--user", id])}    (then for each key: ${commandLine(["preauthkeys", "expire", "--user", id, "<KEY>"])})`;

/** What to run by hand for `handle` when halo-gate cannot; without a known version, both key dialects. */
export function manualRevokeSteps(handle: string, version?: HeadscaleVersion): string[] {
  if (version?.supported === true) return [manualNodeSteps(handle), manualKeySteps(version.keysById, handle)];
  return [
    manualNodeSteps(handle),
    `Headscale 0.28+: ${manualKeySteps(true, handle)}`,
    `Headscale 0.26/0.27: ${manualKeySteps(false, handle)}    (<USER_ID>: ${handle}'s id in ${commandLine(["users", "list"])})`,
  ];
}

const unsupported = (version: HeadscaleVersion) =>
  `headscale ${version.version ?? `"${version.text}"`} is not supported: halo-gate speaks Headscale ${SUPPORTED_HEADSCALE}`;

async function supportedVersion(options: HeadscaleOptions, manual: () => string[]): Promise<HeadscaleVersion> {
  let version: HeadscaleVersion | undefined;
  try {
    version = await headscaleVersion(options);
  } catch (error) {
    throw new HeadscaleError((error as Error).message, manual());
  }
  if (version === undefined) throw new HeadscaleError("headscale is not on PATH", manual());
  if (!version.supported) throw new HeadscaleError(unsupported(version), manual());
  return version;
}

/** Parsed `-o json` output: Go prints `null` for an empty list. */
const jsonList = <T>(output: string): T[] => (JSON.parse(output) as T[] | null) ?? [];

interface User {
  id: number | string;
  name: string;
}
interface Timestamp {
  seconds?: number | string;
}
interface PreAuthKey {
  id?: number | string;
  key?: string;
  user?: User;
  expiration?: Timestamp;
}
interface Node {
  id: number | string;
  expiry?: Timestamp;
}

const seconds = (stamp: Timestamp | undefined) => (stamp?.seconds === undefined ? undefined : Number(stamp.seconds));
/** Headscale's PreAuthKey validity: expired once its expiration has passed. */
const keyExpired = (key: PreAuthKey, now: number) => {
  const at = seconds(key.expiration);
  return at !== undefined && at * 1000 <= now;
};
/** Headscale's Node.IsExpired: no expiry, or Go's zero time (seconds < 0), never expires. */
const nodeExpired = (node: Node, now: number) => {
  const at = seconds(node.expiry);
  return at !== undefined && at > 0 && at * 1000 <= now;
};

async function findUserId(run: Run, handle: string): Promise<string | undefined> {
  const user = jsonList<User>(await run(["users", "list", "-o", "json"])).find((candidate) => candidate.name === handle);
  return user === undefined ? undefined : String(user.id);
}

/** A single-use, untagged pre-auth key valid for 24 h, creating the Headscale user first if needed. */
export async function mintPreAuthKey(handle: string, options: HeadscaleOptions = {}): Promise<string> {
  return (await mintPreAuthKeyFor(handle, options)).key;
}

/**
 * The numeric id of the Headscale user named `name` (what tailscaled's whois reports as
 * UserProfile.ID on a Headscale mesh, issue 10), or undefined when there is no such user. Throws a
 * HeadscaleError when headscale is missing, unsupported or fails.
 */
export async function headscaleUserId(name: string, options: HeadscaleOptions = {}): Promise<string | undefined> {
  await supportedVersion(options, () => [commandLine(["users", "list"])]);
  return findUserId(runner(options), name);
}

/**
 * `mintPreAuthKey`, also saying which Headscale user id the key (and so the user's devices) belongs
 * to. With `userId` (an owner named by hand, `invite --mesh-user`) the key is that user's instead.
 */
export async function mintPreAuthKeyFor(handle: string, options: HeadscaleOptions = {}, userId?: string): Promise<{ key: string; userId: string }> {
  const mintByHand = () =>
    userId === undefined
      ? [commandLine(["users", "create", handle]), commandLine(["preauthkeys", "create", "--user", "<USER_ID>", "--expiration", "24h"])]
      : [commandLine(["preauthkeys", "create", "--user", userId, "--expiration", "24h"])];
  await supportedVersion(options, mintByHand);
  const run = runner(options);
  let id = userId ?? (await findUserId(run, handle));
  if (id === undefined) {
    await run(["users", "create", handle]);
    id = await findUserId(run, handle);
    if (id === undefined) throw new HeadscaleError(`headscale did not list user ${handle} after creating it`);
  }
  // No --reusable, --ephemeral or --tags: single-use, a lasting node, owned by the user.
  const output = await run(["preauthkeys", "create", "--user", id, "--expiration", "24h", "-o", "json"]);
  const key = (JSON.parse(output) as PreAuthKey).key;
  if (!key) throw new HeadscaleError("headscale printed no key");
  return { key, userId: id };
}

/** The same failure saying what happened (its message is one line: a caller may print only the first). */
const oneLine = (error: HeadscaleError, happened: string) => new HeadscaleError(error.reason, error.manual, error.done, happened);

/**
 * Expires every unexpired pre-auth key and node of the user; returns the counts and the version.
 * Each step is tried even when an earlier one failed; then a HeadscaleError carries, on its first
 * line, what was done, what failed and the exact commands still to run by hand (`manual`).
 */
export async function expireUserAccess(handle: string, options: HeadscaleOptions = {}): Promise<{ keys: number; nodes: number; version: string }> {
  let version: HeadscaleVersion;
  try {
    version = await supportedVersion(options, () => manualRevokeSteps(handle));
  } catch (error) {
    throw oneLine(error as HeadscaleError, "nothing was changed on the mesh");
  }
  const run = runner(options);
  const now = Date.now();
  const done = { keys: 0, nodes: 0 };
  const problems: string[] = [];
  const manual: string[] = [];
  const attempt = async (args: string[], counter: "keys" | "nodes") => {
    try {
      await run(args);
      done[counter]++;
    } catch (error) {
      problems.push((error as Error).message);
      manual.push(commandLine(args));
    }
  };

  let id: string | undefined;
  try {
    id = await findUserId(run, handle);
  } catch (error) {
    throw oneLine(new HeadscaleError((error as Error).message, manualRevokeSteps(handle, version)), "nothing was changed on the mesh");
  }
  if (id === undefined) return { ...done, version: version.version! }; // never joined the mesh

  let keys: PreAuthKey[] | undefined;
  try {
    keys = version.keysById
      ? jsonList<PreAuthKey>(await run(["preauthkeys", "list", "-o", "json"])).filter((key) => key.user !== undefined && String(key.user.id) === id)
      : jsonList<PreAuthKey>(await run(["preauthkeys", "list", "--user", id, "-o", "json"]));
  } catch (error) {
    problems.push((error as Error).message);
    manual.push(manualKeySteps(version.keysById, handle, id));
  }
  for (const key of (keys ?? []).filter((candidate) => !keyExpired(candidate, now))) {
    await attempt(version.keysById ? ["preauthkeys", "expire", "--id", String(key.id)] : ["preauthkeys", "expire", "--user", id, String(key.key)], "keys");
  }

  let nodes: Node[] | undefined;
  try {
    nodes = jsonList<Node>(await run(["nodes", "list", "--user", handle, "-o", "json"]));
  } catch (error) {
    problems.push((error as Error).message);
    manual.push(manualNodeSteps(handle));
  }
  for (const node of (nodes ?? []).filter((candidate) => !nodeExpired(candidate, now))) {
    await attempt(["nodes", "expire", "--identifier", String(node.id)], "nodes");
  }

  if (problems.length > 0) {
    throw oneLine(new HeadscaleError(problems.join("; "), manual, done), `expired ${done.keys} pre-auth key(s) and ${done.nodes} node(s) first`);
  }
  return { ...done, version: version.version! };
}

export interface MeshRevokeOutcome {
  exitCode: 0 | 1;
  stdout: string[];
  stderr: string[];
}

/**
 * The whole mesh half of `revoke`, worded for the operator, after the token is revoked: with
 * Headscale here, expire the user's keys and nodes; without it, say the devices stay on the mesh
 * and how to remove them (exit 0: Headscale may well run on another host); on any failure, exit 1
 * with the commands left to run by hand.
 */
export async function revokeMeshAccess(handle: string, options: HeadscaleOptions = {}): Promise<MeshRevokeOutcome> {
  let absent = false;
  try {
    absent = (await headscaleVersion(options)) === undefined;
  } catch {
    // installed but failing: expireUserAccess reports it with the steps left
  }
  if (absent) {
    return {
      exitCode: 0,
      stdout: [
        `headscale is not on PATH here, so ${handle}'s devices stay on the mesh. To remove them, on the Headscale host run:`,
        ...manualRevokeSteps(handle).map((step) => `  ${step}`),
      ],
      stderr: [],
    };
  }
  try {
    const expired = await expireUserAccess(handle, options);
    return { exitCode: 0, stdout: [`headscale: expired ${expired.keys} pre-auth key(s) and ${expired.nodes} node(s) of ${handle} (Headscale ${expired.version})`], stderr: [] };
  } catch (error) {
    const failure = error instanceof HeadscaleError ? error : new HeadscaleError((error as Error).message);
    return {
      exitCode: 1,
      stdout: failure.done.keys + failure.done.nodes > 0 ? [`headscale: expired ${failure.done.keys} pre-auth key(s) and ${failure.done.nodes} node(s) of ${handle}`] : [],
      stderr: [
        `halo-gate: token revoked, but removing ${handle} from the mesh failed: ${failure.reason}${failure.happened === undefined ? "" : ` (${failure.happened})`}`,
        ...(failure.manual.length > 0 ? ["Left to do by hand on the Headscale host:", ...failure.manual.map((step) => `  ${step}`)] : []),
      ],
    };
  }
}
