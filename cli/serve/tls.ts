/**
 * The certificate behind `serve --tls`. Either the operator's own PEM pair (e.g. from `tailscale
 * cert`), checked that the key matches the leaf, or a self-signed ECDSA P-256 certificate kept in
 * `<stateDir>/tls` (dir 0700, key 0600, written atomically) and reused across restarts while its
 * names are unchanged and it is more than 30 days from expiry, so a client that pinned its
 * fingerprint keeps working. Fingerprints are `sha256:<hex>` of the leaf's DER, the form SSH users
 * know; `spkiSha256Base64` is what Chromium's `--ignore-certificate-errors-spki-list` takes.
 */
import { createHash, createPrivateKey, randomBytes, webcrypto, X509Certificate, type KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import { chmod, mkdir, open, readFile, rename, rm } from "node:fs/promises";
import { isIP } from "node:net";
import { join } from "node:path";
import { createSecureContext } from "node:tls";
import * as x509 from "@peculiar/x509";
import ipaddr from "ipaddr.js";

export interface TlsMaterial {
  /** PEM; for an operator certificate the whole file (leaf first, then any chain). */
  cert: string;
  /** PEM private key. */
  key: string;
  /** `sha256:` + 64 lowercase hex of the leaf certificate's DER. */
  fingerprint: string;
  /** The leaf's subjectAltName entries (DNS names lowercased, IP addresses canonical). */
  names: string[];
  selfSigned: boolean;
  notAfter: Date;
  certPath: string;
}

const DAY_MS = 86_400_000;
const VALIDITY_MS = 397 * DAY_MS; // the CA/Browser Forum ceiling for a leaf
const BACKDATE_MS = 3_600_000; // tolerate a client clock up to an hour behind
const RENEW_BEFORE_MS = 30 * DAY_MS;
const PEM_CERT = /-----BEGIN CERTIFICATE-----\r?\n[\s\S]+?-----END CERTIFICATE-----/g;

/** The first (leaf) certificate block of a PEM bundle; throws when there is none. */
function leafPem(certPem: string): string {
  const block = certPem.match(PEM_CERT)?.[0];
  if (block === undefined) throw new Error("no PEM CERTIFICATE block");
  return block;
}

/** `sha256:<64 lowercase hex>` of the leaf certificate's DER. */
export function certificateFingerprint(certPem: string): string {
  return `sha256:${createHash("sha256").update(new X509Certificate(leafPem(certPem)).raw).digest("hex")}`;
}

/** Base64 SHA-256 of the leaf's SubjectPublicKeyInfo DER (Chromium's `--ignore-certificate-errors-spki-list`). */
export function spkiSha256Base64(certPem: string): string {
  const spki = new X509Certificate(leafPem(certPem)).publicKey.export({ type: "spki", format: "der" });
  return createHash("sha256").update(spki).digest("base64");
}

/** Lowercased DNS name or canonical IP address (`::1`, not `0:0:…:1`). */
function canonicalName(name: string): string {
  const trimmed = name.trim();
  if (isIP(trimmed) !== 0) return ipaddr.parse(trimmed).toString();
  return trimmed.toLowerCase();
}

/** Canonical, case-insensitively deduplicated, first occurrence kept. */
function canonicalNames(names: readonly string[]): string[] {
  return [...new Set(names.map(canonicalName).filter((name) => name !== ""))];
}

function sameNameSet(a: readonly string[], b: readonly string[]): boolean {
  const left = new Set(a);
  const right = new Set(b);
  return left.size === right.size && [...left].every((name) => right.has(name));
}

/** The DNS and IP subjectAltName entries of a leaf certificate, canonical. */
function subjectAltNames(leaf: string): string[] {
  const san = new x509.X509Certificate(leaf).getExtension(x509.SubjectAlternativeNameExtension);
  if (!san) return [];
  return canonicalNames(san.names.toJSON().filter((n) => n.type === "dns" || n.type === "ip").map((n) => n.value));
}

/** Checks that `key` is the private key of `leaf` and that Node's TLS accepts the pair. */
function assertKeyMatches(leaf: X509Certificate, cert: string, key: KeyObject, keyPem: string): void {
  if (!leaf.checkPrivateKey(key)) throw new Error("the private key does not match the certificate");
  createSecureContext({ cert, key: keyPem });
}

/** Writes via a 0600 temp file, fsync and rename, so a crash never leaves a half-written file. */
async function writeFileAtomic(path: string, data: string, mode: number): Promise<void> {
  const temp = `${path}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`;
  try {
    const handle = await open(temp, "wx", mode);
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, path);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
}

/** The stored pair when it is intact, matches, covers exactly `names` and is valid well past `now`. */
async function reusable(certPath: string, keyPath: string, names: readonly string[], now: Date): Promise<TlsMaterial | undefined> {
  try {
    const [cert, key] = await Promise.all([readFile(certPath, "utf8"), readFile(keyPath, "utf8")]);
    const leaf = leafPem(cert);
    const parsed = new X509Certificate(leaf);
    assertKeyMatches(parsed, cert, createPrivateKey(key), key);
    const notAfter = new Date(parsed.validTo);
    const notBefore = new Date(parsed.validFrom);
    if (notAfter.getTime() - now.getTime() < RENEW_BEFORE_MS || notBefore.getTime() > now.getTime()) return undefined;
    const stored = subjectAltNames(leaf);
    if (!sameNameSet(stored, names)) return undefined;
    return { cert, key, fingerprint: certificateFingerprint(leaf), names: stored, selfSigned: true, notAfter, certPath };
  } catch {
    return undefined; // missing, unreadable or corrupt: regenerate
  }
}

async function generate(names: readonly string[], now: Date): Promise<{ cert: string; key: string }> {
  x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);
  const algorithm = { name: "ECDSA", namedCurve: "P-256" };
  const keys = (await webcrypto.subtle.generateKey(algorithm, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
  const certificate = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomBytes(16).toString("hex"), // the generator strips leading zeros and keeps it positive
    name: "CN=halo-gate",
    notBefore: new Date(now.getTime() - BACKDATE_MS),
    notAfter: new Date(now.getTime() + VALIDITY_MS),
    keys,
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension(names.map((value) => ({ type: isIP(value) !== 0 ? "ip" : "dns", value }))),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey("pkcs8", keys.privateKey)).toString("base64");
  const key = `-----BEGIN PRIVATE KEY-----\n${pkcs8.replace(/.{1,64}/g, "$&\n")}-----END PRIVATE KEY-----\n`;
  return { cert: `${certificate.toString("pem")}\n`, key };
}

/**
 * The self-signed certificate in `dir` (`cert.pem`, `key.pem`), generated on first use and again
 * when the requested names differ from the stored ones (as a set, case-insensitive), when it
 * expires within 30 days, or when the files are missing or corrupt.
 */
export async function ensureSelfSignedCertificate(options: { dir: string; names: string[]; now?: Date }): Promise<TlsMaterial> {
  const now = options.now ?? new Date();
  const names = canonicalNames(options.names);
  if (names.length === 0) throw new Error("a TLS certificate needs at least one name (DNS name or IP address)");
  await mkdir(options.dir, { recursive: true, mode: 0o700 });
  await chmod(options.dir, 0o700);
  const certPath = join(options.dir, "cert.pem");
  const keyPath = join(options.dir, "key.pem");
  const existing = await reusable(certPath, keyPath, names, now);
  if (existing) return existing;
  const { cert, key } = await generate(names, now);
  // Key first: a crash between the two renames leaves a mismatched pair, which the next start
  // detects and regenerates.
  await writeFileAtomic(keyPath, key, 0o600);
  await writeFileAtomic(certPath, cert, 0o644);
  const notAfter = new Date(new X509Certificate(cert).validTo); // whole seconds, as encoded
  return { cert, key, fingerprint: certificateFingerprint(cert), names, selfSigned: true, notAfter, certPath };
}

/** The operator's PEM pair; throws naming the file on a missing file, non-PEM content or a key mismatch. */
export function loadOperatorCertificate(certPath: string, keyPath: string): TlsMaterial {
  const read = (path: string, what: string): string => {
    try {
      return readFileSync(path, "utf8");
    } catch (error) {
      throw new Error(`TLS ${what} ${path}: cannot read it (${(error as NodeJS.ErrnoException).code ?? String(error)})`);
    }
  };
  const cert = read(certPath, "certificate");
  const key = read(keyPath, "key");

  const leaf = cert.match(PEM_CERT)?.[0];
  if (leaf === undefined) throw new Error(`TLS certificate ${certPath}: not a PEM certificate (no "-----BEGIN CERTIFICATE-----" block)`);
  let parsed: X509Certificate;
  try {
    parsed = new X509Certificate(leaf);
  } catch (error) {
    throw new Error(`TLS certificate ${certPath}: the first certificate does not parse (${(error as Error).message})`);
  }
  if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(key)) throw new Error(`TLS key ${keyPath}: not a PEM private key (no "-----BEGIN … PRIVATE KEY-----" block)`);
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(key);
  } catch (error) {
    throw new Error(`TLS key ${keyPath}: cannot load the private key (${(error as Error).message}); it must be unencrypted PEM`);
  }
  try {
    assertKeyMatches(parsed, cert, privateKey, key);
  } catch (error) {
    throw new Error(`TLS key ${keyPath} does not match the certificate ${certPath} (${(error as Error).message})`);
  }
  return {
    cert,
    key,
    fingerprint: certificateFingerprint(leaf),
    names: subjectAltNames(leaf),
    selfSigned: false,
    notAfter: new Date(parsed.validTo),
    certPath,
  };
}
