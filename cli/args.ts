/** Argument parsing shared by every command: `--state` anywhere, usage errors exit 2. */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { usageError } from "./errors";
import { resolveStateDir } from "./state";

export type Options = NonNullable<ParseArgsConfig["options"]>;
const STATE: Options = { state: { type: "string" }, help: { type: "boolean", short: "h" } };
export const LIMITS: Options = { rps: { type: "string" }, burst: { type: "string" }, streams: { type: "string" }, "daily-tokens": { type: "string" } };

export function parse(args: string[], options: Options, positionals: number) {
  let parsed;
  try {
    parsed = parseArgs({ args, options: { ...STATE, ...options }, allowPositionals: true, strict: true });
  } catch (error) {
    throw usageError((error as Error).message);
  }
  if (parsed.positionals.length !== positionals) {
    throw usageError(positionals === 0 ? `unexpected argument ${parsed.positionals[0]}` : `expected ${positionals} argument(s)`);
  }
  return { values: parsed.values as Record<string, string | boolean | undefined>, positionals: parsed.positionals, stateDir: resolveStateDir(parsed.values.state as string | undefined) };
}

function number(values: Record<string, unknown>, name: string, integer: boolean): number | undefined {
  const raw = values[name];
  if (raw === undefined) return undefined;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < 0 || (integer && !Number.isInteger(value))) throw usageError(`--${name} must be a ${integer ? "whole " : ""}number`);
  return value;
}

export function limitValues(values: Record<string, unknown>) {
  return {
    rps: number(values, "rps", false),
    burst: number(values, "burst", true),
    streams: number(values, "streams", true),
    daily_tokens: number(values, "daily-tokens", true),
  };
}

export const scopeList = (value: unknown) => (typeof value === "string" ? value.split(",").map((scope) => scope.trim()).filter(Boolean) : undefined);
export const withoutUndefined = <T extends object>(object: T) => Object.fromEntries(Object.entries(object).filter(([, value]) => value !== undefined));

