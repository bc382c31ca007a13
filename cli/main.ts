/**
 * `halo-gate <command>`: the operator's one CLI. Exit codes: 0 done, 1 refused or failed (one line
 * on stderr, no stack trace), 2 bad usage. `--state DIR` is accepted anywhere on every command.
 */
import { createRequire } from "node:module";
import { parse } from "./args";
import { audit, importBearers, invite, list, revoke, rotate, update, usage } from "./commands/admin";
import { CliError, usageError } from "./errors";

const USAGE = `usage: halo-gate <command> [--state DIR] [options]    (halo-gate --version)

  serve [--bind ADDR:PORT|tailscale[:PORT]] [--admin-bind ADDR:PORT] [--allow-insecure-exposure] [--cron EXPR] [--config FILE]
        [--tls [--tls-name NAME]... | --tls-cert FILE --tls-key FILE]
  invite <handle> [--scopes v2,lemon,sd,audio] [--ttl 10d] [--rps N] [--burst N] [--streams N] [--daily-tokens N] [--authkey KEY] [--json]
  revoke <handle>
  rotate <handle> [--json]
  update <handle> [--ttl D] [--scopes …] [--rps N] [--burst N] [--streams N] [--daily-tokens N]
  list [--json]
  import-bearers <file> [--scopes …]
  usage [--json]
  audit [--since T]

State dir: --state, else $HALO_GATE_STATE, else ./.halo-gate`;

async function serveCommand(args: string[]): Promise<number> {
  const { values, stateDir } = parse(
    args,
    {
      bind: { type: "string" },
      "admin-bind": { type: "string" },
      "allow-insecure-exposure": { type: "boolean" },
      cron: { type: "string" },
      config: { type: "string" },
      tls: { type: "boolean" },
      "tls-name": { type: "string", multiple: true },
      "tls-cert": { type: "string" },
      "tls-key": { type: "string" },
    },
    0,
  );
  const tlsNames = (values["tls-name"] as unknown as string[] | undefined) ?? [];
  const certFile = values["tls-cert"] as string | undefined;
  const keyFile = values["tls-key"] as string | undefined;
  if ((certFile === undefined) !== (keyFile === undefined)) throw usageError("--tls-cert and --tls-key go together");
  const tlsEnabled = values.tls === true || certFile !== undefined;
  if (!tlsEnabled && tlsNames.length > 0) throw usageError("--tls-name needs --tls");
  if (certFile !== undefined && tlsNames.length > 0) throw usageError("--tls-name names a self-signed certificate's hosts; with --tls-cert the certificate's own names are served");
  // Loaded only for serve: miniflare and esbuild are heavy, and every other command is a quick admin call.
  const { serve } = await import("./commands/serve");
  return serve({
    stateDir,
    bind: (values.bind as string | undefined) ?? "127.0.0.1:8443",
    adminBind: (values["admin-bind"] as string | undefined) ?? "127.0.0.1:8444",
    allowInsecureExposure: values["allow-insecure-exposure"] === true,
    cron: values.cron as string | undefined,
    config: values.config as string | undefined,
    meshWaitMs: Number(process.env.HALO_GATE_MESH_WAIT_MS ?? 60_000),
    graceMs: Number(process.env.HALO_GATE_SHUTDOWN_GRACE_MS ?? 30_000),
    tls: { enabled: tlsEnabled, names: tlsNames, certFile, keyFile },
  });
}

const COMMANDS: Record<string, (args: string[]) => Promise<number>> = {
  serve: serveCommand,
  invite,
  revoke,
  rotate,
  update,
  list,
  "import-bearers": importBearers,
  usage,
  audit,
};

/** `--state DIR` may also come before the command: move it after, where every command parses it. */
function commandFirst(argv: string[]): string[] {
  const leading: string[] = [];
  let index = 0;
  while (index < argv.length && argv[index]!.startsWith("--state")) {
    const takesValue = argv[index] === "--state";
    leading.push(...argv.slice(index, index + (takesValue ? 2 : 1)));
    index += takesValue ? 2 : 1;
  }
  return [...argv.slice(index, index + 1), ...leading, ...argv.slice(index + 1)];
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = commandFirst(argv);
  if (command === "--version" || command === "-v" || command === "version") {
    console.log(`halo-gate ${(createRequire(import.meta.url)("../package.json") as { version: string }).version}`);
    return 0;
  }
  if (command === undefined || command === "help" || command === "--help" || command === "-h") {
    console.log(USAGE);
    return command === undefined ? 2 : 0;
  }
  const run = COMMANDS[command];
  try {
    if (!run) throw usageError(`unknown command "${command}"`);
    if (rest.includes("--help") || rest.includes("-h")) {
      console.log(USAGE);
      return 0;
    }
    return await run(rest);
  } catch (error) {
    if (error instanceof CliError) {
      console.error(`halo-gate: ${error.message}`);
      if (error.exitCode === 2) console.error("run 'halo-gate --help' for usage");
      return error.exitCode;
    }
    console.error(`halo-gate: ${(error as Error).message ?? String(error)}`);
    return 1;
  }
}
