/** The `serve --tls` certificate: generated, kept, renewed and pinned; the operator's own pair checked. */
import { execFileSync } from "node:child_process";
import { createPrivateKey, X509Certificate } from "node:crypto";
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer, request, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { checkServerIdentity, type PeerCertificate } from "node:tls";
import * as x509 from "@peculiar/x509";
import { afterAll, describe, expect, it } from "vitest";
import { certificateFingerprint, ensureSelfSignedCertificate, loadOperatorCertificate, spkiSha256Base64, type TlsMaterial } from "../../cli/serve/tls";

const DAY_MS = 86_400_000;
const NAMES = ["localhost", "127.0.0.1", "::1", "halo.tail1234.ts.net", "fd7a:115c:a1e0::5"];

const dirs: string[] = [];
const tempDir = (): string => {
  const dir = mkdtempSync(join(tmpdir(), "halo-gate-tls-"));
  dirs.push(dir);
  return dir;
};
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

const derToPem = (der: Buffer): string => `-----BEGIN CERTIFICATE-----\n${der.toString("base64").replace(/.{1,64}/g, "$&\n")}-----END CERTIFICATE-----\n`;
const mode = (path: string): number => statSync(path).mode & 0o777;

const hasOpenssl = (() => {
  try {
    execFileSync("openssl", ["version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();

/** A matching cert/key pair in `dir`: from openssl when present, else from our own generator. */
async function makePair(dir: string, name: string, ip: string): Promise<{ certPath: string; keyPath: string }> {
  const certPath = join(dir, "cert.pem");
  const keyPath = join(dir, "key.pem");
  if (hasOpenssl) {
    execFileSync("openssl", [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30",
      "-subj", `/CN=${name}`, "-addext", `subjectAltName=DNS:${name},IP:${ip}`, "-keyout", keyPath, "-out", certPath,
    ], { stdio: "ignore" });
  } else {
    await ensureSelfSignedCertificate({ dir, names: [name, ip] });
  }
  return { certPath, keyPath };
}

async function httpsServer(material: TlsMaterial): Promise<{ server: Server; port: number }> {
  const server = createServer({ cert: material.cert, key: material.key }, (_req, res) => res.end("hello over tls"));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { server, port: (server.address() as AddressInfo).port };
}

/**
 * GET / over TLS trusting exactly `ca` and pinning `pin`. (With `rejectUnauthorized: false` Node
 * never calls checkServerIdentity for a self-signed peer, so a pin there would check nothing.)
 */
function pinnedGet(port: number, ca: string, pin: string, servername?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: "127.0.0.1",
        port,
        path: "/",
        ca,
        ...(servername === undefined ? {} : { servername }),
        agent: false,
        checkServerIdentity: (host: string, cert: PeerCertificate) => {
          const seen = certificateFingerprint(derToPem(cert.raw));
          if (seen !== pin) return new Error(`certificate pin mismatch: expected ${pin}, got ${seen}`);
          return checkServerIdentity(servername ?? host, cert); // and the SAN covers the address we dialled
        },
      },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => (body += chunk));
        res.on("end", () => resolve(body));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end();
  });
}

describe("ensureSelfSignedCertificate", () => {
  it("generates an ECDSA P-256 SHA-256 server certificate naming every DNS and IP name, key 0600 in a 0700 dir", async () => {
    const dir = join(tempDir(), "state", "tls");
    const now = new Date();
    const material = await ensureSelfSignedCertificate({ dir, names: [...NAMES, "LOCALHOST", "127.0.0.1"], now });

    expect(material.selfSigned).toBe(true);
    expect(material.certPath).toBe(join(dir, "cert.pem"));
    expect(material.names).toEqual(NAMES);
    expect(material.fingerprint).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(readFileSync(material.certPath, "utf8")).toBe(material.cert);
    expect(readFileSync(join(dir, "key.pem"), "utf8")).toBe(material.key);
    expect(mode(dir)).toBe(0o700);
    expect(mode(join(dir, "key.pem"))).toBe(0o600);
    expect(readdirSync(dir).sort()).toEqual(["cert.pem", "key.pem"]); // no temp files left behind

    const cert = new X509Certificate(material.cert);
    expect(cert.publicKey.asymmetricKeyType).toBe("ec");
    expect(cert.publicKey.asymmetricKeyDetails?.namedCurve).toBe("prime256v1");
    expect(cert.subject).toBe("CN=halo-gate");
    expect(cert.issuer).toBe("CN=halo-gate");
    expect(cert.ca).toBe(false);
    expect(cert.keyUsage).toEqual(["1.3.6.1.5.5.7.3.1"]); // Node's keyUsage is the extended key usage: serverAuth
    expect(cert.checkPrivateKey(createPrivateKey(material.key))).toBe(true);
    expect(cert.verify(cert.publicKey)).toBe(true);
    const sans = (cert.subjectAltName ?? "").split(", ").sort();
    expect(sans).toEqual(
      ["DNS:halo.tail1234.ts.net", "DNS:localhost", "IP Address:0:0:0:0:0:0:0:1", "IP Address:127.0.0.1", "IP Address:FD7A:115C:A1E0:0:0:0:0:5"].sort(),
    );
    expect(new Date(cert.validFrom).getTime()).toBeLessThanOrEqual(now.getTime() - 3_599_000);
    expect(material.notAfter.getTime()).toBe(new Date(cert.validTo).getTime());
    expect(Math.round((material.notAfter.getTime() - now.getTime()) / DAY_MS)).toBe(397);

    const parsed = new x509.X509Certificate(material.cert);
    expect(parsed.signatureAlgorithm).toMatchObject({ name: "ECDSA", hash: { name: "SHA-256" } });
    expect(parsed.serialNumber).toMatch(/^[0-9a-f]{1,32}$/i); // up to 128 random bits, kept positive
    expect(parsed.getExtension(x509.KeyUsagesExtension)?.usages).toBe(x509.KeyUsageFlags.digitalSignature);
    expect(parsed.getExtension(x509.BasicConstraintsExtension)?.ca).toBe(false);
    expect(parsed.getExtension(x509.ExtendedKeyUsageExtension)?.usages).toEqual([x509.ExtendedKeyUsage.serverAuth]);
  });

  it("serves HTTPS to a client pinned to its fingerprint and fails a client pinned to another", async () => {
    const material = await ensureSelfSignedCertificate({ dir: join(tempDir(), "tls"), names: ["localhost", "127.0.0.1"] });
    const other = await ensureSelfSignedCertificate({ dir: join(tempDir(), "tls"), names: ["localhost", "127.0.0.1"] });
    expect(other.fingerprint).not.toBe(material.fingerprint);
    expect(new X509Certificate(other.cert).serialNumber).not.toBe(new X509Certificate(material.cert).serialNumber);
    const { server, port } = await httpsServer(material);
    try {
      await expect(pinnedGet(port, material.cert, material.fingerprint)).resolves.toBe("hello over tls");
      await expect(pinnedGet(port, material.cert, material.fingerprint, "localhost")).resolves.toBe("hello over tls");
      await expect(pinnedGet(port, material.cert, other.fingerprint)).rejects.toThrow(/certificate pin mismatch/);
      await expect(pinnedGet(port, material.cert, material.fingerprint, "evil.example")).rejects.toThrow(/evil\.example/);
      // Trusting the other certificate instead fails before any pin is looked at.
      await expect(pinnedGet(port, other.cert, other.fingerprint)).rejects.toThrow();
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it("keeps the certificate across restarts for the same names in any order or case", async () => {
    const dir = join(tempDir(), "tls");
    const first = await ensureSelfSignedCertificate({ dir, names: ["localhost", "127.0.0.1", "::1"] });
    const again = await ensureSelfSignedCertificate({ dir, names: ["0:0:0:0:0:0:0:1", "LocalHost", "127.0.0.1", "localhost"] });
    expect(again.fingerprint).toBe(first.fingerprint);
    expect(again.cert).toBe(first.cert);
    expect(again.key).toBe(first.key);
    expect(again.notAfter.getTime()).toBe(first.notAfter.getTime());
  });

  it("regenerates when the names change", async () => {
    const dir = join(tempDir(), "tls");
    const first = await ensureSelfSignedCertificate({ dir, names: ["localhost", "127.0.0.1"] });
    const added = await ensureSelfSignedCertificate({ dir, names: ["localhost", "127.0.0.1", "100.101.2.3"] });
    expect(added.fingerprint).not.toBe(first.fingerprint);
    expect(new X509Certificate(added.cert).subjectAltName).toContain("IP Address:100.101.2.3");
    const removed = await ensureSelfSignedCertificate({ dir, names: ["localhost"] });
    expect(removed.fingerprint).not.toBe(added.fingerprint);
    expect(removed.names).toEqual(["localhost"]);
    expect(certificateFingerprint(readFileSync(join(dir, "cert.pem"), "utf8"))).toBe(removed.fingerprint);
  });

  it("regenerates a certificate that expires within 30 days", async () => {
    const dir = join(tempDir(), "tls");
    const old = await ensureSelfSignedCertificate({ dir, names: ["localhost"], now: new Date(Date.now() - 380 * DAY_MS) });
    expect(old.notAfter.getTime() - Date.now()).toBeLessThan(30 * DAY_MS);
    const renewed = await ensureSelfSignedCertificate({ dir, names: ["localhost"] });
    expect(renewed.fingerprint).not.toBe(old.fingerprint);
    expect(renewed.notAfter.getTime() - Date.now()).toBeGreaterThan(396 * DAY_MS);
    expect((await ensureSelfSignedCertificate({ dir, names: ["localhost"] })).fingerprint).toBe(renewed.fingerprint);
  });

  it("regenerates over corrupt, missing or mismatched files and tightens an existing dir to 0700", async () => {
    const dir = join(tempDir(), "tls");
    mkdirSync(dir, { mode: 0o755 });
    chmodSync(dir, 0o755);
    writeFileSync(join(dir, "cert.pem"), "not a certificate");
    writeFileSync(join(dir, "key.pem"), "not a key", { mode: 0o644 });
    const first = await ensureSelfSignedCertificate({ dir, names: ["localhost"] });
    expect(mode(dir)).toBe(0o700);
    expect(mode(join(dir, "key.pem"))).toBe(0o600);
    expect(new X509Certificate(first.cert).subjectAltName).toBe("DNS:localhost");

    rmSync(join(dir, "key.pem"));
    const second = await ensureSelfSignedCertificate({ dir, names: ["localhost"] });
    expect(second.fingerprint).not.toBe(first.fingerprint);

    const elsewhere = await ensureSelfSignedCertificate({ dir: join(tempDir(), "tls"), names: ["localhost"] });
    writeFileSync(join(dir, "key.pem"), elsewhere.key); // a key that is not this certificate's
    const third = await ensureSelfSignedCertificate({ dir, names: ["localhost"] });
    expect(third.fingerprint).not.toBe(second.fingerprint);
    expect(new X509Certificate(third.cert).checkPrivateKey(createPrivateKey(third.key))).toBe(true);
  });

  it("refuses an empty name list", async () => {
    await expect(ensureSelfSignedCertificate({ dir: join(tempDir(), "tls"), names: [" ", ""] })).rejects.toThrow(/at least one name/);
  });
});

describe("fingerprints", () => {
  it("is sha256 of the leaf DER and base64 sha256 of its SPKI, matching openssl", async () => {
    const material = await ensureSelfSignedCertificate({ dir: join(tempDir(), "tls"), names: ["localhost"] });
    const cert = new X509Certificate(material.cert);
    expect(certificateFingerprint(material.cert)).toBe(`sha256:${cert.fingerprint256.replaceAll(":", "").toLowerCase()}`);
    expect(spkiSha256Base64(material.cert)).toMatch(/^[A-Za-z0-9+/]{43}=$/);
    if (!hasOpenssl) return;
    const certFile = join(tempDir(), "c.pem");
    writeFileSync(certFile, material.cert);
    const opensslFingerprint = execFileSync("openssl", ["x509", "-in", certFile, "-noout", "-fingerprint", "-sha256"], { encoding: "utf8" });
    expect(opensslFingerprint.trim().split("=")[1]?.replaceAll(":", "").toLowerCase()).toBe(material.fingerprint.slice("sha256:".length));
    const spkiDer = execFileSync("openssl", ["pkey", "-pubin", "-outform", "der"], {
      input: execFileSync("openssl", ["x509", "-in", certFile, "-noout", "-pubkey"]),
    });
    const opensslSpki = execFileSync("openssl", ["dgst", "-sha256", "-binary"], { input: spkiDer }).toString("base64");
    expect(spkiSha256Base64(material.cert)).toBe(opensslSpki);
  });
});

describe("loadOperatorCertificate", () => {
  it("accepts a matching pair, naming its SANs; a chain is fingerprinted by its leaf", async () => {
    const dir = tempDir();
    const { certPath, keyPath } = await makePair(dir, "box.tail1234.ts.net", "100.101.2.3");
    const material = loadOperatorCertificate(certPath, keyPath);
    expect(material.selfSigned).toBe(false);
    expect(material.certPath).toBe(certPath);
    expect(material.names.sort()).toEqual(["100.101.2.3", "box.tail1234.ts.net"]);
    expect(material.fingerprint).toBe(certificateFingerprint(readFileSync(certPath, "utf8")));
    expect(material.notAfter.getTime()).toBe(new Date(new X509Certificate(material.cert).validTo).getTime());

    const intermediate = await ensureSelfSignedCertificate({ dir: join(tempDir(), "tls"), names: ["intermediate.example"] });
    const chainPath = join(dir, "fullchain.pem");
    writeFileSync(chainPath, readFileSync(certPath, "utf8") + intermediate.cert);
    const chained = loadOperatorCertificate(chainPath, keyPath);
    expect(chained.fingerprint).toBe(material.fingerprint);
    expect(chained.cert).toContain(intermediate.cert.trim());

    const { server, port } = await httpsServer(chained);
    try {
      await expect(pinnedGet(port, material.cert, material.fingerprint, "box.tail1234.ts.net")).resolves.toBe("hello over tls");
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it("refuses a key that is not the certificate's, naming the file", async () => {
    const a = await makePair(tempDir(), "box.tail1234.ts.net", "100.101.2.3");
    const b = await makePair(tempDir(), "box.tail1234.ts.net", "100.101.2.3");
    expect(() => loadOperatorCertificate(a.certPath, b.keyPath)).toThrow(`TLS key ${b.keyPath} does not match the certificate ${a.certPath}`);
  });

  it("refuses missing files and non-PEM content, naming the file", async () => {
    const dir = tempDir();
    const { certPath, keyPath } = await makePair(dir, "box.tail1234.ts.net", "100.101.2.3");
    const missing = join(dir, "nope.pem");
    expect(() => loadOperatorCertificate(missing, keyPath)).toThrow(`TLS certificate ${missing}: cannot read it (ENOENT)`);
    expect(() => loadOperatorCertificate(certPath, missing)).toThrow(`TLS key ${missing}: cannot read it (ENOENT)`);

    const garbage = join(dir, "garbage.pem");
    writeFileSync(garbage, "hello\n");
    expect(() => loadOperatorCertificate(garbage, keyPath)).toThrow(`TLS certificate ${garbage}: not a PEM certificate`);
    expect(() => loadOperatorCertificate(certPath, garbage)).toThrow(`TLS key ${garbage}: not a PEM private key`);
    // A key in the certificate slot and vice versa.
    expect(() => loadOperatorCertificate(keyPath, certPath)).toThrow(`TLS certificate ${keyPath}: not a PEM certificate`);

    const broken = join(dir, "broken.pem");
    writeFileSync(broken, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    expect(() => loadOperatorCertificate(broken, keyPath)).toThrow(`TLS certificate ${broken}: the first certificate does not parse`);
  });
});
