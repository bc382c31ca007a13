/**
 * An admitted request's lease: renewed while the response runs, released exactly once when it
 * ends — completed, failed upstream, abandoned by the client, or closed because its token was
 * revoked or expired meanwhile — with the tokens it produced.
 */
import type { TokenIdentity } from "../auth/token-store";
import type { UsageTally } from "../metering/usage";
import { chargeableTokens } from "../metering/usage";
import type { QuotaService, RequestOutcome } from "./quota";

export interface SlotOptions {
  quota: Pick<QuotaService, "renew" | "release">;
  token: TokenIdentity;
  leaseId: string;
  leaseMs: number;
  timezone: string;
  now: () => number;
  /** What the response produced so far; read at release time. */
  tally: UsageTally;
  /** Keeps the isolate alive for the release (ExecutionContext.waitUntil). */
  waitUntil: (promise: Promise<unknown>) => void;
  /** Called once, with the final status (0: the client went away). */
  onEnd: (status: number) => void;
}

/** A second lease the request holds beside the user's: a queued route's upstream slot (issue 12). */
export interface AttachedLease {
  renew(leaseMs: number): Promise<void>;
  release(): Promise<void>;
}

export interface Slot {
  /** Time from the upstream request to its response headers, once known. */
  upstreamLatencyMs: number | null;
  /** Renewed and released with this slot from now on (released at once if the slot has ended). */
  attach(lease: AttachedLease): void;
  /**
   * Aborted when a renewal finds the token revoked or expired, or when the client is reported gone
   * (`depart`): cancel the upstream, close the stream or socket.
   */
  readonly revoked: AbortSignal;
  /** The client is gone (src/http/departures.ts): the upstream is cancelled and the slot ends as abandoned. */
  depart(): void;
  /** Whether the slot was ended because the client left (`depart`). */
  readonly departed: boolean;
  /** Resolves with the final status once `end` has been called. */
  readonly ended: Promise<number>;
  /** Ends the slot (the first call counts); resolves when the release has been recorded. */
  end(status: number, refused?: RequestOutcome["refused"]): Promise<void>;
}

/**
 * Renewals come at most this far apart, whatever the lease. Two reasons: the UserQuota object keeps
 * leases in memory, and workerd evicts an object idle for ~10 s (measured: kept after 9 s idle,
 * evicted after 11 s), so a running stream's renewals keep its object — and its leases — alive;
 * and a renewal is where a stream learns that its token was revoked, which must close it within
 * 5 s of `revoke` returning (issue 9): 4 s apart plus the call itself.
 */
export const MAX_RENEWAL_INTERVAL_MS = 4_000;

/**
 * A departed slot ends this long after its client was reported gone, whatever its request is doing:
 * what runs before the upstream request (the hold on the user's cap, reading the body) does not
 * watch `revoked`. Measured (an attack on the cross-route cap: clients leaving in a burst, at every
 * stage, on a metered route without a queue): with the hold's extra call, in 2 bursts of 2 one
 * request stayed pending in workerd after its client left, its lease renewed every 4 s, and its user
 * was refused on every route for minutes (test/e2e/fair-queue.test.ts); with this, every burst clears
 * within ~1 s.
 */
export const DEPARTED_END_MS = 1_000;

export function holdSlot(options: SlotOptions): Slot {
  const revocation = new AbortController();
  let attached: AttachedLease | null = null;
  const renewal = setInterval(() => {
    attached?.renew(options.leaseMs).catch(() => {});
    options.quota.renew(options.token, options.leaseId, options.leaseMs).then(
      (current) => {
        if (!current) revocation.abort(new Error("token revoked or expired"));
      },
      () => {
        // A missed renewal only shortens the lease; the release below still frees it.
      },
    );
  }, Math.min(options.leaseMs / 3, MAX_RENEWAL_INTERVAL_MS));
  let ended = false;
  let departed = false;
  let markEnded: (status: number) => void = () => {};
  const endedPromise = new Promise<number>((resolve) => (markEnded = resolve));
  const slot: Slot = {
    ended: endedPromise,
    upstreamLatencyMs: null,
    revoked: revocation.signal,
    get departed() {
      return departed;
    },
    depart() {
      if (ended || departed) return;
      departed = true;
      revocation.abort(new Error("the client went away"));
      setTimeout(() => void slot.end(0), DEPARTED_END_MS);
    },
    attach(lease) {
      if (ended) return void options.waitUntil(lease.release().catch(() => {}));
      attached = lease;
    },
    end(status, refused) {
      if (ended) return Promise.resolve();
      ended = true;
      markEnded(status);
      clearInterval(renewal);
      const outcome: RequestOutcome = { status, tokens: chargeableTokens(options.tally), upstreamLatencyMs: slot.upstreamLatencyMs, ...(refused ? { refused } : {}) };
      const released = options.quota.release(options.token.handle, options.leaseId, outcome, options.now(), options.timezone).catch((error: unknown) => {
        console.error(`halo-gate: could not release a slot of ${options.token.handle} (its lease will lapse): ${String(error)}`);
      });
      options.waitUntil(released);
      if (attached) options.waitUntil(attached.release().catch((error: unknown) => console.error(`halo-gate: could not release an upstream slot (its lease will lapse): ${String(error)}`)));
      options.onEnd(status);
      return released;
    },
  };
  return slot;
}

const encoder = new TextEncoder();

/** The last event of an SSE stream that did not end well: OpenAI's error shape, which the SDKs raise. */
function sseError(code: string, message: string): Uint8Array {
  return encoder.encode(`data: ${JSON.stringify({ error: { message, type: code === "token_revoked" ? "invalid_request_error" : "upstream_error", code } })}\n\n`);
}

/**
 * The body the client gets, and the slot ended when the body has ended, however it ended (issue 9),
 * exactly once:
 *   - delivered in full: the upstream's status;
 *   - the client went away: 0 (the upstream request is cancelled with it);
 *   - the upstream broke mid-body: 502, and the client never sees a clean end — an SSE stream gets
 *     a final `data: {"error": …}` event (which the OpenAI SDKs raise), any other body is aborted;
 *   - the token was revoked or expired meanwhile: the upstream is cancelled, and an SSE stream ends
 *     with a `token_revoked` error event.
 * A non-SSE body passes a native pipe (issue 8: a JavaScript stream cost 100–250 µs a request, a
 * native pipe ~36). An SSE stream is read by hand: measured on workerd, a native pipe whose source
 * fails leaves its writable errored (even with `preventAbort`), so nothing can follow the failure.
 */
export function watchBody(
  body: ReadableStream<Uint8Array>,
  slot: Slot,
  status: number,
  context: { signal: AbortSignal | undefined; waitUntil: (promise: Promise<unknown>) => void; sse: boolean },
): ReadableStream<Uint8Array> {
  const clientGone = () => context.signal?.aborted === true || slot.departed;
  if (!context.sse) {
    const { readable, writable } = new IdentityTransformStream();
    // The pipe outlives the handler's return: the context is kept until it (and the release) is done.
    context.waitUntil(
      body.pipeTo(writable, { signal: slot.revoked }).then(
        () => slot.end(status),
        () => slot.end(clientGone() ? 0 : slot.revoked.aborted ? status : 502),
      ),
    );
    return readable;
  }
  const reader = body.getReader();
  let released: (value: Promise<void>) => void = () => {};
  context.waitUntil(new Promise<void>((resolve) => (released = (value) => void value.then(resolve))));
  const finish = (finalStatus: number) => released(slot.end(finalStatus));
  slot.revoked.addEventListener(
    "abort",
    () => {
      void reader.cancel(slot.revoked.reason).catch(() => {});
      // A departed client will never pull again (it may never have): the slot ends now.
      if (slot.departed) finish(0);
    },
    { once: true },
  );
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await reader.read();
        } catch {
          chunk = { done: true, value: undefined };
          if (clientGone()) return finish(0);
          if (!slot.revoked.aborted) {
            controller.enqueue(sseError("stream_interrupted", "The compute service stopped in the middle of this answer; it is incomplete."));
            controller.close();
            return finish(502);
          }
        }
        if (!chunk.done) return controller.enqueue(chunk.value);
        if (slot.revoked.aborted) controller.enqueue(sseError("token_revoked", "This token was revoked or has expired; the stream was closed."));
        controller.close();
        finish(status);
      },
      cancel(reason) {
        void reader.cancel(reason).catch(() => {});
        finish(0);
      },
    },
    { highWaterMark: 0 },
  );
}
