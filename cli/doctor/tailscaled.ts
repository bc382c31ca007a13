/**
 * tailscaled's LocalAPI, asked directly over its unix socket (GET /localapi/v0/status with the
 * Host it insists on, `local-tailscaled.sock`, 2 s at most): is the daemon there, is it logged in
 * and running, which addresses does it hold, and its netfilter mode when the status carries one
 * (with netfilter on, tailscaled drops 100.64/10 traffic that arrives on other interfaces).
 */
import { request } from "node:http";
import { DEFAULT_TAILSCALED_SOCKET } from "../../src/shared/config";
import { check, reason, type Check, type Status } from "./check";

export { DEFAULT_TAILSCALED_SOCKET };

interface LocalStatus {
  Version?: string;
  BackendState?: string;
  TailscaleIPs?: string[];
  NetfilterMode?: string | number;
  Self?: { TailscaleIPs?: string[]; NetfilterMode?: string | number };
}

function getStatus(socketPath: string, timeoutMs: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const call = request({ socketPath, path: "/localapi/v0/status", method: "GET", headers: { host: "local-tailscaled.sock" }, timeout: timeoutMs }, (response) => {
      let body = "";
      response.setEncoding("utf8");
      response.on("data", (chunk: string) => (body += chunk));
      response.on("end", () => resolve({ status: response.statusCode ?? 0, body }));
      response.on("error", reject);
    });
    call.on("timeout", () => call.destroy(new Error(`no answer in ${timeoutMs / 1000} s`)));
    call.on("error", reject);
    call.end();
  });
}

/** preftype.NetfilterMode: 0 off, 1 nodivert, 2 on; newer daemons may print the name. */
const netfilterName = (mode: string | number | undefined) => (mode === undefined ? "unknown" : typeof mode === "number" ? (["off", "nodivert", "on"][mode] ?? String(mode)) : mode);

export async function tailscaledCheck(socketPath: string, required: boolean, loginServer: string, timeoutMs = 2_000): Promise<Check> {
  const problem: Status = required ? "fail" : "warn";
  let answer;
  try {
    answer = await getStatus(socketPath, timeoutMs);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const fix =
      code === "EACCES"
        ? "run doctor as root or as a user allowed to use tailscaled's socket"
        : code === "ENOENT" || code === "ECONNREFUSED"
          ? `start it (systemctl start tailscaled), or give its socket with --tailscaled-socket PATH`
          : "restart tailscaled (systemctl restart tailscaled)";
    const what = code === "ENOENT" ? `no socket at ${socketPath}` : `${socketPath}: ${reason(error)}`;
    return check("tailscaled", "tailscaled", problem, `LocalAPI unreachable: ${what}`, fix, { socket: socketPath });
  }
  if (answer.status !== 200) {
    return check("tailscaled", "tailscaled", problem, `LocalAPI at ${socketPath} answered ${answer.status}: ${answer.body.trim().split("\n")[0]!.slice(0, 120)}`, "run doctor as root or as a user allowed to use tailscaled's socket", { socket: socketPath });
  }
  let status: LocalStatus;
  try {
    status = JSON.parse(answer.body) as LocalStatus;
  } catch (error) {
    return check("tailscaled", "tailscaled", problem, `LocalAPI at ${socketPath} sent no JSON status: ${reason(error)}`, "restart tailscaled (systemctl restart tailscaled)");
  }
  const state = status.BackendState ?? "unknown";
  const addresses = status.TailscaleIPs ?? status.Self?.TailscaleIPs ?? [];
  const netfilter = netfilterName(status.NetfilterMode ?? status.Self?.NetfilterMode);
  const data = { socket: socketPath, backend_state: state, addresses, netfilter_mode: netfilter, version: status.Version };
  const detail = `${state}${addresses.length ? `, ${addresses.join(", ")}` : ""}, netfilter mode ${netfilter}${status.Version ? `, tailscaled ${status.Version.split("-")[0]}` : ""} (${socketPath})`;
  if (state !== "Running") return check("tailscaled", "tailscaled", problem, detail, `log in to the mesh: tailscale up --login-server ${loginServer}`, data);
  if (netfilter === "off") return check("tailscaled", "tailscaled", "warn", detail, "turn netfilter back on (tailscale up --netfilter-mode=on, with your other up flags): it drops 100.64/10 traffic from other interfaces", data);
  return check("tailscaled", "tailscaled", "ok", detail, undefined, data);
}
