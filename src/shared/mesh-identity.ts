/**
 * Mesh-bound tokens (issue 10): a token works only from a device of the mesh user it was issued for.
 *
 * Who owns the peer is learned by `halo-gate serve`'s edge from the local tailscaled (its LocalAPI
 * `whois`, see cli/serve/mesh-identity.ts) and passed to the core in the headers below, trusted
 * only beside the per-boot edge secret (src/http/client-address.ts; the edge drops every
 * client-sent `x-halo-*` header first). The comparison itself is `meshVerdict`, made by the user's
 * `UserQuota` object in the same call that confirms the token, against the `mesh_user` it loaded
 * with the user's tokens. Pure TypeScript, no Node or Workers APIs: the edge imports it too.
 *
 * The headers, as the edge sends them:
 *   x-halo-mesh: user         x-halo-mesh-user: <UserProfile.ID>  x-halo-mesh-node: <node name>
 *   x-halo-mesh: tagged       x-halo-mesh-node: <node name>       (a tagged node: no user)
 *   x-halo-mesh: unknown      (tailscaled does not know the address: not a mesh device)
 *   x-halo-mesh: unavailable  (tailscaled could not answer)
 *   x-halo-mesh: loopback     (an on-box peer, trusted while mesh.trust_loopback)
 * Absent: the edge did not look (no credentials on the request), which the core, when it does need
 * the answer, takes as `unavailable` (fail-closed).
 */
import type { GatewayConfig } from "./config";

export const MESH_HEADER = "x-halo-mesh";
export const MESH_USER_HEADER = "x-halo-mesh-user";
export const MESH_NODE_HEADER = "x-halo-mesh-node";

/** What the edge learned of a request's peer. */
export type MeshPeer =
  | { kind: "user"; user: string; device: string }
  | { kind: "tagged"; device: string }
  | { kind: "unknown" }
  | { kind: "unavailable" }
  | { kind: "loopback" };

/** The device name recorded for an on-box peer (`list`'s LAST DEVICE, audit `detail.device`). */
export const LOOPBACK_DEVICE = "loopback";

/** A mesh user id: Headscale's numeric user id (tailscale's UserProfile.ID). */
export const MESH_USER_PATTERN = /^[0-9]{1,20}$/;

/** A node name as it may travel in a header and be stored: DNS-label characters, bounded. */
export function cleanDeviceName(name: string): string {
  const cleaned = name.replace(/[^A-Za-z0-9._-]/g, "").slice(0, 63);
  return cleaned || "unnamed";
}

/** The headers that carry `peer` from the edge to the core. */
export function meshHeaders(peer: MeshPeer): Array<[string, string]> {
  switch (peer.kind) {
    case "user":
      return [[MESH_HEADER, "user"], [MESH_USER_HEADER, peer.user], [MESH_NODE_HEADER, cleanDeviceName(peer.device)]];
    case "tagged":
      return [[MESH_HEADER, "tagged"], [MESH_NODE_HEADER, cleanDeviceName(peer.device)]];
    default:
      return [[MESH_HEADER, peer.kind]];
  }
}

/** The peer the edge described; anything absent or malformed is `unavailable` (fail-closed). */
export function parseMeshHeaders(headers: Headers): MeshPeer {
  const kind = headers.get(MESH_HEADER);
  const device = cleanDeviceName(headers.get(MESH_NODE_HEADER) ?? "");
  switch (kind) {
    case "user": {
      const user = headers.get(MESH_USER_HEADER) ?? "";
      return MESH_USER_PATTERN.test(user) ? { kind: "user", user, device } : { kind: "unavailable" };
    }
    case "tagged":
      return { kind: "tagged", device };
    case "unknown":
    case "unavailable":
    case "loopback":
      return { kind };
    default:
      return { kind: "unavailable" };
  }
}

/** What the user's object is asked to check: the policy and what the edge saw. */
export interface MeshCheck {
  mode: "warn" | "enforce";
  allowTagged: boolean;
  peer: MeshPeer;
}

/** The check for a request under `config`, or undefined when it is off (config, or no edge in front). */
export function meshCheck(config: GatewayConfig, peer: MeshPeer | null): MeshCheck | undefined {
  if (config.mesh.identity === "off" || peer === null) return undefined;
  return { mode: config.mesh.identity, allowTagged: config.mesh.allow_tagged, peer };
}

/**
 * Why a request would be refused: the peer is another user's device, not a mesh device, a tagged
 * node (without `allow_tagged`), the token's user has no mesh user recorded, or tailscaled could
 * not say.
 */
export type MeshFinding = "other_user" | "unknown" | "tagged" | "unbound" | "unavailable";

export type MeshVerdict =
  /** The token's owner's own device (or a trusted one): nothing to record. */
  | { kind: "match"; device: string | null }
  /** `warn`: admitted, and recorded as a would-deny. */
  | { kind: "warn"; finding: MeshFinding; device: string | null }
  /** `enforce`: refused (403, or 503 for `unavailable`). */
  | { kind: "refuse"; finding: MeshFinding; device: string | null };

/** The device a peer names, for the record. */
export const deviceOf = (peer: MeshPeer): string | null =>
  peer.kind === "user" || peer.kind === "tagged" ? peer.device : peer.kind === "loopback" ? LOOPBACK_DEVICE : null;

/**
 * The decision table. `meshUser` is the token's owner's recorded mesh user (null: none recorded).
 *
 * | peer        | mesh_user matches | other / none recorded | warn           | enforce        |
 * |-------------|-------------------|-----------------------|----------------|----------------|
 * | loopback    | match             | match                 | —              | —              |
 * | user        | match             | other_user / unbound  | admit + record | 403            |
 * | tagged      | match if allow_tagged, else tagged        | admit + record | 403            |
 * | unknown     | unknown                                   | admit + record | 403            |
 * | unavailable | unavailable                               | admit + record | 503            |
 */
export function meshVerdict(check: MeshCheck, meshUser: string | null): MeshVerdict {
  const { peer } = check;
  const device = deviceOf(peer);
  let finding: MeshFinding | null;
  switch (peer.kind) {
    case "loopback":
      finding = null;
      break;
    case "user":
      finding = meshUser === null ? "unbound" : meshUser === peer.user ? null : "other_user";
      break;
    case "tagged":
      finding = check.allowTagged ? null : "tagged";
      break;
    default:
      finding = peer.kind;
  }
  if (finding === null) return { kind: "match", device };
  return { kind: check.mode === "enforce" ? "refuse" : "warn", finding, device };
}

/** The audit reason of a finding: `mesh_unavailable` when tailscaled could not answer, else `mesh_mismatch`. */
export const meshAuditReason = (finding: MeshFinding) => (finding === "unavailable" ? "mesh_unavailable" : "mesh_mismatch");
