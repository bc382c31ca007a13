/**
 * The bind rules (docs/contract.md §1) as they stand on this machine, with serve's own helpers from
 * cli/serve/bind.ts: is `tailscale` installed, does `tailscale ip -4` give the node's mesh address,
 * and is that address on a tailscale* interface (else `--bind tailscale` refuses to start: 100.64/10
 * is also carrier-grade NAT space). A running serve's own bind address is checked by the same rule.
 * Without a serve bound to the mesh these are warnings: loopback-only is a valid way to run.
 */
import { constants } from "node:fs";
import { access } from "node:fs/promises";
import { networkInterfaces } from "node:os";
import { delimiter, join } from "node:path";
import ipaddr from "ipaddr.js";
import { checkBindAllowed, tailscaleAddress } from "../serve/bind";
import { check, reason, type Check, type Status } from "./check";
import type { ServeState } from "./serve";

const MESH_V4 = ipaddr.parseCIDR("100.64.0.0/10");
const MESH_V6 = ipaddr.parseCIDR("fd7a:115c:a1e0::/48");

/** The host of serve.json's gateway URL, unbracketed. */
export const gatewayHost = (state: ServeState) => (state.kind === "running" ? new URL(state.info.gateway).hostname.replace(/^\[|\]$/g, "") : undefined);

/** True when the running serve listens on a mesh address: then the mesh checks are failures, not warnings. */
export function meshRequired(state: ServeState): boolean {
  const host = gatewayHost(state);
  if (host === undefined || !ipaddr.isValid(host)) return false;
  const address = ipaddr.process(host);
  return address.kind() === "ipv4" ? (address as ipaddr.IPv4).match(MESH_V4) : (address as ipaddr.IPv6).match(MESH_V6);
}

async function onPath(command: string, env: NodeJS.ProcessEnv): Promise<string | undefined> {
  for (const dir of (env.PATH ?? "").split(delimiter).filter(Boolean)) {
    try {
      await access(join(dir, command), constants.X_OK);
      return join(dir, command);
    } catch {
      // not here
    }
  }
  return undefined;
}

const interfaceOf = (address: string) =>
  Object.entries(networkInterfaces()).find(([, infos]) => (infos ?? []).some((info) => ipaddr.process(info.address).toString() === ipaddr.process(address).toString()))?.[0];

export async function bindCheck(state: ServeState, loginServer: string): Promise<Check> {
  const problem: Status = meshRequired(state) ? "fail" : "warn";
  const host = gatewayHost(state);
  let running = "";
  if (host !== undefined && ipaddr.isValid(host)) {
    try {
      checkBindAllowed(host, false);
      running = `; serve listens on ${host}`;
    } catch (error) {
      return check("bind", "bind rules", "warn", `serve listens on ${host}, outside the bind rules (started with --allow-insecure-exposure): ${reason(error).replace(/^refusing to bind [^:]+: /, "")}`, "restart it with --bind tailscale or a loopback address unless the exposure is intended");
    }
  }
  const tailscale = await onPath("tailscale", process.env);
  if (tailscale === undefined) {
    return check("bind", "bind rules", problem, `tailscale is not installed: --bind tailscale cannot work, only loopback${running}`, `install Tailscale, then: tailscale up --login-server ${loginServer}`);
  }
  let address: string;
  try {
    address = await tailscaleAddress(0);
  } catch (error) {
    const why = /\((.*)\)\./.exec(reason(error))?.[1] ?? reason(error);
    return check("bind", "bind rules", problem, `tailscale ip -4 gives no mesh address (${why})${running}`, `bring the mesh up: tailscale up --login-server ${loginServer}`);
  }
  const on = interfaceOf(address);
  try {
    checkBindAllowed(address, false);
  } catch (error) {
    return check("bind", "bind rules", problem, `mesh address ${address} ${on ? `is on ${on}` : "is on no local interface"}: --bind tailscale would refuse it (${reason(error).replace(/^refusing to bind [^:]+: /, "").split(". ")[0]})${running}`, "check tailscaled runs with a TUN device (tailscale0), not --tun=userspace-networking", { address, interface: on });
  }
  return check("bind", "bind rules", "ok", `mesh address ${address}${on ? ` on ${on}` : ""}: --bind tailscale is allowed${running}`, undefined, { address, interface: on });
}
