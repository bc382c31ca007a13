/** Talks to the running `serve`'s loopback admin API, found through the state dir. */
import { CliError } from "./errors";
import { readOperatorToken, readRuntimeInfo } from "./state";

export interface AdminResponse<T> {
  status: number;
  body: T;
}

export async function adminRequest<T>(stateDir: string, method: string, path: string, payload?: unknown): Promise<T> {
  const runtime = readRuntimeInfo(stateDir);
  const notRunning = new CliError(`the gateway is not running (state dir ${stateDir}); start it with 'halo-gate serve --state ${stateDir}'.`);
  if (!runtime) throw notRunning;
  const token = readOperatorToken(stateDir);
  let response: Response;
  try {
    response = await fetch(`${runtime.admin}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(payload === undefined ? {} : { "content-type": "application/json" }) },
      ...(payload === undefined ? {} : { body: JSON.stringify(payload) }),
    });
  } catch {
    throw notRunning;
  }
  const text = await response.text();
  if (!response.ok) {
    let message = text;
    try {
      message = (JSON.parse(text) as { error: { message: string } }).error.message;
    } catch {
      // not JSON: report the raw text
    }
    throw new CliError(message.trim() || `admin API answered ${response.status}`);
  }
  return (response.headers.get("content-type")?.startsWith("application/json") ? JSON.parse(text) : text) as T;
}
