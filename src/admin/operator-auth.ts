/**
 * Operator authentication for the admin API: `Authorization: Bearer <operator token>`, compared by
 * SHA-256 against `ADMIN_TOKEN_SHA256` (set by `halo-gate serve` from the 0600 token file in the
 * state dir). Without that binding the admin API is disabled rather than open.
 */
import { createMiddleware } from "hono/factory";
import { parseBearer } from "../auth/bearer";
import { hashToken } from "../auth/token";
import { gatewayError, REALM } from "../http/errors";
import { timingSafeEqual } from "../http/timing-safe";

/**
 * @example
 * admin.use(operatorAuth({ tokenSha256: (c) => c.env.ADMIN_TOKEN_SHA256 }));
 */
export function operatorAuth(options: { tokenSha256: (env: Env) => string | undefined }) {
  return createMiddleware<{ Bindings: Env }>(async (c, next) => {
    const expected = options.tokenSha256(c.env);
    if (!expected) {
      throw gatewayError(503, { message: "The admin API is disabled: no operator token is configured.", type: "server_error", code: "admin_disabled" });
    }
    const credential = parseBearer(c.req.header("authorization"));
    const presented = credential.kind === "token" ? await hashToken(credential.token) : "";
    if (!timingSafeEqual(presented, expected)) {
      throw gatewayError(
        401,
        { message: "Missing or wrong operator token (see operator-token in the state dir).", type: "invalid_request_error", code: "invalid_operator_token" },
        { "www-authenticate": `${REALM}, error="invalid_token"` },
      );
    }
    await next();
  });
}
