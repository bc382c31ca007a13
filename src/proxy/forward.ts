/**
 * Forward one admitted request to its upstream: bodies stream both ways (SSE is never buffered),
 * the body limit is enforced while streaming, and failures map to 413 / 502 / 504.
 */
import type { RouteConfig } from "../shared/config";
import { errors } from "../http/errors";
import { clientResponseHeaders, upstreamRequestHeaders, type UpstreamIdentity } from "../shared/header-allowlist";
import { upstreamUrl } from "../shared/routes";

export interface ForwardOptions {
  route: RouteConfig;
  canonicalPath: string;
  rawQuery: string;
  identity: UpstreamIdentity | null;
  clientAddress: string;
  upstreamTimeoutMs: number;
  bodyLimitBytes: number;
  /** A body already read and rewritten by the gateway (metered endpoints), sent instead of the client's. */
  bodyOverride?: string | undefined;
  /** Cancels the upstream request: the token was revoked, or the client is gone (src/quota/slot.ts). */
  cancel?: AbortSignal;
}

class BodyTooLarge extends Error {}
class UpstreamTimeout extends Error {}

export async function forward(request: Request, options: ForwardOptions): Promise<Response> {
  const webSocket = request.headers.get("upgrade")?.toLowerCase() === "websocket";
  const url = upstreamUrl(options.route, options.canonicalPath, options.rawQuery);
  const headers = upstreamRequestHeaders(request.headers, options.identity, options.clientAddress, webSocket);
  const controller = new AbortController();
  let body: LimitedBody;
  if (options.bodyOverride !== undefined) {
    headers.delete("content-length"); // the runtime sets the rewritten body's length
    body = { stream: null, exceeded: () => false };
  } else {
    body = limitedBody(request, options.bodyLimitBytes, controller);
  }
  // A client that goes away aborts the upstream request too (needs the enable_request_signal flag),
  // and so does a cancelled slot — also one cancelled before this call, whose "abort" event has passed
  // (a client that left while its request waited for the hold or its body would have been forwarded).
  for (const signal of [request.signal, options.cancel]) {
    if (signal?.aborted) controller.abort(signal.reason);
    else signal?.addEventListener("abort", () => controller.abort(signal.reason), { once: true });
  }
  const timer = setTimeout(() => controller.abort(new UpstreamTimeout()), options.upstreamTimeoutMs);
  // Replayable: nothing to send, or a body the gateway holds (issue 9: llama-server advertises
  // keep-alive and then closes the connection after a streamed reply, so the next request on that
  // pooled connection is reset before any answer — issue 9 saw 7 × 502 in 30; not reproduced here
  // with Debian's llama-server and a tiny model, with or without this retry).
  const replayable = options.bodyOverride !== undefined || body.stream === null;
  let upstream: Response | undefined;
  try {
    for (let attempt = 0; upstream === undefined; attempt++) {
      try {
        upstream = await fetch(url, {
          method: request.method,
          headers,
          body: options.bodyOverride ?? body.stream,
          redirect: "manual",
          signal: controller.signal,
        });
      } catch (error) {
        if (attempt === 0 && replayable && !controller.signal.aborted) continue;
        throw error;
      }
    }
  } catch {
    if (body.exceeded()) throw errors.payloadTooLarge(options.bodyLimitBytes);
    if (controller.signal.reason instanceof UpstreamTimeout) {
      throw errors.upstreamTimeout(Math.round(options.upstreamTimeoutMs / 1000));
    }
    // (Also when the client has gone and aborted it: nobody reads this answer, but it is not a crash.)
    throw errors.upstreamUnavailable();
  } finally {
    // Only the wait for response headers is bounded: a started stream has no total time limit.
    clearTimeout(timer);
  }
  if (upstream.webSocket) {
    return new Response(null, { status: 101, webSocket: upstream.webSocket, headers: clientResponseHeaders(upstream.headers) });
  }
  return new Response(upstream.body, {
    status: upstream.status,
    statusText: upstream.statusText,
    headers: clientResponseHeaders(upstream.headers),
  });
}

/** The declared Content-Length (null when chunked); 413 at once when it is over the limit. */
function declaredLength(request: Request, limit: number): string | null {
  const declared = request.headers.get("content-length");
  if (declared !== null && Number(declared) > limit) throw errors.payloadTooLarge(limit);
  return declared;
}

interface LimitedBody {
  stream: ReadableStream<Uint8Array> | null;
  /** True once an undeclared (chunked) body grew past the limit and was cut off. */
  exceeded(): boolean;
}

/**
 * The request body, refused up front when its declared length is over the limit and cut off while
 * streaming when an undeclared (chunked) body grows past it. Cutting off must abort the upstream
 * request: measured on workerd, a body stream that merely errors is ended *cleanly* upstream, so
 * the upstream would receive a truncated body as if it were complete.
 */
function limitedBody(request: Request, limit: number, upstream: AbortController): LimitedBody {
  const declared = declaredLength(request, limit);
  // A declared length is enforced by the runtime itself: the body cannot outgrow it.
  if (!request.body || declared !== null) return { stream: request.body, exceeded: () => false };
  let seen = 0;
  let exceeded = false;
  const stream = request.body.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        if (exceeded) return;
        seen += chunk.byteLength;
        if (seen > limit) {
          exceeded = true;
          // Aborting the fetch cancels this stream (and the client body behind it) in turn.
          upstream.abort(new BodyTooLarge());
          return;
        }
        controller.enqueue(chunk);
      },
    }),
  );
  return { stream, exceeded: () => exceeded };
}

/** The whole body as text, refused with 413 past the limit (declared or streamed). */
export async function readBodyText(request: Request, limit: number): Promise<string> {
  declaredLength(request, limit);
  if (!request.body) return "";
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    // A body cut short (its client went away) is the client's doing: a 400, not an unexpected error.
    const { value, done } = await reader.read().catch(() => {
      throw errors.badRequest("The request body ended before it was complete.", "incomplete_body");
    });
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel();
      throw errors.payloadTooLarge(limit);
    }
    chunks.push(value);
  }
  const joined = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    joined.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return new TextDecoder().decode(joined);
}
