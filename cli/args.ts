/**
 * The command-line grammar, derived from one declaration per command (cli/commands.ts): the
 * parseArgs options, the checks and conversions of every value, and the help text all come from it.
 * `--state` and `--help` are accepted by every command, anywhere on the line. Every usage error
 * (unknown flag, missing or extra argument, a bad number, duration, scope list or time) is a
 * CliError with exit code 2.
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { durationProblem } from "../src/shared/duration";
import { HANDLE_PATTERN, HANDLE_RULE, SCOPE_PATTERN, type NumberBounds } from "../src/shared/config";
import { usageError } from "./errors";
import { resolveStateDir } from "./state";

export type FlagKind = "boolean" | "string" | "strings" | "number" | "duration" | "scopes" | "time";

export interface FlagSpec {
  kind: FlagKind;
  description: string;
  /** The value's name in help (`--ttl DURATION`); each kind has its own otherwise. */
  value?: string;
  /** Used when the flag is absent, and shown in help. */
  default?: string;
  /** Shown in help only: what applies when the flag is absent (e.g. "the config's default_ttl"). */
  otherwise?: string;
  /** `number`: the accepted range. */
  bounds?: NumberBounds;
  /** `duration`: the longest accepted. */
  max?: string;
}

export interface ArgSpec {
  name: string;
  description: string;
  /** `handle`: checked against the handle rule before anything is sent. */
  kind?: "handle" | "text";
}

export interface CommandSpec {
  /** One line for `halo-gate --help`. */
  summary: string;
  /** A paragraph for `halo-gate <command> --help`. */
  description: string;
  args: readonly ArgSpec[];
  flags: Readonly<Record<string, FlagSpec>>;
  examples?: readonly string[];
}

type KindValue<K extends FlagKind> = K extends "boolean" ? boolean : K extends "number" ? number : K extends "strings" | "scopes" ? string[] : string;

/** The parsed values of a command's flags, typed from its declaration. */
export type FlagValues<F extends CommandSpec["flags"]> = {
  -readonly [N in keyof F]: F[N]["kind"] extends "boolean" ? boolean : F[N] extends { default: string } ? KindValue<F[N]["kind"]> : KindValue<F[N]["kind"]> | undefined;
};

export interface CommandInput<S extends CommandSpec> {
  name: string;
  args: string[];
  flags: FlagValues<S["flags"]>;
  stateDir: string;
}

/** Flags every command takes; they are declared here once and shown in every help. */
export const GLOBAL_FLAGS = {
  state: { kind: "string", value: "DIR", description: "the gateway's state directory", otherwise: "$HALO_GATE_STATE, else ./.halo-gate" },
  help: { kind: "boolean", description: "show this help" },
} as const satisfies Record<string, FlagSpec>;

const VALUE_NAMES: Record<FlagKind, string> = { boolean: "", string: "VALUE", strings: "VALUE", number: "N", duration: "DURATION", scopes: "LIST", time: "TIME" };

export const isHelpFlag = (arg: string) => arg === "--help" || arg === "-h";

function parseOptions(spec: CommandSpec): NonNullable<ParseArgsConfig["options"]> {
  const options: NonNullable<ParseArgsConfig["options"]> = {};
  for (const [name, flag] of Object.entries<FlagSpec>({ ...spec.flags, ...GLOBAL_FLAGS })) {
    options[name] = { type: flag.kind === "boolean" ? "boolean" : "string", ...(flag.kind === "strings" ? { multiple: true } : {}), ...(name === "help" ? { short: "h" } : {}) };
  }
  return options;
}

/** parseArgs' messages, shortened to what the operator needs. */
function parseArgsProblem(error: NodeJS.ErrnoException): string {
  const option = /'(-[^' ]+)/.exec(error.message)?.[1];
  switch (error.code) {
    case "ERR_PARSE_ARGS_UNKNOWN_OPTION":
      return `unknown flag ${option}`;
    case "ERR_PARSE_ARGS_INVALID_OPTION_VALUE":
      if (/argument missing/.test(error.message)) return `${option} needs a value`;
      if (/ambiguous/.test(error.message)) return `${option} needs a value (one that starts with "-" is written ${option}=-…)`;
      return error.message.split("\n")[0]!;
    default:
      return error.message.split("\n")[0]!;
  }
}

function numberValue(name: string, text: string, bounds: NumberBounds): number {
  const value = /^\d+(\.\d+)?$/.test(text) ? Number(text) : Number.NaN;
  const low = bounds.exclusiveMin ? `above ${bounds.min}` : `at least ${bounds.min}`;
  const range = `${bounds.integer ? "a whole number" : "a number"} ${low}${bounds.max < Number.MAX_SAFE_INTEGER ? ` and at most ${bounds.max}` : ""}`;
  const inRange = value <= bounds.max && (bounds.exclusiveMin ? value > bounds.min : value >= bounds.min);
  if (!Number.isFinite(value) || !inRange || (bounds.integer && !Number.isInteger(value))) throw usageError(`--${name} ${text}: must be ${range}`);
  return value;
}

/** `v2,sd`: route scopes, each well formed, none twice. Whether a route offers it is the gateway's word. */
function scopesValue(name: string, text: string): string[] {
  const scopes = text.split(",").map((scope) => scope.trim());
  const bad = scopes.find((scope) => !SCOPE_PATTERN.test(scope));
  if (bad !== undefined) throw usageError(`--${name} ${text}: ${bad === "" ? "an empty scope" : `"${bad}" is not a scope`} (a comma-separated list such as v2,sd)`);
  const twice = scopes.find((scope, index) => scopes.indexOf(scope) !== index);
  if (twice !== undefined) throw usageError(`--${name} ${text}: "${twice}" is given twice`);
  return scopes;
}

/** A date (its midnight UTC) or an ISO 8601 time with a zone, as an ISO string. */
export function timeValue(name: string, text: string): string {
  const match = /^(\d{4})-(\d{2})-(\d{2})(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2}))?$/i.exec(text);
  const at = match ? Date.parse(match[4] ? text : `${text}T00:00:00Z`) : Number.NaN;
  // Date.parse would roll 2026-02-30 over into March: the date must be one the calendar has.
  const day = match ? new Date(Date.UTC(Number(match[1]), Number(match[2]) - 1, Number(match[3]))).toISOString().slice(0, 10) : "";
  if (Number.isNaN(at) || day !== text.slice(0, 10)) {
    throw usageError(`--${name} ${text}: must be a date (2026-11-25, its midnight UTC) or an ISO 8601 time with a zone (2026-11-25T08:00:00Z)`);
  }
  return new Date(at).toISOString();
}

function flagValue(name: string, flag: FlagSpec, raw: string | boolean | string[]): unknown {
  if (typeof raw === "boolean" || Array.isArray(raw)) return raw;
  switch (flag.kind) {
    case "number":
      return numberValue(name, raw, flag.bounds ?? { min: 0, max: Number.MAX_SAFE_INTEGER, integer: false });
    case "duration": {
      const problem = durationProblem(raw, flag.max ?? "999999999d");
      if (problem) throw usageError(`--${name} ${raw}: ${problem}`);
      return raw;
    }
    case "scopes":
      return scopesValue(name, raw);
    case "time":
      return timeValue(name, raw);
    default:
      if (raw === "") throw usageError(`--${name} needs a value`);
      return raw;
  }
}

/** Parses one command's arguments against its declaration. */
export function parseCommand<S extends CommandSpec>(name: string, spec: S, argv: string[]): CommandInput<S> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: parseOptions(spec), allowPositionals: true, strict: true });
  } catch (error) {
    throw usageError(`${name}: ${parseArgsProblem(error as NodeJS.ErrnoException)}`);
  }
  const { positionals } = parsed;
  const missing = spec.args[positionals.length];
  if (missing) throw usageError(`${name}: missing <${missing.name}>`);
  if (positionals.length > spec.args.length) throw usageError(`${name}: unexpected argument "${positionals[spec.args.length]}"`);
  spec.args.forEach((arg, index) => {
    if (arg.kind === "handle" && !HANDLE_PATTERN.test(positionals[index]!)) {
      throw usageError(`${name}: "${positionals[index]}" is not a valid handle (${HANDLE_RULE})`);
    }
  });
  const values = parsed.values as Record<string, string | boolean | string[] | undefined>;
  const flags: Record<string, unknown> = {};
  for (const [flagName, flag] of Object.entries(spec.flags)) {
    const raw = values[flagName] ?? flag.default;
    try {
      flags[flagName] = raw === undefined ? (flag.kind === "boolean" ? false : undefined) : flagValue(flagName, flag, raw);
    } catch (error) {
      throw usageError(`${name}: ${(error as Error).message}`);
    }
  }
  return { name, args: positionals, flags: flags as FlagValues<S["flags"]>, stateDir: resolveStateDir(values.state as string | undefined) };
}

// ── help ────────────────────────────────────────────────────────────────────────────────────────

const HELP_WIDTH = 100;

/** `text` wrapped to `width`, each continuation line indented by `indent`. */
function wrap(text: string, width: number, indent: number): string {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines.join(`\n${" ".repeat(indent)}`);
}

function twoColumns(rows: Array<[string, string]>, indent = 2): string {
  // A label too long for the column gets a line of its own.
  const left = Math.max(...rows.map(([label]) => label.length).filter((length) => length <= 24), 4) + 2;
  return rows
    .map(([label, text]) => {
      const pad = " ".repeat(indent);
      const head = label.length + 2 > left ? `${pad}${label}\n${pad}${" ".repeat(left)}` : `${pad}${label.padEnd(left)}`;
      return `${head}${wrap(text, HELP_WIDTH - indent - left, indent + left)}`;
    })
    .join("\n");
}

const flagLabel = (name: string, flag: FlagSpec) =>
  `${name === "help" ? "-h, " : ""}--${name}${flag.kind === "boolean" ? "" : ` ${flag.value ?? VALUE_NAMES[flag.kind]}`}${flag.kind === "strings" ? " …" : ""}`;

function flagText(flag: FlagSpec): string {
  const notes = [
    flag.kind === "strings" ? "[repeatable]" : undefined,
    flag.default !== undefined ? `[default: ${flag.default}]` : flag.otherwise !== undefined ? `[default: ${flag.otherwise}]` : undefined,
  ].filter(Boolean);
  return [flag.description, ...notes].join(" ");
}

export const synopsis = (name: string, spec: CommandSpec) => [name, ...spec.args.map((arg) => `<${arg.name}>`)].join(" ");

/** `halo-gate <command> --help`. */
export function commandHelp(name: string, spec: CommandSpec): string {
  const sections = [`usage: halo-gate ${synopsis(name, spec)}${Object.keys(spec.flags).length ? " [flags]" : ""}`, wrap(spec.description, HELP_WIDTH, 0)];
  if (spec.args.length) sections.push(`arguments:\n${twoColumns(spec.args.map((arg) => [`<${arg.name}>`, arg.description]))}`);
  const flags = Object.entries({ ...spec.flags, ...GLOBAL_FLAGS }).map(([flagName, flag]): [string, string] => [flagLabel(flagName, flag), flagText(flag)]);
  sections.push(`flags:\n${twoColumns(flags)}`);
  if (spec.examples?.length) sections.push(`examples:\n${spec.examples.map((example) => `  ${example}`).join("\n")}`);
  return sections.join("\n\n");
}

/** `halo-gate --help`: every command with its one-line summary. */
export function overviewHelp(commands: Readonly<Record<string, CommandSpec>>): string {
  return [
    "usage: halo-gate <command> [arguments] [flags]",
    wrap("The auth gateway of the private beta (serve) and its operator's commands, which talk to the running serve.", HELP_WIDTH, 0),
    `commands:\n${twoColumns(Object.entries(commands).map(([name, spec]) => [synopsis(name, spec), spec.summary]))}`,
    `flags:\n${twoColumns([...Object.entries(GLOBAL_FLAGS).map(([name, flag]): [string, string] => [flagLabel(name, flag), flagText(flag)]), ["--version", "print halo-gate's version"]])}`,
    wrap("Run 'halo-gate <command> --help' for a command's flags. Exit codes: 0 done, 1 refused or failed, 2 bad usage.", HELP_WIDTH, 0),
  ].join("\n\n");
}
