/**
 * The one refusal idiom (issue 11): every layer refuses by throwing a `Refused` built from the
 * catalogue in src/shared/refusals.ts (the edge writes the same catalogue itself), and one
 * `onError` (`answerError`, for the gateway and the admin API alike) turns whatever was thrown into
 * the response. `Refused` is a Hono `HTTPException`, so Hono's own middleware refusals take the same
 * road.
 */
import type { ErrorHandler } from "hono";
import { HTTPException } from "hono/http-exception";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { refusalJson, refusals, type ErrorBody, type Refusal } from "../shared/refusals";
import { isStorageFailure } from "../storage/failure";

export { REALM } from "../shared/refusals";

/** A refusal on its way to the client; `headers` are added to the catalogue's own (e.g. quota state). */
export class Refused extends HTTPException {
  readonly refusal: Refusal;
  constructor(refusal: Refusal, headers?: Record<string, string>) {
    super(refusal.status as ContentfulStatusCode, { message: refusal.message });
    this.refusal = headers ? { ...refusal, headers: { ...refusal.headers, ...headers } } : refusal;
  }

  override getResponse(): Response {
    return new Response(refusalJson(this.refusal), {
      status: this.refusal.status,
      headers: { "content-type": "application/json; charset=utf-8", "cache-control": "no-store", ...this.refusal.headers },
    });
  }
}

/** A refusal that is not in the catalogue (the admin API's own conflicts and lookups). */
export function gatewayError(status: ContentfulStatusCode, body: ErrorBody, headers?: Record<string, string>): Refused {
  return new Refused({ status, ...body, ...(headers ? { headers } : {}) });
}

type Throwers = { [K in keyof typeof refusals]: (...args: Parameters<(typeof refusals)[K]>) => Refused };

/** `throw errors.notFound()`: each catalogue entry, as a `Refused`. */
export const errors = Object.fromEntries(
  Object.entries(refusals).map(([name, make]) => [name, (...args: unknown[]) => new Refused((make as (...args: unknown[]) => Refusal)(...args))]),
) as Throwers;

/**
 * The one `onError`: a refusal is answered as it is; a storage failure is retryable and the
 * operator's to fix (503); anything else is a 500 without a stack trace or internal detail (the
 * operator sees it in the log, prefixed with `who`).
 */
export function answerError(who: string): ErrorHandler {
  return (error) => {
    if (error instanceof HTTPException) return error.getResponse();
    if (isStorageFailure(error)) {
      console.error(`${who}: storage unavailable:`, error.message);
      return errors.storageUnavailable().getResponse();
    }
    console.error(`${who}: unexpected error:`, error instanceof Error ? error.message : String(error));
    return errors.internal().getResponse();
  };
}
