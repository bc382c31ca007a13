/** Talks to the running `serve`'s loopback admin API, found through the state dir. */
import { CliError } from "./errors";
import { toSecond } from "./output";
import { readOperatorToken, readRuntimeInfo, type RuntimeInfo } from "./state";

/**
 * A refusal from the admin API, with its error code. A 400 is bad input (a handle, scope, duration
 * or limit the gateway will not take): usage, exit 2. Anything else (no such user, seats taken, a
 * conflict, a failure) exits 1.
 */
export class AdminApiError extends CliError {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string | undefined,
  ) {
    super(message, status === 400 ? 2 : 1);
  }
}

const notRunning = (stateDir: string) => new CliError(`the gateway is not running (state dir ${stateDir}); start it with 'halo-gate serve --state ${stateDir}'.`);

/** What the running serve wrote to serve.json; refuses (exit 1) when none is running there. */
export function runningGateway(stateDir: string): RuntimeInfo {
  const runtime = readRuntimeInfo(stateDir);
  if (!runtime) throw notRunning(stateDir);
  return runtime;
}

export async function adminRequest<T>(stateDir: string, method: string, path: string, payload?: unknown): Promise<T> {
  const runtime = runningGateway(stateDir);
  const token = readOperatorToken(stateDir);
  let response: Response;
  try {
    response = await fetch(`${runtime.admin}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(payload === undefined ? {} : { "content-type": "application/json" }) },
      ...(payload === undefined ? {} : { body: JSON.stringify(payload) }),
    });
  } catch {
    throw notRunning(stateDir);
  }
  const text = await response.text();
  if (!response.ok) {
    let message = text;
    let code: string | undefined;
    try {
      ({ message, code } = (JSON.parse(text) as { error: { message: string; code?: string } }).error);
    } catch {
      // not JSON: report the raw text
    }
    throw new AdminApiError(toSecond(message.trim()) || `admin API answered ${response.status}`, response.status, code);
  }
  return (response.headers.get("content-type")?.startsWith("application/json") ? JSON.parse(text) : text) as T;
}
