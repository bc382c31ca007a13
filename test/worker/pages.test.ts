/** Gateway-owned pages (`/_halo/*`): public, locked down, and never holding a secret. */
import { SELF } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { viaEdge } from "./helpers";

describe("/_halo/connect", () => {
  it("serves the page, its script and style with a strict CSP and no caching", async () => {
    for (const [path, type] of [
      ["/_halo/connect", "text/html"],
      ["/_halo/connect.js", "text/javascript"],
      ["/_halo/connect.css", "text/css"],
    ] as const) {
      const response = await SELF.fetch(`http://gateway.test${path}`, { headers: viaEdge() });
      expect(response.status, path).toBe(200);
      expect(response.headers.get("content-type")).toContain(type);
      expect(response.headers.get("content-security-policy")).toContain("default-src 'none'");
      expect(response.headers.get("content-security-policy")).toContain("script-src 'self'");
      expect(response.headers.get("cache-control")).toBe("no-store");
      expect(response.headers.get("x-frame-options")).toBe("DENY");
      const body = await response.text();
      expect(body).not.toMatch(/sk-halo-[0-9a-f]{32}|127\.0\.0\.1/);
    }
  });

  it("keeps the token in memory: no storage API, and the page has no inline script", async () => {
    const script = await (await SELF.fetch("http://gateway.test/_halo/connect.js", { headers: viaEdge() })).text();
    expect(script).not.toMatch(/localStorage|sessionStorage|document\.cookie|indexedDB/);
    const page = await (await SELF.fetch("http://gateway.test/_halo/connect", { headers: viaEdge() })).text();
    expect(page).not.toMatch(/<script>(?!<)/);
    expect(page).toContain('<script src="/_halo/connect.js"></script>');
  });

  it("answers anything else under /_halo with 404 JSON", async () => {
    const response = await SELF.fetch("http://gateway.test/_halo/admin", { headers: viaEdge() });
    expect(response.status).toBe(404);
    expect(response.headers.get("content-type")).toMatch(/^application\/json/);
  });
});
