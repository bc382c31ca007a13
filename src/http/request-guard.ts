/**
 * Deny-by-default request screening, before any routing or upstream contact: odd methods, header
 * values carrying CR/LF/NUL, and paths that a proxy and its upstream could read differently.
 */
import { createMiddleware } from "hono/factory";
import { errors } from "./errors";
import { ALLOWED_METHODS } from "../shared/methods";
import { normalizePath, splitRequestTarget } from "../shared/path";

export type GuardVariables = {
  /** The request path, decoded and normalised once, re-encoded canonically. */
  canonicalPath: string;
  /** The query string exactly as the client sent it, with its leading "?" (or ""). */
  rawQuery: string;
};

// eslint-disable-next-line no-control-regex
const UNSAFE_HEADER_VALUE = /[\u0000\r\n]/;

/**
 * @example
 * app.use(requestGuard());
 * app.get("/x", (c) => c.text(c.var.canonicalPath));
 */
export function requestGuard() {
  return createMiddleware<{ Variables: GuardVariables }>(async (c, next) => {
    const method = c.req.method;
    if (!ALLOWED_METHODS.has(method)) throw errors.methodNotAllowed(method.replace(/[^A-Z0-9_-]/gi, "?").slice(0, 20));
    for (const [name, value] of c.req.raw.headers) {
      if (UNSAFE_HEADER_VALUE.test(value)) throw errors.badRequest(`Header ${name} contains a forbidden character.`);
    }
    const { rawPath, rawQuery } = splitRequestTarget(c.req.url);
    // eslint-disable-next-line no-control-regex
    if (/[\u0000-\u001f\u007f]/.test(rawQuery)) throw errors.badRequest("The query string contains a control character.");
    const normalized = normalizePath(rawPath);
    if (!normalized.ok) throw errors.badRequest(`Rejected path: ${normalized.reason}.`, "invalid_path");
    c.set("canonicalPath", normalized.path);
    c.set("rawQuery", rawQuery);
    await next();
  });
}
