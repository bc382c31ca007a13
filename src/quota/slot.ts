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

/**
 * Renewals come at most this far apart, whatever the lease: the UserQuota object keeps leases in
 * memory, and workerd evicts an object idle for ~10 s (measured: kept after 9 s idle, evicted after
 * 11 s), so a running stream's renewals also keep its object — and its leases — alive.
 */
export const MAX_RENEWAL_INTERVAL_MS = 5_000;

export function holdSlot(options: SlotOptions): Slot {
  const renewal = setInterval(() => {
    options.quota.renew(options.handle, options.leaseId, options.leaseMs).catch(() => {
      // A missed renewal only shortens the lease; the release below still frees it.
    });
  }, Math.min(options.leaseMs / 3, MAX_RENEWAL_INTERVAL_MS));
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
