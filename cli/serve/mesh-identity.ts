/**
 * Who owns a mesh peer (issue 10), asked by the edge of the local tailscaled over its LocalAPI unix
 * socket: `GET /localapi/v0/whois?addr=IP:PORT` with `Host: local-tailscaled.sock`. tailscaled
 * answers `{Node: {Name, ComputedName, Tags?, …}, UserProfile: {ID, LoginName, DisplayName}, CapMap}`
 * (on a Headscale mesh `UserProfile.ID` is the Headscale user id; a tagged node has `Node.Tags` and
 * the "tagged-devices" pseudo-user), or 404 "no match for IP:port" for an address it does not know.
 * On Linux, tailscaled's netfilter rules drop 100.64/10 traffic that did not come in on the tailscale
 * interface, so the TCP peer address — and with it this answer — is trustworthy.
 *
 * Where the lookup runs, and why here. Both places were measured against the same fake tailscaled:
 * one whois from the worker through a workerd external service bound to the unix socket costs
 * 0.72 ms (median, warm), from the edge's Node client 0.8–1.0 ms; cached, both cost nothing. The
 * edge was chosen because (1) it can start the lookup when the connection is accepted, before the
 * request exists, which the worker cannot (on a fresh TLS connection that halves the uncached cost,
 * below); (2) it already owns the real peer address and hands it to the core with the per-boot
 * secret, so the identity travels the same way (src/shared/mesh-identity.ts, headers `x-halo-mesh*`), and
 * the core compares it in the user's Durable Object, in the one call that confirms the token; (3)
 * the worker needs no binding that `wrangler dev` and Cloudflare lack: without an edge (wrangler
 * dev) or on Cloudflare the check is simply off.
 *
 * What it costs per request, and when:
 *   - only requests that carry credentials (an Authorization header or a `ticket=` query) wait for
 *     an answer; a request without them (401 anyway, or an open route) never waits. A request with a
 *     wrong token may wait for one lookup, but answers are cached per address, so at most one per
 *     address per TTL;
 *   - the lookup of a new peer starts when its connection is accepted (the edge's "connection"
 *     event), so it runs while the TLS handshake and the request head arrive; only a credentialed
 *     request then waits for what is left of it;
 *   - loopback peers are trusted without a lookup while `mesh.trust_loopback` is true;
 *   - answers are cached per IP address (the owner of an address does not depend on the port):
 *     POSITIVE_TTL_MS (10 s) for a known node (a user's or a tagged one), NEGATIVE_TTL_MS (2 s) for
 *     an address tailscaled does not know, UNAVAILABLE_TTL_MS (1 s) when it could not answer. A node
 *     that is expired or deleted by `revoke` cannot send packets to this box any more, so a cached
 *     answer can only outlive a change of an address's owner, which Headscale does not make within
 *     seconds; concurrent requests from a new address share one lookup.
 *
 * Measured through `serve` (2-core dev machine, c=1, GET /v2/v1/models with a bearer, a fake
 * tailscaled speaking the LocalAPI in its own process — test/e2e/fakes.ts —, `enforce` against
 * `off` interleaved request by request; medians):
 *   - cached (the normal case: a device's requests within 10 s of each other): a few hundredths of a
 *     millisecond — `npm run bench:mesh` (bench/MESH.md, paired, 2,000 pairs) puts it at +0.05 to
 *     +0.14 ms on a kept-alive connection, +0.00 on fresh ones, across three runs;
 *   - uncached (a device's first request, or its first after 10 s idle; bench/MESH.md: +1.2 to +1.4
 *     ms plain, +0.6 to +0.9 ms TLS, medians of three runs): +1.1 ms on a fresh plain
 *     HTTP connection (4.40 vs 3.31 ms), +0.6 ms on a fresh TLS connection (7.17 vs 6.54 ms; +1.4 ms
 *     without the lookup starting at accept) — one unix-socket round trip to tailscaled, which
 *     alone measured 0.8–1.0 ms from Node against the (Node) fake; the real tailscaled answers whois
 *     from memory too;
 *   - when a token's device changes, `last_device` is written at once (otherwise with last_used_at,
 *     about once a minute); the write is off the response path, but on 2 cores it competes for CPU:
 *     with every request from another device, uncached requests measured +2.8 ms instead of +1.1.
 * The bench's budget (README: the full path adds ~2.6 ms at c=1) is kept: nothing in the steady
 * state, about a millisecond once per device per 10 s.
 *
 * tailscaled not answering (no socket, refused, timeout after TIMEOUT_MS, a 5xx, or a 403 because
 * the gateway's user may not read the socket) is `unavailable`: `enforce` then refuses with 503.
 */
import { Agent, request as httpRequest } from "node:http";
import { isIP } from "node:net";
import { MESH_USER_PATTERN, type MeshPeer } from "../../src/shared/mesh-identity";

export const POSITIVE_TTL_MS = 10_000;
export const NEGATIVE_TTL_MS = 2_000;
export const UNAVAILABLE_TTL_MS = 1_000;
/** tailscaled answers whois from memory; a second means it is stuck. */
export const TIMEOUT_MS = 1_000;
/** A bound on the cache (a mesh has a few dozen addresses; an exposed bind could see many more). */
const MAX_ENTRIES = 4_096;

export interface MeshResolverOptions {
  socketPath: string;
  trustLoopback: boolean;
  timeoutMs?: number;
  /** Told when tailscaled stops or starts answering (serve logs it). */
  onAvailability?: (available: boolean, reason: string) => void;
}

export interface MeshResolver {
  /**
   * The owner of `address` (the TCP peer, `port` its source port): at once when it is trusted or
   * cached, else a promise that never rejects (`unavailable` when tailscaled cannot answer).
   */
  lookup(address: string, port: number): MeshPeer | Promise<MeshPeer>;
  /** Ends the keep-alive connection to tailscaled. */
  close(): void;
}

/** What tailscaled's whois answers (tailcfg.Node / tailcfg.UserProfile; only what is read here). */
interface WhoIsResponse {
  Node?: { Name?: string; ComputedName?: string; Tags?: string[] | null; Hostinfo?: { Hostname?: string } };
  UserProfile?: { ID?: number | string; LoginName?: string };
}

const LOOPBACK: MeshPeer = { kind: "loopback" };
const UNKNOWN: MeshPeer = { kind: "unknown" };
const UNAVAILABLE: MeshPeer = { kind: "unavailable" };

export const isLoopback = (address: string) => address === "::1" || (isIP(address) === 4 && address.startsWith("127."));

/** The node's short name: ComputedName, else the first label of its MagicDNS name. */
function nodeName(node: NonNullable<WhoIsResponse["Node"]>): string {
  return node.ComputedName || node.Name?.split(".")[0] || node.Hostinfo?.Hostname || "unnamed";
}

/** A whois reply as the core is told of it. */
export function classifyWhoIs(reply: WhoIsResponse): MeshPeer {
  const node = reply.Node;
  if (!node) return UNAVAILABLE;
  const device = nodeName(node);
  // A tagged node belongs to no user: tailscaled reports the "tagged-devices" pseudo-user for it.
  if ((node.Tags?.length ?? 0) > 0 || reply.UserProfile?.LoginName === "tagged-devices") return { kind: "tagged", device };
  const id = reply.UserProfile?.ID;
  const user = id === undefined || id === null ? "" : String(id);
  return MESH_USER_PATTERN.test(user) ? { kind: "user", user, device } : UNAVAILABLE;
}

const ttlOf = (peer: MeshPeer) => (peer.kind === "unavailable" ? UNAVAILABLE_TTL_MS : peer.kind === "unknown" ? NEGATIVE_TTL_MS : POSITIVE_TTL_MS);

export function createMeshResolver(options: MeshResolverOptions): MeshResolver {
  const timeoutMs = options.timeoutMs ?? TIMEOUT_MS;
  // One kept-alive connection (or a few, under a burst) to tailscaled, instead of a connect per lookup.
  const agent = new Agent({ keepAlive: true, maxSockets: 4 });
  const cache = new Map<string, { peer: MeshPeer; until: number }>();
  const pending = new Map<string, Promise<MeshPeer>>();
  let available: boolean | undefined;

  const report = (now: boolean, reason: string) => {
    if (available !== now) options.onAvailability?.(now, reason);
    available = now;
  };

  function whois(address: string, port: number, attempt = 0): Promise<MeshPeer> {
    const addr = `${isIP(address) === 6 ? `[${address}]` : address}:${port}`;
    return new Promise<MeshPeer>((resolve) => {
      const call = httpRequest(
        { socketPath: options.socketPath, agent, path: `/localapi/v0/whois?addr=${encodeURIComponent(addr)}`, method: "GET", headers: { host: "local-tailscaled.sock" }, timeout: timeoutMs },
        (response) => {
          let body = "";
          response.setEncoding("utf8");
          response.on("data", (chunk: string) => (body += chunk));
          response.on("error", () => resolve(UNAVAILABLE));
          response.on("end", () => {
            const status = response.statusCode ?? 0;
            if (status === 404) {
              report(true, "");
              return resolve(UNKNOWN);
            }
            if (status !== 200) {
              report(false, `whois answered ${status}: ${body.trim().split("\n")[0]?.slice(0, 120) ?? ""}`);
              return resolve(UNAVAILABLE);
            }
            try {
              const peer = classifyWhoIs(JSON.parse(body) as WhoIsResponse);
              report(peer.kind !== "unavailable", "whois answered without a node or user id");
              resolve(peer);
            } catch {
              report(false, "whois answered no JSON");
              resolve(UNAVAILABLE);
            }
          });
        },
      );
      call.on("timeout", () => call.destroy(new Error(`no answer in ${timeoutMs} ms`)));
      call.on("error", (error: NodeJS.ErrnoException) => {
        // A kept-alive connection tailscaled closed while idle: ask once more on a fresh one.
        if (attempt === 0 && call.reusedSocket && (error.code === "ECONNRESET" || error.code === "EPIPE")) return resolve(whois(address, port, 1));
        report(false, error.code ?? error.message);
        resolve(UNAVAILABLE);
      });
      call.end();
    });
  }

  return {
    lookup(address, port) {
      if (options.trustLoopback && isLoopback(address)) return LOOPBACK;
      const now = performance.now();
      const hit = cache.get(address);
      if (hit && hit.until > now) return hit.peer;
      const inFlight = pending.get(address);
      if (inFlight) return inFlight;
      const answer = whois(address, port).then((peer) => {
        pending.delete(address);
        if (cache.size >= MAX_ENTRIES) {
          const at = performance.now();
          for (const [key, entry] of cache) if (entry.until <= at) cache.delete(key);
          if (cache.size >= MAX_ENTRIES) cache.clear();
        }
        cache.set(address, { peer, until: performance.now() + ttlOf(peer) });
        return peer;
      });
      pending.set(address, answer);
      return answer;
    },
    close() {
      agent.destroy();
    },
  };
}

/** Whether a request carries credentials the core will check (then, and only then, it needs the peer's owner). */
export function carriesCredentials(headers: { authorization?: string | undefined }, target: string): boolean {
  return headers.authorization !== undefined || /[?&]ticket=/.test(target);
}
