/**
 * `halo-gate doctor [--json] [--tailscaled-socket PATH]`: the first command to run when something
 * is off. It changes nothing; it looks at the state dir (modes, free space), the running serve and
 * its /healthz, the TLS certificate, the bind rules, tailscaled and Headscale, and prints one line
 * per check with the fix for each problem. Exit 0 when nothing failed, else 1 (warnings do not
 * fail: loopback-only, or Headscale on another host, are valid set-ups). Works with no serve and
 * no state dir at all: then it says how to start one.
 */
import type { Check } from "../doctor/check";
import { headscaleCheck } from "../doctor/headscale";
import { bindCheck, meshRequired } from "../doctor/mesh";
import { jsonReport, renderText } from "../doctor/render";
import { gatewayCheck, readServeState, serveCheck } from "../doctor/serve";
import { freeSpaceCheck, secretsCheck, stateDirCheck } from "../doctor/state-dir";
import { DEFAULT_TAILSCALED_SOCKET, tailscaledCheck } from "../doctor/tailscaled";
import { tlsCheck } from "../doctor/tls";
import { colorEnabled, print, printJson } from "../output";

export async function runDoctor({ flags, stateDir }: { flags: { json: boolean; "tailscaled-socket"?: string | undefined }; stateDir: string }): Promise<number> {
  const serve = readServeState(stateDir);
  const loginServer = (serve.kind === "running" ? serve.info.login_server : undefined) ?? "<your Headscale URL>";
  // The slow ones (a child process, a socket, an HTTP round trip) run side by side, each with its own deadline.
  const [dir, secrets, space, gateway, bind, tailscaled, headscale] = await Promise.all([
    stateDirCheck(stateDir),
    secretsCheck(stateDir),
    freeSpaceCheck(stateDir),
    gatewayCheck(stateDir, serve),
    bindCheck(serve, loginServer),
    tailscaledCheck(flags["tailscaled-socket"] ?? DEFAULT_TAILSCALED_SOCKET, meshRequired(serve), loginServer),
    headscaleCheck(),
  ]);
  const checks: Check[] = [dir, secrets, space, serveCheck(stateDir, serve), gateway, tlsCheck(stateDir, serve), bind, tailscaled, headscale];
  if (flags.json) printJson(jsonReport(checks, stateDir), 2);
  else print(renderText(checks, stateDir, !colorEnabled()));
  return checks.some((entry) => entry.status === "fail") ? 1 : 0;
}
