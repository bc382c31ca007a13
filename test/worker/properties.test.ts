/** Property tests (fast-check) for the two parsers every request goes through. */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { parseBearer } from "../../src/auth/bearer";
import { normalizePath } from "../../src/shared/path";

const b64char = fc.constantFrom(..."ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/".split(""));
const b64token = fc
  .tuple(fc.array(b64char, { minLength: 1, maxLength: 64 }), fc.nat({ max: 3 }))
  .map(([chars, pad]) => chars.join("") + "=".repeat(pad));
const schemeCase = fc.array(fc.boolean(), { minLength: 6, maxLength: 6 }).map((upper) =>
  "bearer".split("").map((char, index) => (upper[index] ? char.toUpperCase() : char)).join(""),
);

describe("parseBearer", () => {
  it("accepts exactly one b64token under any case of the scheme", () => {
    fc.assert(
      fc.property(schemeCase, b64token, fc.integer({ min: 1, max: 3 }), (scheme, token, spaces) => {
        expect(parseBearer(`${scheme}${" ".repeat(spaces)}${token}`)).toEqual({ kind: "token", token });
      }),
    );
  });

  it("never throws and never accepts a credential with a character outside b64token", () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 80 }), (tail) => {
        const result = parseBearer(`Bearer ${tail}`);
        if (result.kind === "token") {
          expect(result.token).toMatch(/^[A-Za-z0-9\-._~+/]+=*$/);
          expect(`Bearer ${tail}`.replace(/^Bearer +/, "")).toBe(result.token);
        }
      }),
    );
  });

  it("never accepts two credentials", () => {
    fc.assert(
      fc.property(b64token, b64token, fc.constantFrom(", ", ",", " "), (first, second, separator) => {
        expect(parseBearer(`Bearer ${first}${separator}Bearer ${second}`).kind).toBe("malformed");
      }),
    );
  });
});

const segmentChars = fc.constantFrom(..."abcXYZ019-._~!$&'()*+,;=:@%/\\2eEfF5c0".split(""));
const rawPath = fc
  .array(fc.array(segmentChars, { maxLength: 8 }).map((chars) => chars.join("")), { minLength: 1, maxLength: 6 })
  .map((segments) => `/${segments.join("/")}`);

describe("normalizePath", () => {
  it("never throws; what it accepts is canonical, idempotent and free of separators and dot segments", () => {
    fc.assert(
      fc.property(fc.oneof(rawPath, fc.string({ maxLength: 40 }).map((text) => `/${text}`)), (path) => {
        const result = normalizePath(path);
        if (!result.ok) return;
        expect(normalizePath(result.path)).toEqual(result);
        expect(result.path).not.toMatch(/\/\/|\\/);
        for (const segment of result.segments) {
          // eslint-disable-next-line no-control-regex
          expect(segment).not.toMatch(/[/\\%\u0000-\u001f\u007f]/);
          expect(segment).not.toMatch(/^\.{1,2}(;.*)?$/);
        }
      }),
      { numRuns: 2_000 },
    );
  });

  it("rejects every path containing an encoded separator or dot, whatever the case", () => {
    fc.assert(
      fc.property(rawPath, fc.constantFrom("%2f", "%2F", "%5c", "%5C", "%2e%2e", "%2E%2e", ".%2e", "%00", "%252f"), (path, evil) => {
        const hostile = `${path}/${evil}/x`;
        expect(normalizePath(hostile).ok).toBe(false);
      }),
    );
  });

  it("keeps plain paths exactly as they are", () => {
    fc.assert(
      fc.property(fc.array(fc.stringMatching(/^[a-zA-Z0-9_-]{1,10}$/), { minLength: 1, maxLength: 5 }), (segments) => {
        const path = `/${segments.join("/")}`;
        expect(normalizePath(path)).toEqual({ ok: true, segments, path });
      }),
    );
  });

  it.each([
    ["/v2/../sd", false],
    ["/v2/./x", false],
    ["/v2/%2e%2e/sd", false],
    ["/v2/.%2E/sd", false],
    ["/v2\\..\\sd", false],
    ["/v2/x/", true],
    ["/v2/caf%c3%a9", true],
    ["/v2/a%20b", true],
  ])("%s → ok=%s", (path, ok) => {
    expect(normalizePath(path).ok).toBe(ok);
  });

  it("re-encodes canonically: upper-case escapes, reserved path characters literal", () => {
    expect(normalizePath("/v2/caf%c3%a9/a%3ab/%41")).toMatchObject({ ok: true, path: "/v2/caf%C3%A9/a:b/A" });
  });
});
