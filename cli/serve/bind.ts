/**
 * docs/contract.md §1 bind rules. Loopback is always allowed; a Tailscale address (100.64.0.0/10 or
 * fd7a:115c:a1e0::/48) only when it sits on a `tailscale*` interface, because 100.64/10 is also ISP
 * carrier-grade NAT space. Anything else refuses to start unless --allow-insecure-exposure.
 */
import { execFile } from "node:child_process";
import { networkInterfaces } from "node:os";
import { promisify } from "node:util";
import ipaddr from "ipaddr.js";
import { CliError, usageError } from "../errors";

export interface BindAddress {
  host: string;
  port: number;
}

const TAILSCALE_V4 = ipaddr.parseCIDR("100.64.0.0/10");
const TAILSCALE_V6 = ipaddr.parseCIDR("fd7a:115c:a1e0::/48");

/** `127.0.0.1:8443`, `[::1]:8443`, `::1` (default port). */
export function parseBindAddress(text: string, defaultPort: number): BindAddress {
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(text);
  const plain = /^([^:]+)(?::(\d+))?$/.exec(text);
  let host: string;
  let port: string | undefined;
  if (bracketed) [, host, port] = bracketed as unknown as [string, string, string | undefined];
  else if (plain) [, host, port] = plain as unknown as [string, string, string | undefined];
  else if (ipaddr.IPv6.isValid(text)) [host, port] = [text, undefined];
  else throw usageError(`--bind ${text}: expected ADDR:PORT, [IPv6]:PORT or tailscale[:PORT]`);
  if (!ipaddr.isValid(host)) throw usageError(`--bind ${text}: "${host}" is not an IP address`);
  const portNumber = port === undefined ? defaultPort : Number(port);
  if (!Number.isInteger(portNumber) || portNumber < 0 || portNumber > 65_535) throw usageError(`--bind ${text}: bad port`);
  return { host: ipaddr.parse(host).toString(), port: portNumber };
}

export type InterfaceMap = ReturnType<typeof networkInterfaces>;

/** Throws (exit 1, naming the address) when binding `host` would expose the gateway. */
export function checkBindAllowed(host: string, allowInsecure: boolean, interfaces: InterfaceMap = networkInterfaces()): void {
  const address = ipaddr.process(host);
  if (address.range() === "loopback") return;
  const onInterface = Object.entries(interfaces).find(([, infos]) =>
    (infos ?? []).some((info) => ipaddr.process(info.address).toString() === address.toString()),
  )?.[0];
  const inMeshRange =
    (address.kind() === "ipv4" && (address as ipaddr.IPv4).match(TAILSCALE_V4)) ||
    (address.kind() === "ipv6" && (address as ipaddr.IPv6).match(TAILSCALE_V6));
  if (inMeshRange && onInterface?.startsWith("tailscale")) return;
  if (allowInsecure) return;
  const why = address.range() === "unspecified"
    ? "it listens on every interface"
    : inMeshRange
      ? `it is in the Tailscale range but ${onInterface ? `on interface ${onInterface}` : "on no local interface"}, not a tailscale* interface (100.64.0.0/10 is also carrier-grade NAT space)`
      : `it is not loopback or a Tailscale mesh address (${address.range()})`;
  throw new CliError(`refusing to bind ${host}: ${why}. Use --bind tailscale, a loopback address, or --allow-insecure-exposure if you really mean it.`);
}

/** The node's own mesh address from `tailscale ip -4`, waiting for the mesh to come up. */
export async function tailscaleAddress(waitMs: number): Promise<string> {
  const deadline = Date.now() + waitMs;
  let lastProblem = "";
  for (;;) {
    try {
      const { stdout } = await promisify(execFile)("tailscale", ["ip", "-4"], { timeout: 5_000 });
      const address = stdout.split(/\s+/).find((word) => ipaddr.IPv4.isValid(word));
      if (address) return address;
      lastProblem = "tailscale ip -4 printed no IPv4 address";
    } catch (error) {
      const failure = error as NodeJS.ErrnoException & { stderr?: string };
      lastProblem =
        failure.code === "ENOENT"
          ? "the tailscale command is not installed"
          : (failure.stderr?.trim().split("\n")[0] || failure.message.split("\n")[0]!);
    }
    if (Date.now() >= deadline) {
      throw new CliError(`--bind tailscale: no mesh address after ${Math.round(waitMs / 1000)} s (${lastProblem}). Is tailscaled up and logged in?`);
    }
    await new Promise((resolve) => setTimeout(resolve, 1_000));
  }
}

export const formatHostPort = (host: string, port: number) => (host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`);
