/**
 * Is a serve running for this state dir, and does its gateway answer? serve.json names the pid and
 * the gateway address; a serve killed with -9 leaves a stale one behind, so the pid is checked (and,
 * where /proc says, that it still is halo-gate). /healthz proves the whole path: the edge, the core
 * and a real storage write. Over HTTPS the served certificate is pinned to serve.json's fingerprint
 * (it works for an operator certificate on any name) or, without one, trusted via <state>/tls/cert.pem.
 */
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import { join } from "node:path";
import type { TLSSocket } from "node:tls";
import type { RuntimeInfo } from "../state";
import { check, reason, type Check } from "./check";

export type ServeState =
  | { kind: "absent" }
  | { kind: "unreadable"; problem: string }
  | { kind: "stale"; info: Partial<RuntimeInfo>; problem: string }
  | { kind: "running"; info: Partial<RuntimeInfo> & { pid: number; gateway: string } };

/** The fix for every "no serve here" line. */
export const startHint = (dir: string) => `start it: halo-gate serve --state ${dir}   (as a service: systemctl start halo-gate)`;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"; // alive, another user's
  }
}

/** What /proc says the pid runs, when it can say. */
function commandOf(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").replace(/\0/g, " ").trim();
  } catch {
    return undefined;
  }
}

export function readServeState(dir: string): ServeState {
  const path = join(dir, "serve.json");
  if (!existsSync(path)) return { kind: "absent" };
  let info: Partial<RuntimeInfo>;
  try {
    info = JSON.parse(readFileSync(path, "utf8")) as Partial<RuntimeInfo>;
  } catch (error) {
    return { kind: "unreadable", problem: `${path} cannot be read: ${reason(error)}` };
  }
  if (typeof info.pid !== "number" || typeof info.gateway !== "string") return { kind: "unreadable", problem: `${path} has no pid or gateway address` };
  if (!alive(info.pid)) return { kind: "stale", info, problem: `serve.json names pid ${info.pid}, which has exited (a serve that was killed leaves it behind)` };
  const command = commandOf(info.pid);
  if (command !== undefined && !command.includes("halo-gate")) return { kind: "stale", info, problem: `serve.json names pid ${info.pid}, which is now another program (${command.slice(0, 60)})` };
  return { kind: "running", info: info as Partial<RuntimeInfo> & { pid: number; gateway: string } };
}

export function serveCheck(dir: string, state: ServeState): Check {
  switch (state.kind) {
    case "absent":
      return check("serve", "serve", "fail", `not running: no serve.json in ${dir}`, startHint(dir));
    case "unreadable":
      return check("serve", "serve", "fail", `not running? ${state.problem}`, `if no serve runs here, remove it and ${startHint(dir)}`);
    case "stale":
      return check("serve", "serve", "fail", `not running: ${state.problem}`, startHint(dir), { pid: state.info.pid });
    case "running":
      return check("serve", "serve", "ok", `running, pid ${state.info.pid}${state.info.started_at ? `, since ${state.info.started_at}` : ""}`, undefined, { pid: state.info.pid, gateway: state.info.gateway });
  }
}

interface Answer {
  status: number;
  body: string;
  ms: number;
}

/** GET url with a deadline; over HTTPS either pinned to `fingerprint` or trusting `ca`. */
function get(url: URL, trust: { fingerprint?: string; ca?: string }, timeoutMs: number): Promise<Answer> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const onResponse = (response: IncomingMessage) => {
      if (trust.fingerprint !== undefined) {
        const raw = (response.socket as TLSSocket).getPeerCertificate().raw;
        const served = `sha256:${createHash("sha256").update(raw).digest("hex")}`;
        if (served !== trust.fingerprint) {
          response.destroy();
          reject(new Error(`the gateway serves certificate ${served}, not the ${trust.fingerprint} serve.json pins`));
          return;
        }
      }
      let body = "";
      response.setEncoding("utf8");
      response.on("data", (chunk: string) => (body += chunk.slice(0, 1000)));
      response.on("end", () => resolve({ status: response.statusCode ?? 0, body, ms: Math.round(performance.now() - started) }));
      response.on("error", reject);
    };
    const options = { method: "GET", timeout: timeoutMs, headers: { accept: "application/json" } };
    const request =
      url.protocol === "https:"
        ? httpsRequest(url, { ...options, ...(trust.fingerprint !== undefined ? { rejectUnauthorized: false } : { ca: trust.ca }) }, onResponse)
        : httpRequest(url, options, onResponse);
    request.on("timeout", () => request.destroy(new Error(`no answer in ${timeoutMs / 1000} s`)));
    request.on("error", reject);
    request.end();
  });
}

export async function gatewayCheck(dir: string, state: ServeState, timeoutMs = 3_000): Promise<Check> {
  if (state.kind !== "running") return check("gateway", "gateway /healthz", "skip", "not checked: serve is not running");
  const url = new URL("/healthz", state.info.gateway);
  const caPath = join(dir, "tls", "cert.pem");
  const trust =
    url.protocol !== "https:"
      ? {}
      : state.info.tls?.fingerprint !== undefined
        ? { fingerprint: state.info.tls.fingerprint }
        : existsSync(caPath)
          ? { ca: readFileSync(caPath, "utf8") }
          : {};
  const how = trust.fingerprint !== undefined ? ` (certificate pinned to serve.json's ${trust.fingerprint.slice(0, 19)}…)` : trust.ca !== undefined ? ` (trusting ${caPath})` : "";
  let answer: Answer;
  try {
    answer = await get(url, trust, timeoutMs);
  } catch (error) {
    return check("gateway", "gateway /healthz", "fail", `${url.href} did not answer: ${reason(error)}${how}`, "serve may be hung or still starting: see its log (journalctl -u halo-gate), then restart it", { url: url.href });
  }
  const data = { url: url.href, status: answer.status, ms: answer.ms };
  if (answer.status === 200) return check("gateway", "gateway /healthz", "ok", `${url.href} healthy (200 in ${answer.ms} ms)${how}`, undefined, data);
  const why = answer.status === 503 ? "storage cannot be written (full disk or permissions?)" : answer.body.trim().split("\n")[0]!.slice(0, 120);
  return check("gateway", "gateway /healthz", "fail", `${url.href} answered ${answer.status}: ${why}`, "check free space and the state dir's permissions above; serve's log says more (journalctl -u halo-gate)", data);
}
