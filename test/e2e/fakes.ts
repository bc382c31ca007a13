/**
 * Fake `headscale` and `tailscale` executables for PATH: they record every call (argv, one JSON
 * line each) and answer like the real CLIs do with `-o json`.
 */
import { chmodSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { tempDir } from "./harness";

const HEADSCALE = String.raw`#!/usr/bin/env node
const fs = require("fs"), path = require("path");
const dir = __dirname, state = path.join(dir, "state.json");
fs.appendFileSync(path.join(dir, "calls.log"), JSON.stringify(process.argv.slice(2)) + "\n");
const db = fs.existsSync(state) ? JSON.parse(fs.readFileSync(state, "utf8")) : { users: [{ id: 7, name: "someone-else" }], keys: [], nodes: [] };
const save = () => fs.writeFileSync(state, JSON.stringify(db));
const [a, b, ...rest] = process.argv.slice(2);
const flag = (name) => rest[rest.indexOf(name) + 1];
if (a === "version") { console.log("v0.26.0"); }
else if (a === "users" && b === "list") { console.log(JSON.stringify(db.users)); }
else if (a === "users" && b === "create") { db.users.push({ id: db.users.length + 40, name: rest[0] }); save(); console.log("User created"); }
else if (a === "preauthkeys" && b === "create") {
  const user = flag("--user");
  if (!/^\d+$/.test(user)) { console.error("user must be a numeric id"); process.exit(1); }
  const key = "hskey-" + user + "-" + (db.keys.length + 1);
  db.keys.push({ user, key, reusable: rest.includes("--reusable"), expiration: flag("--expiration") }); save();
  console.log(JSON.stringify({ key, reusable: rest.includes("--reusable") }));
}
else if (a === "preauthkeys" && b === "list") { console.log(JSON.stringify(db.keys.filter((k) => k.user === flag("--user")))); }
else if (a === "preauthkeys" && b === "expire") { console.log("Key expired"); }
else if (a === "nodes" && b === "list") { console.log(JSON.stringify([{ id: 3, name: "laptop", user: { name: flag("--user") } }])); }
else if (a === "nodes" && b === "expire") { console.log("Node expired"); }
else { console.error("unknown command"); process.exit(2); }
`;

export interface FakeBin {
  dir: string;
  env: NodeJS.ProcessEnv;
  calls(): string[][];
}

export function fakeHeadscale(): FakeBin {
  const dir = tempDir("halo-gate-headscale-");
  writeFileSync(join(dir, "headscale"), HEADSCALE);
  chmodSync(join(dir, "headscale"), 0o755);
  return {
    dir,
    env: { PATH: `${dir}:${process.env.PATH}` },
    calls: () => {
      const log = join(dir, "calls.log");
      return existsSync(log) ? readFileSync(log, "utf8").trim().split("\n").map((line) => JSON.parse(line) as string[]) : [];
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
