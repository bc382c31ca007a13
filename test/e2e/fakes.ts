/**
 * Fake `headscale`, `tailscale` and tailscaled for the end-to-end tests. The executables go first
 * on PATH and record every call (argv, one JSON line each). The fake `headscale` keeps a small
 * database in its directory and speaks one version's CLI as the real one does (from
 * juanfont/headscale cmd/headscale/cli/*.go): 0.26/0.27 list and expire pre-auth keys per user
 * (`--user ID`, `expire --user ID KEY`), 0.28/0.29 list every key (hashed, shown by prefix) and
 * expire by `--id`; the other dialect's flags are refused like cobra refuses them (`Error: unknown
 * flag: --user`, exit 1); `-o json` prints Go's encoding/json of the protobuf structs.
 */
import { chmodSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { createServer, type Server, type ServerResponse } from "node:http";
import { isIP } from "node:net";
import { join } from "node:path";
import { tempDir } from "./harness";

const HEADSCALE = String.raw`#!/usr/bin/env node
"use strict";
const fs = require("fs"), path = require("path"), crypto = require("crypto");
const dir = __dirname;
const argv = process.argv.slice(2);
fs.appendFileSync(path.join(dir, "calls.log"), JSON.stringify(argv) + "\n");
const config = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
const statePath = path.join(dir, "state.json");
const db = JSON.parse(fs.readFileSync(statePath, "utf8"));
const save = () => fs.writeFileSync(statePath, JSON.stringify(db, null, 2));
const minor = Number(config.version.split(".")[1]);
const keysById = minor >= 28;

const fail = (text) => { process.stderr.write(text + "\n"); process.exit(1); };
// cobra: "Error: <reason>", the usage, exit 1.
const usageError = (reason, use) => fail("Error: " + reason + "\nUsage:\n  headscale " + use + " [flags]\n\nRun 'headscale " + use + " --help' for usage.");

const flag = (short, type = "string") => ({ short, type });
const ROOT = { config: flag("c"), output: flag("o"), force: flag(undefined, "bool") };
const COMMANDS = {
  // root.go init() returns early for "version", so only 0.27+'s own -o exists there.
  "version": { root: false, flags: minor >= 27 ? { output: flag("o") } : {} },
  "users create": { flags: { "display-name": flag("d"), email: flag("e"), "picture-url": flag("p") }, minArgs: 1 },
  "users list": { flags: { identifier: flag("i", "int"), name: flag("n"), email: flag("e") } },
  "users destroy": { flags: { identifier: flag("i", "int"), name: flag("n") } },
  "preauthkeys list": keysById ? { flags: {} } : { flags: { user: flag("u", "uint"), namespace: flag("n") }, required: ["user"] },
  "preauthkeys create": {
    flags: { user: flag("u", "uint"), ...(keysById ? {} : { namespace: flag("n") }), reusable: flag(undefined, "bool"), ephemeral: flag(undefined, "bool"), expiration: flag("e"), tags: flag(undefined, "strings") },
    required: keysById ? [] : ["user"],
  },
  "preauthkeys expire": keysById ? { flags: { id: flag("i", "uint") } } : { flags: { user: flag("u", "uint"), namespace: flag("n") }, required: ["user"], minArgs: 1 },
  "preauthkeys delete": keysById ? { flags: { id: flag("i", "uint") } } : { flags: { user: flag("u", "uint") }, required: ["user"], minArgs: 1 },
  "nodes list": { flags: { user: flag("u"), ...(minor <= 28 ? { namespace: flag("n") } : {}), ...(minor <= 27 ? { tags: flag("t", "bool") } : {}) } },
  "nodes expire": { flags: { identifier: flag("i", "uint"), ...(minor >= 28 ? { expiry: flag("e") } : {}), ...(minor >= 29 ? { disable: flag("d", "bool") } : {}) }, required: ["identifier"] },
  "nodes delete": { flags: { identifier: flag("i", "uint") }, required: ["identifier"] },
};

const words = argv.filter((arg) => !arg.startsWith("-"));
const use = words[0] === "version" ? "version" : words.slice(0, 2).join(" ");
const command = COMMANDS[use];
if (!command) fail('Error: unknown command "' + (words[1] ?? words[0] ?? "") + '" for "headscale' + (words[1] ? " " + words[0] : "") + '"');
const flags = { ...(command.root === false ? {} : ROOT), ...command.flags };
const values = {};
const positionals = [];
// Everything but the command words: flags and positional arguments.
const tokens = argv.slice();
for (const word of use.split(" ")) tokens.splice(tokens.indexOf(word), 1);
const setValue = (name, spec, raw) => {
  const label = (spec.short ? "-" + spec.short + ", " : "") + "--" + name;
  if (spec.type === "uint" && !/^\d+$/.test(raw)) usageError('invalid argument "' + raw + '" for "' + label + '" flag: strconv.ParseUint: parsing "' + raw + '": invalid syntax', use);
  if (spec.type === "int" && !/^-?\d+$/.test(raw)) usageError('invalid argument "' + raw + '" for "' + label + '" flag: strconv.ParseInt: parsing "' + raw + '": invalid syntax', use);
  values[name] = spec.type === "strings" ? [...(values[name] ?? []), ...raw.split(",")] : spec.type === "bool" ? raw === "true" : raw;
};
for (let index = 0; index < tokens.length; index++) {
  const token = tokens[index];
  if (token.startsWith("--") && token.length > 2) {
    const [name, inline] = token.slice(2).split(/=(.*)/s);
    const spec = flags[name];
    if (!spec) usageError("unknown flag: --" + name, use);
    const raw = spec.type === "bool" ? (inline ?? "true") : (inline ?? tokens[++index]);
    if (raw === undefined) usageError("flag needs an argument: --" + name, use);
    setValue(name, spec, raw);
  } else if (token.startsWith("-") && token.length > 1) {
    const name = Object.keys(flags).find((candidate) => flags[candidate].short === token[1]);
    if (!name) usageError("unknown shorthand flag: '" + token[1] + "' in " + token, use);
    const spec = flags[name];
    const raw = spec.type === "bool" ? "true" : token.length > 2 ? token.slice(2).replace(/^=/, "") : tokens[++index];
    if (raw === undefined) usageError("flag needs an argument: '" + token[1] + "' in " + token, use);
    setValue(name, spec, raw);
  } else positionals.push(token);
}
if (positionals.length < (command.minArgs ?? 0)) fail("Error: missing parameters");
for (const name of command.required ?? []) if (values[name] === undefined) usageError('required flag(s) "' + name + '" not set', use);

const output = values.output ?? "";
// Go's json.MarshalIndent(…, "", "\t"); a nil slice is null.
const print = (value, human) => { console.log(output === "json" ? JSON.stringify(value, null, "\t") : output === "json-line" ? JSON.stringify(value) : human); process.exit(0); };
// ErrorOutput: {"error": …} with -o json, else the human text; exit 1.
const failWith = (error, human) => fail(output ? JSON.stringify({ error }, null, "\t") : human);
// A server that cannot be reached: 0.26-0.28 print their own wording (ErrorOutput), 0.29 "Error: <doing>: …".
const WORDING = {
  "users list": ["Cannot get users", "listing users"],
  "users create": ["Cannot create user", "creating user"],
  "preauthkeys list": ["Error getting the list of keys", "listing preauthkeys"],
  "preauthkeys create": ["Cannot create Pre Auth Key", "creating preauthkey"],
  "preauthkeys expire": ["Cannot expire Pre Auth Key", "expiring preauthkey"],
  "nodes list": ["Cannot get nodes", "listing nodes"],
  "nodes expire": ["Cannot expire node", "expiring node"],
};
for (const prefix of config.fail ?? []) {
  if (!argv.join(" ").startsWith(prefix)) continue;
  const grpc = "rpc error: code = Unavailable desc = connection refused";
  const [legacy, doing] = WORDING[use] ?? ["Cannot " + use, use];
  if (minor >= 29) fail(values.output ? JSON.stringify({ error: doing + ": " + grpc }, null, "	") : "Error: " + doing + ": " + grpc);
  failWith(grpc, legacy + ": " + grpc);
}

const now = () => Math.floor(Date.now() / 1000);
const stamp = (seconds) => (seconds === undefined || seconds === null ? undefined : { seconds });
const clean = (object) => Object.fromEntries(Object.entries(object).filter(([, value]) => value !== undefined && value !== false && value !== "" && value !== 0 && !(Array.isArray(value) && value.length === 0)));
const userJson = (user) => clean({ id: user.id, name: user.name, created_at: stamp(user.created_at) });
const userById = (id) => db.users.find((user) => user.id === Number(id));
const keyJson = (key, listing) => clean({
  user: key.user_id ? userJson(userById(key.user_id)) : undefined,
  id: key.id,
  key: listing && keysById ? "hskey-auth-" + key.prefix + "-***" : key.key,
  reusable: key.reusable,
  ephemeral: key.ephemeral,
  used: key.used,
  expiration: stamp(key.expiration),
  created_at: stamp(key.created_at),
  acl_tags: key.acl_tags,
});
const nodeJson = (node) => clean({
  id: node.id,
  machine_key: "mkey:" + "a".repeat(64),
  node_key: "nodekey:" + "b".repeat(64),
  disco_key: "discokey:" + "c".repeat(64),
  ip_addresses: ["100.64.0." + node.id, "fd7a:115c:a1e0::" + node.id],
  name: node.name,
  user: userJson(userById(node.user_id)),
  last_seen: stamp(node.created_at),
  expiry: stamp(node.expiry),
  created_at: stamp(node.created_at),
  register_method: 1,
  given_name: node.name,
  online: node.expiry === undefined || node.expiry === null || node.expiry > now(),
});
const list = (items) => (items.length === 0 ? null : items);

switch (use) {
  case "version": {
    const version = "v" + config.version;
    if (minor <= 26) print(undefined, config.version); // goreleaser's {{ .Version }}: no "v"
    const info = { version, commit: "0123456789abcdef0123456789abcdef01234567", buildTime: "2026-02-01T10:00:00Z", go: { version: "go1.25.5", os: "linux", arch: "amd64" }, dirty: false };
    print(info, "headscale version " + version + "\ncommit: " + info.commit + "\nbuild time: " + info.buildTime + "\nbuilt with: go1.25.5 linux/amd64\n");
    break;
  }
  case "users list": {
    const users = db.users.filter((user) => (values.identifier > 0 ? user.id === Number(values.identifier) : values.name ? user.name === values.name : true));
    print(list(users.map(userJson)), users.map((user) => user.id + " " + user.name).join("\n"));
    break;
  }
  case "users create": {
    if (db.users.some((user) => user.name === positionals[0])) failWith("constraint failed: UNIQUE constraint failed: users.name", "Cannot create user: constraint failed: UNIQUE constraint failed: users.name");
    const user = { id: db.next.user++, name: positionals[0], created_at: now() };
    db.users.push(user);
    save();
    print(userJson(user), "User created");
    break;
  }
  case "preauthkeys create": {
    const userId = Number(values.user ?? 0);
    if (userId !== 0 && !userById(userId)) failWith("record not found", "Cannot create Pre Auth Key: record not found\n");
    if (userId === 0 && !values.tags) failWith("user or tags required", "Cannot create Pre Auth Key: user or tags required\n");
    const match = /^(\d+)([smhdwy])$/.exec(values.expiration ?? "1h");
    if (!match) failWith("not a valid duration string", "Could not parse duration: not a valid duration string\n");
    const unit = { s: 1, m: 60, h: 3600, d: 86400, w: 604800, y: 31536000 }[match[2]];
    const prefix = crypto.randomBytes(9).toString("base64url");
    const secret = crypto.randomBytes(48).toString("base64url");
    const key = {
      id: db.next.key++, user_id: userId || undefined,
      key: keysById ? "hskey-auth-" + prefix + "-" + secret : crypto.randomBytes(24).toString("hex"),
      prefix: keysById ? prefix : undefined,
      reusable: values.reusable === true, ephemeral: values.ephemeral === true, used: false,
      expiration: now() + Number(match[1]) * unit, created_at: now(), acl_tags: values.tags ?? [],
    };
    db.keys.push(key);
    save();
    print(keyJson(key, false), key.key);
    break;
  }
  case "preauthkeys list": {
    if (!keysById && !userById(values.user)) failWith("record not found", "Error getting the list of keys: rpc error: code = Unknown desc = record not found");
    const keys = db.keys.filter((key) => keysById || key.user_id === Number(values.user));
    print(list(keys.map((key) => keyJson(key, true))), keys.map((key) => key.id + " " + keyJson(key, true).key).join("\n"));
    break;
  }
  case "preauthkeys expire": {
    let key;
    if (keysById) {
      if (!values.id || Number(values.id) === 0) failWith("missing parameters", "Error: missing --id parameter");
      key = db.keys.find((candidate) => candidate.id === Number(values.id));
      if (!key) failWith("record not found", "Cannot expire Pre Auth Key: record not found\n");
    } else {
      key = db.keys.find((candidate) => candidate.key === positionals[0]);
      if (!key) failWith("AuthKey not found", "Cannot expire Pre Auth Key: AuthKey not found\n");
      if (key.user_id !== Number(values.user)) failWith("preauth key does not belong to user", "Cannot expire Pre Auth Key: preauth key does not belong to user\n");
    }
    key.expiration = now();
    save();
    print({}, "Key expired");
    break;
  }
  case "nodes list": {
    let nodes = db.nodes;
    if (values.user) {
      const user = db.users.find((candidate) => candidate.name === values.user);
      if (!user) failWith("record not found", "Cannot get nodes: record not found");
      nodes = nodes.filter((node) => node.user_id === user.id);
    }
    print(list(nodes.map(nodeJson)), nodes.map((node) => node.id + " " + node.name).join("\n"));
    break;
  }
  case "nodes expire": {
    const node = db.nodes.find((candidate) => candidate.id === Number(values.identifier));
    if (!node) failWith("node not found", "Cannot expire node: node not found\n");
    node.expiry = now();
    save();
    print(nodeJson(node), "Node expired");
    break;
  }
  default:
    fail("fake headscale: " + use + " is not modelled");
}
`;

export interface FakeBin {
  dir: string;
  env: NodeJS.ProcessEnv;
  calls(): string[][];
}

export interface FakeHeadscaleOptions {
  /** `0.26.0`, `0.27.1`, `0.28.0`, `0.29.2`, or an unsupported one like `0.25.1`. */
  version?: string;
  /** Calls whose argv (joined by spaces) starts with one of these fail like an unreachable server. */
  fail?: string[];
}

interface FakeDatabase {
  users: Array<{ id: number; name: string; created_at: number }>;
  keys: Array<{ id: number; user_id?: number; key: string; used: boolean; reusable: boolean; expiration: number }>;
  nodes: Array<{ id: number; user_id: number; name: string; created_at: number; expiry?: number }>;
  next: { user: number; key: number; node: number };
}

export interface FakeHeadscale extends FakeBin {
  version: string;
  /** As if `tailscale up --authkey <the user's newest key>` ran on a device: uses the key, adds a node. */
  join(handle: string, name?: string): { id: number };
  database(): FakeDatabase;
  /** Change what the next calls fail on. */
  failOn(prefixes: string[]): void;
}

const readCalls = (dir: string) => {
  const log = join(dir, "calls.log");
  return existsSync(log) ? readFileSync(log, "utf8").trim().split("\n").filter(Boolean).map((line) => JSON.parse(line) as string[]) : [];
};

/** A fake `headscale` of one version (default 0.28.0, Headscale as it is today); one other user with one device exists. */
export function fakeHeadscale(options: FakeHeadscaleOptions = {}): FakeHeadscale {
  const dir = tempDir("halo-gate-headscale-");
  const version = options.version ?? "0.28.0";
  const config = { version, fail: options.fail ?? [] };
  const seconds = Math.floor(Date.now() / 1000);
  const seed: FakeDatabase = {
    users: [{ id: 1, name: "someone-else", created_at: seconds - 86_400 }],
    keys: [],
    nodes: [{ id: 1, user_id: 1, name: "someone-elses-phone", created_at: seconds - 86_400 }],
    next: { user: 2, key: 1, node: 2 },
  };
  writeFileSync(join(dir, "config.json"), JSON.stringify(config));
  writeFileSync(join(dir, "state.json"), JSON.stringify(seed));
  writeFileSync(join(dir, "headscale"), HEADSCALE);
  chmodSync(join(dir, "headscale"), 0o755);
  const database = () => JSON.parse(readFileSync(join(dir, "state.json"), "utf8")) as FakeDatabase;
  return {
    dir,
    version,
    env: { PATH: `${dir}:${process.env.PATH}` },
    calls: () => readCalls(dir),
    database,
    failOn(prefixes) {
      writeFileSync(join(dir, "config.json"), JSON.stringify({ ...config, fail: prefixes }));
    },
    join(handle, name = `${handle}-laptop`) {
      const db = database();
      const user = db.users.find((candidate) => candidate.name === handle);
      if (!user) throw new Error(`fake headscale: no user ${handle}`);
      const key = db.keys.filter((candidate) => candidate.user_id === user.id && !candidate.used && candidate.expiration > Date.now() / 1000).at(-1);
      if (!key) throw new Error(`fake headscale: ${handle} has no usable pre-auth key`);
      if (!key.reusable) key.used = true;
      const node = { id: db.next.node++, user_id: user.id, name, created_at: Math.floor(Date.now() / 1000) };
      db.nodes.push(node);
      writeFileSync(join(dir, "state.json"), JSON.stringify(db, null, 2));
      return { id: node.id };
    },
  };
}

/** `tailscale ip -4` printing `address`, or failing when address is undefined. */
export function fakeTailscale(address: string | undefined): FakeBin {
  const dir = tempDir("halo-gate-tailscale-");
  const script = address
    ? `#!/bin/sh\necho "$@" >> "${dir}/calls.log"\n[ "$1 $2" = "ip -4" ] && echo ${address} && exit 0\nexit 1\n`
    : `#!/bin/sh\necho "$@" >> "${dir}/calls.log"\necho "failed to connect to local tailscaled" >&2\nexit 1\n`;
  writeFileSync(join(dir, "tailscale"), script);
  chmodSync(join(dir, "tailscale"), 0o755);
  return {
    dir,
    env: { PATH: `${dir}:${process.env.PATH}` },
    calls: () => (existsSync(join(dir, "calls.log")) ? readFileSync(join(dir, "calls.log"), "utf8").trim().split("\n").map((line) => line.split(" ")) : []),
  };
}

/** A device in the fake tailscaled's whois table: a user's node, or a tagged node (no user). */
export type FakeNode = { node: string; user: { id: number; login: string } } | { node: string; tags: string[] };

/** Headscale's pseudo-user of tagged nodes (hscontrol/types: TaggedDevices), as whois reports it. */
const TAGGED_DEVICES = { ID: 2147455555, LoginName: "tagged-devices", DisplayName: "Tagged Devices" };

/** tailscaled's whois reply (apitype.WhoIsResponse: tailcfg.Node, tailcfg.UserProfile, CapMap), Go's JSON of it. */
function whoisReply(address: string, entry: FakeNode, index: number): Record<string, unknown> {
  const tagged = "tags" in entry;
  const user = tagged ? TAGGED_DEVICES : { ID: entry.user.id, LoginName: entry.user.login, DisplayName: entry.user.login, ProfilePicURL: "" };
  return {
    Node: {
      ID: 100 + index,
      StableID: `n${100 + index}CNTRL`,
      Name: `${entry.node}.mesh.example.`,
      User: user.ID,
      ...(tagged ? { Tags: entry.tags } : {}),
      Key: `nodekey:${"d".repeat(64)}`,
      KeyExpiry: "0001-01-01T00:00:00Z",
      Machine: `mkey:${"e".repeat(64)}`,
      DiscoKey: `discokey:${"f".repeat(64)}`,
      Addresses: [`${address}/32`],
      AllowedIPs: [`${address}/32`],
      Hostinfo: { OS: "linux", Hostname: entry.node },
      Created: "2026-01-01T00:00:00Z",
      Cap: 106,
      Online: true,
      ComputedName: entry.node,
      ComputedNameWithHost: entry.node,
    },
    UserProfile: user,
    CapMap: {},
  };
}

export interface FakeTailscaled {
  socket: string;
  /** The Host header of every call. */
  hosts: string[];
  /** The `addr` of every whois call, in order. */
  whoisCalls: string[];
  /** Take the daemon away (the socket disappears, as when tailscaled stops) or bring it back. */
  down(): Promise<void>;
  /** Answer whois only after this long (0: at once). */
  slow(ms: number): void;
  /** The `addr` of every whois call not answered yet (nor abandoned by the caller). */
  pendingWhois: Set<string>;
  /** The `addr` of every whois call answered, in the order the answers were sent. */
  answeredWhois: string[];
  up(): Promise<void>;
  close(): Promise<void>;
}

/**
 * A tailscaled LocalAPI on a unix socket, as tailscaled's ipn/localapi answers: GET
 * /localapi/v0/status with `status`; GET /localapi/v0/whois?addr=IP[:PORT] from `whois` (keyed by
 * IP; 404 "no match for IP:port" for any other address, 400 for a missing or invalid addr). Any
 * other Host than `local-tailscaled.sock` is refused as tailscaled refuses it.
 */
export async function fakeTailscaled(status: Record<string, unknown>, whois: Record<string, FakeNode> = {}): Promise<FakeTailscaled> {
  const socket = join(tempDir("halo-gate-tailscaled-"), "tailscaled.sock");
  const hosts: string[] = [];
  const whoisCalls: string[] = [];
  let delayMs = 0;
  const pendingWhois = new Set<string>();
  const answeredWhois: string[] = [];
  const plain = (response: ServerResponse, code: number, text: string) => response.writeHead(code, { "content-type": "text/plain; charset=utf-8", "x-content-type-options": "nosniff" }).end(`${text}\n`);
  const server: Server = createServer((request, response) => {
    hosts.push(request.headers.host ?? "");
    if (request.headers.host !== "local-tailscaled.sock") {
      response.writeHead(403).end("invalid localapi Host header\n");
      return;
    }
    const url = new URL(request.url ?? "/", "http://local-tailscaled.sock");
    if (request.method === "GET" && url.pathname === "/localapi/v0/status") {
      response.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(status));
      return;
    }
    if (url.pathname === "/localapi/v0/whois") {
      const addr = url.searchParams.get("addr") ?? "";
      whoisCalls.push(addr);
      if (!addr) return plain(response, 400, "missing 'addr' parameter");
      // netip.ParseAddr, else netip.ParseAddrPort ("1.2.3.4:5", "[::1]:5").
      const match = isIP(addr) ? [addr, addr] : /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):([0-9]{1,5})$/.exec(addr);
      const ip = match ? (match[1] ?? match[2]) : undefined;
      if (!ip || !isIP(ip)) return plain(response, 400, "invalid 'addr' parameter");
      const entry = whois[ip];
      pendingWhois.add(addr);
      response.once("finish", () => answeredWhois.push(addr));
      response.once("close", () => pendingWhois.delete(addr));
      setTimeout(() => {
        if (!entry) return plain(response, 404, "no match for IP:port");
        response.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(whoisReply(ip, entry, Object.keys(whois).indexOf(ip)), null, "\t"));
      }, delayMs);
      return;
    }
    plain(response, 404, "404 not found");
  });
  const listen = () => new Promise<void>((resolve) => server.listen(socket, resolve));
  const stop = () =>
    new Promise<void>((resolve) => {
      if (!server.listening) return resolve();
      server.close(() => resolve());
      server.closeAllConnections();
    });
  await listen();
  return { socket, hosts, whoisCalls, down: stop, up: listen, close: stop, slow: (ms) => void (delayMs = ms), pendingWhois, answeredWhois };
}
