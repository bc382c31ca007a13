/**
 * Decode and normalise the request path exactly once, refusing anything a proxy and its upstream
 * could read differently (the CVE families of path-prefix bypass: `..`, `%2e`, `%2f`, `%5c`, double
 * encoding, `//`, NUL, overlong UTF-8). The route is chosen on the result and the upstream receives
 * the same segments re-encoded canonically, so gateway and upstream always agree on the path.
 */
export type NormalizedPath = { ok: true; segments: string[]; path: string } | { ok: false; reason: string };

const VALID_RAW = /^[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*$/;
const BAD_ESCAPE = /%(?![0-9A-Fa-f]{2})/;
// Decoded characters that must never appear inside a segment.
// eslint-disable-next-line no-control-regex
const FORBIDDEN_DECODED = /[\u0000-\u001f\u007f/\\%]/;
const DOT_SEGMENT = /^\.{1,2}(;.*)?$/;

/** `rawPath` is the path as sent, percent-encoded, starting with "/" and without the query. */
export function normalizePath(rawPath: string): NormalizedPath {
  if (!rawPath.startsWith("/")) return { ok: false, reason: "the path must start with /" };
  if (!VALID_RAW.test(rawPath)) return { ok: false, reason: "the path contains characters that must be percent-encoded" };
  if (BAD_ESCAPE.test(rawPath)) return { ok: false, reason: "the path has a malformed percent-escape" };
  const rawSegments = rawPath.slice(1).split("/");
  const segments: string[] = [];
  for (const [index, raw] of rawSegments.entries()) {
    const last = index === rawSegments.length - 1;
    if (raw === "" && !last) return { ok: false, reason: "the path contains an empty segment (//)" };
    let decoded: string;
    try {
      decoded = decodeURIComponent(raw); // throws on invalid or overlong UTF-8
    } catch {
      return { ok: false, reason: "the path is not valid percent-encoded UTF-8" };
    }
    if (FORBIDDEN_DECODED.test(decoded)) {
      return { ok: false, reason: "the path contains an encoded separator, control character or double encoding" };
    }
    if (DOT_SEGMENT.test(decoded)) return { ok: false, reason: "the path contains a dot segment (. or ..)" };
    segments.push(decoded);
  }
  return { ok: true, segments, path: `/${segments.map(encodeSegment).join("/")}` };
}

/** Canonical percent-encoding of one decoded segment (RFC 3986 pchar kept literal). */
export function encodeSegment(segment: string): string {
  return encodeURIComponent(segment).replace(/%(24|26|2B|2C|3B|3D|3A|40)/g, (escape) =>
    decodeURIComponent(escape),
  );
}

/** The raw path and query of a request URL, as the client sent them (no URL-parser normalisation). */
export function splitRequestTarget(url: string): { rawPath: string; rawQuery: string } {
  const afterScheme = url.indexOf("//");
  const pathStart = url.indexOf("/", afterScheme === -1 ? 0 : afterScheme + 2);
  const target = pathStart === -1 ? "/" : url.slice(pathStart);
  const hash = target.indexOf("#");
  const withoutHash = hash === -1 ? target : target.slice(0, hash);
  const query = withoutHash.indexOf("?");
  return query === -1
    ? { rawPath: withoutHash, rawQuery: "" }
    : { rawPath: withoutHash.slice(0, query), rawQuery: withoutHash.slice(query) };
}
