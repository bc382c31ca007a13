/**
 * Clients that went away before their response ended, as `serve`'s edge reports them (`POST
 * /_halo/abandoned`, src/shared/edge-protocol.ts). workerd does not tell a worker itself until it
 * writes to the closed connection, and measured (issue 12's attack): a streaming request whose
 * client left before its headers was never read nor cancelled, so its slot was renewed forever and a
 * route with `max_in_flight = 1` stayed blocked until restart; a non-streaming one ran its upstream
 * to the end. And one request cannot act on another's I/O ("Cannot perform I/O on behalf of a
 * different request"), so the report cannot reach the request by itself: it is kept here, in one
 * Durable Object, and every request that holds a slot asks it, with one call that stays pending
 * until its client leaves or it ends (`watch`, resolved in the request's own context).
 *
 * Memory only, and small: a watch lives as long as its request; a report waits at most
 * REPORT_MEMORY_MS for the watch it may have overtaken. What the watch costs a slot-holding request
 * (its `watch` and `ended` calls; reads hold no slot and skip it): +0.24 to +0.34 ms at the median,
 * about +1 ms at p95 — metered non-streaming POSTs through `serve`, c=1, interleaved against the
 * commit before, three runs of 1,000 pairs on the 2-core dev machine (5.1–5.5 ms → 5.4–5.7 ms).
 */
import { DurableObject } from "cloudflare:workers";

/** A report that arrives before its request asked (a client gone at once) is kept this long. */
const REPORT_MEMORY_MS = 60_000;

export class Departures extends DurableObject<Env> {
  private readonly watching = new Map<string, (gone: boolean) => void>();
  private readonly reported = new Map<string, number>();

  /** Resolves true when the request's client is reported gone, false when the request `ended` first. */
  async watch(requestId: string): Promise<boolean> {
    if (this.reported.delete(requestId)) return true;
    this.watching.get(requestId)?.(false);
    return new Promise<boolean>((resolve) => this.watching.set(requestId, resolve));
  }

  /** The edge's report: this request's client is gone. */
  async report(requestId: string): Promise<void> {
    const watcher = this.watching.get(requestId);
    if (watcher) {
      this.watching.delete(requestId);
      return watcher(true);
    }
    const now = Date.now();
    for (const [id, at] of this.reported) if (now - at > REPORT_MEMORY_MS) this.reported.delete(id);
    this.reported.set(requestId, now);
  }

  /** The request ended: its watch resolves false and is forgotten. */
  async ended(requestId: string): Promise<void> {
    this.watching.get(requestId)?.(false);
    this.watching.delete(requestId);
  }
}

export function departuresStub(namespace: DurableObjectNamespace<Departures>) {
  return namespace.get(namespace.idFromName("edge"));
}

/**
 * A slot-holding request watches for its client's departure for as long as its slot runs: reported
 * gone, the slot departs (the upstream is cancelled, the slot ends as abandoned); the slot ending
 * first ends the watch.
 */
export function watchDeparture(departures: ReturnType<typeof departuresStub>, requestId: string, slot: { depart(): void; ended: Promise<unknown> }, waitUntil: (promise: Promise<unknown>) => void): void {
  departures.watch(requestId).then(
    (gone) => gone && slot.depart(),
    () => {}, // the object was reset: this request is simply not watched any more
  );
  waitUntil(slot.ended.then(() => departures.ended(requestId)).catch(() => {}));
}
