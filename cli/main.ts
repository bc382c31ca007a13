/**
 * `halo-gate <command>`: the operator's one CLI. Exit codes: 0 done, 1 refused or failed (one line
 * on stderr, no stack trace), 2 bad usage. `--state DIR` is accepted anywhere on every command.
 * The commands, their arguments and flags are declared once, in cli/commands.ts; this file gives
 * each one its runner.
 */
import { createRequire } from "node:module";
import { commandHelp, isHelpFlag, overviewHelp, parseCommand, type CommandSpec } from "./args";
import { audit, importBearers, invite, list, revoke, rotate, update, usage } from "./commands/admin";
import { COMMANDS, type CommandName, type Input } from "./commands";
import { CliError, usageError } from "./errors";
import { print, printError } from "./output";

async function serveCommand({ flags, stateDir }: Input<"serve">): Promise<number> {
  const tlsNames = flags["tls-name"] ?? [];
  const certFile = flags["tls-cert"];
  const keyFile = flags["tls-key"];
  if ((certFile === undefined) !== (keyFile === undefined)) throw usageError("serve: --tls-cert and --tls-key go together");
  const tlsEnabled = flags.tls || certFile !== undefined;
  if (!tlsEnabled && tlsNames.length > 0) throw usageError("serve: --tls-name needs --tls");
  if (certFile !== undefined && tlsNames.length > 0) throw usageError("serve: --tls-name names a self-signed certificate's hosts; with --tls-cert the certificate's own names are served");
  // Loaded only for serve: miniflare and esbuild are heavy, and every other command is a quick admin call.
  const { serve } = await import("./commands/serve");
  return serve({
    stateDir,
    bind: flags.bind,
    adminBind: flags["admin-bind"],
    allowInsecureExposure: flags["allow-insecure-exposure"],
    cron: flags.cron,
    config: flags.config,
    meshWaitMs: Number(process.env.HALO_GATE_MESH_WAIT_MS ?? 60_000),
    graceMs: Number(process.env.HALO_GATE_SHUTDOWN_GRACE_MS ?? 30_000),
    tls: { enabled: tlsEnabled, names: tlsNames, certFile, keyFile },
  });
}

/** Every declared command's runner: a command without one (or a runner without a declaration) does not compile. */
const RUNNERS: { [N in CommandName]: (input: Input<N>) => Promise<number> } = {
  serve: serveCommand,
  invite,
  revoke,
  rotate,
  update,
  list,
  "import-bearers": importBearers,
  usage,
  audit,
  // Loaded only for doctor: its checks are of no use to the other commands.
  doctor: async (input) => (await import("./commands/doctor")).runDoctor(input),
};

const isCommand = (name: string): name is CommandName => Object.hasOwn(COMMANDS, name);

/** `--state DIR` may also come before the command: move it after, where every command parses it. */
function commandFirst(argv: string[]): string[] {
  const leading: string[] = [];
  let index = 0;
  while (index < argv.length && argv[index]!.startsWith("--state")) {
    const takesValue = argv[index] === "--state";
    leading.push(...argv.slice(index, index + (takesValue ? 2 : 1)));
    index += takesValue ? 2 : 1;
  }
  return index < argv.length ? [argv[index]!, ...leading, ...argv.slice(index + 1)] : [];
}

async function run<N extends CommandName>(name: N, args: string[]): Promise<number> {
  const spec: CommandSpec = COMMANDS[name];
  const options = args.slice(0, args.includes("--") ? args.indexOf("--") : args.length);
  if (options.some(isHelpFlag)) {
    print(commandHelp(name, spec));
    return 0;
  }
  return RUNNERS[name](parseCommand(name, COMMANDS[name], args) as Input<N>);
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = commandFirst(argv);
  try {
    if (command === "--version" || command === "-v" || command === "version") {
      print(`halo-gate ${(createRequire(import.meta.url)("../package.json") as { version: string }).version}`);
      return 0;
    }
    if (command === undefined) {
      printError(overviewHelp(COMMANDS));
      return 2;
    }
    if (command === "help" || isHelpFlag(command)) {
      const topic = rest.find((arg, index) => !arg.startsWith("-") && rest[index - 1] !== "--state");
      if (topic === undefined) print(overviewHelp(COMMANDS));
      else if (isCommand(topic)) print(commandHelp(topic, COMMANDS[topic]));
      else throw usageError(`unknown command "${topic}"`);
      return 0;
    }
    if (!isCommand(command)) throw usageError(`unknown command "${command}"`);
    return await run(command, rest);
  } catch (error) {
    if (error instanceof CliError) {
      printError(`halo-gate: ${error.message}`);
      if (error.exitCode === 2) printError(`run 'halo-gate ${command !== undefined && isCommand(command) ? `${command} ` : ""}--help' for usage`);
      return error.exitCode;
    }
    printError(`halo-gate: ${(error as Error).message ?? String(error)}`);
    return 1;
  }
}
