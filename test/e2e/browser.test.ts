/**
 * The connect page in a real browser over `serve --tls` (issue 7): Debian's Chromium, driven by
 * playwright-core, trusting only the certificate's SPKI pin, reaches the page by its mesh name and
 * gets a secure context (so the studio may use the microphone). `scripts/ensure-chromium.sh`
 * installs the browser before the suite runs; the screenshot is kept in test-artifacts/.
 */
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { chromium, type Browser } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spkiSha256Base64 } from "../../cli/serve/tls";
import { startRecordingUpstream, type RecordingUpstream } from "../support/upstream-server";
import { ROOT, startServe, testWranglerConfig, type Serve } from "./harness";

const CHROMIUM = "/usr/bin/chromium";
/** Flags for a headless Chromium on a machine with no network beyond loopback. */
const QUIET = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];

let upstream: RecordingUpstream;
let gateway: Serve;
let spki: string;
const browsers: Browser[] = [];

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  gateway = await startServe({ config: testWranglerConfig(upstream.port), args: ["--bind", "127.0.0.1:0", "--tls", "--tls-name", "strixhalo.local"] });
  spki = spkiSha256Base64(readFileSync(join(gateway.stateDir, "tls", "cert.pem"), "utf8"));
});

afterAll(async () => {
  for (const browser of browsers) await browser.close();
  await gateway?.stop();
  await upstream?.close();
});

async function launch(extra: string[]): Promise<Browser> {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: [...QUIET, `--host-resolver-rules=MAP strixhalo.local 127.0.0.1`, ...extra] });
  browsers.push(browser);
  return browser;
}

const pageUrl = () => `https://strixhalo.local:${new URL(gateway.url).port}/_halo/connect`;

describe("the connect page over HTTPS in Chromium", () => {
  it("is a secure context with the microphone API when the browser trusts the pinned certificate", async () => {
    const browser = await launch([`--ignore-certificate-errors-spki-list=${spki}`]);
    const page = await browser.newPage();
    const response = await page.goto(pageUrl());
    expect(response?.status()).toBe(200);
    // Runs in the page; written as a string because this file is typed for Node, not the DOM.
    const context = await page.evaluate("({ secure: window.isSecureContext, mediaDevices: typeof navigator.mediaDevices, protocol: location.protocol })");
    expect(context).toEqual({ secure: true, mediaDevices: "object", protocol: "https:" });
    mkdirSync(join(ROOT, "test-artifacts"), { recursive: true });
    await page.screenshot({ path: join(ROOT, "test-artifacts", "connect-https.png"), fullPage: true });
  });

  it("is refused by a browser that does not trust the certificate", async () => {
    const browser = await launch([]);
    const page = await browser.newPage();
    await expect(page.goto(pageUrl())).rejects.toThrow(/ERR_CERT/);
  });
});
