/**
 * The certificate `serve --tls` serves: the self-signed one in <state>/tls, or the operator's file
 * named in serve.json. Clients pin its fingerprint, so doctor prints it, its names and the days
 * left; an expired certificate fails every HTTPS client, and one the running serve does not serve
 * (renewed on disk, not yet reloaded) means the pins users hold are about to change.
 */
import { createHash, X509Certificate } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { check, reason, type Check } from "./check";
import type { ServeState } from "./serve";

const DAY_MS = 86_400_000;
const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/;

export function tlsCheck(dir: string, state: ServeState, now = Date.now()): Check {
  const served = state.kind === "running" ? state.info.tls : undefined;
  const path = served?.cert_path ?? join(dir, "tls", "cert.pem");
  if (!existsSync(path)) return check("tls", "TLS certificate", "skip", `none in ${join(dir, "tls")} (serve runs plain HTTP unless --tls)`);
  let certificate: X509Certificate;
  try {
    const block = PEM_CERT.exec(readFileSync(path, "utf8"))?.[0];
    if (block === undefined) throw new Error("no PEM CERTIFICATE block");
    certificate = new X509Certificate(block);
  } catch (error) {
    return check("tls", "TLS certificate", "fail", `${path} cannot be read: ${reason(error)}`, "remove it and restart serve --tls (a new self-signed one is made), or fix --tls-cert");
  }
  const fingerprint = `sha256:${createHash("sha256").update(certificate.raw).digest("hex")}`;
  const names = (certificate.subjectAltName ?? "").split(/,\s*/).map((name) => name.replace(/^(DNS|IP Address):/, "")).filter(Boolean);
  const daysLeft = Math.floor((Date.parse(certificate.validTo) - now) / DAY_MS);
  const data = { path, fingerprint, names, days_left: daysLeft, not_after: new Date(certificate.validTo).toISOString() };
  const unused = state.kind === "running" && served === undefined ? " (not served: the running serve is plain HTTP)" : "";
  const detail = `${path}${unused}: ${names.join(", ") || "no names"}; ${daysLeft} days left; ${fingerprint}`;
  const renew = served?.self_signed === false ? "renew it (e.g. tailscale cert), then systemctl reload halo-gate" : "restart serve --tls: it makes a new self-signed certificate 30 days before expiry (users pin the new fingerprint)";
  if (daysLeft < 0) return check("tls", "TLS certificate", "fail", `${detail} — EXPIRED`, renew, data);
  if (served !== undefined && served.fingerprint !== fingerprint) {
    return check("tls", "TLS certificate", "warn", `${detail}, but the running serve serves ${served.fingerprint}`, "reload it (systemctl reload halo-gate) to serve the file's certificate", data);
  }
  if (daysLeft < 30) return check("tls", "TLS certificate", "warn", `${detail} — expires soon`, renew, data);
  return check("tls", "TLS certificate", "ok", detail, undefined, data);
}
