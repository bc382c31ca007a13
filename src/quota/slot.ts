/**
 * An admitted request's in-flight slot: renewed while the response runs, released exactly once
 * when it ends — completed, failed, or abandoned by the client — with the tokens it produced.
 */
import type { UsageTally } from "../metering/usage";
import { chargeableTokens } from "../metering/usage";
import type { QuotaService } from "./quota";

export interface SlotOptions {
  quota: QuotaService;
  handle: string;
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

export interface Slot {
  /** Time from the upstream request to its response headers, once known. */
  upstreamLatencyMs: number | null;
  end(status: number): void;
}

export function holdSlot(options: SlotOptions): Slot {
  const renewal = setInterval(() => {
    options.quota.renew(options.handle, options.leaseId, options.leaseMs).catch(() => {
      // A missed renewal only shortens the lease; the release below still frees it.
    });
  }, options.leaseMs / 3);
  let ended = false;
  const slot: Slot = {
    upstreamLatencyMs: null,
    end(status) {
      if (ended) return;
      ended = true;
      clearInterval(renewal);
      const outcome = { status, tokens: chargeableTokens(options.tally), upstreamLatencyMs: slot.upstreamLatencyMs };
      options.waitUntil(
        options.quota.release(options.handle, options.leaseId, outcome, options.now(), options.timezone).catch((error: unknown) => {
          console.error(`halo-gate: could not release a slot of ${options.handle} (its lease will lapse): ${String(error)}`);
        }),
      );
      options.onEnd(status);
    },
  };
  return slot;
}

/** A pass-through that ends the slot when the body has been delivered in full. */
export function endSlotWhenDone(slot: Slot, status: number): TransformStream<Uint8Array, Uint8Array> {
  return new TransformStream({ flush: () => slot.end(status) });
}
