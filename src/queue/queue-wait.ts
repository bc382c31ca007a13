/**
 * The request's side of the fair queue (issue 12): enter, wait (leaving at once when the client goes
 * away), and — for a streaming request that has to wait — an SSE answer sent at once, whose comment
 * lines say where it stands until its turn comes and the upstream's stream follows.
 */
import { refusalJson, refusals, type Refusal } from "../shared/refusals";
import { errors, Refused } from "../http/errors";
import type { AttachedLease, Slot } from "../quota/slot";
import type { GatewayConfig } from "../shared/config";
import type { QueueUsage } from "../shared/admin-wire";
import type { HoldRequest, QueueSnapshot, SlotRequest, UpstreamScheduler, Waited } from "./upstream-scheduler";

export type { Entered, SlotRequest } from "./upstream-scheduler";

/** Whether any route has a queue: then the scheduler runs, and counts every slot a user holds. */
export function queueing(config: GatewayConfig): boolean {
  return config.routes.some((route) => route.max_in_flight !== undefined);
}

/** One scheduler for the whole gateway (one iGPU behind every queued route). */
export function upstreamSchedulerStub(namespace: DurableObjectNamespace<UpstreamScheduler>) {
  return namespace.get(namespace.idFromName("gateway"));
}

export type SchedulerStub = ReturnType<typeof upstreamSchedulerStub>;

/** The scheduler's view, or null when no route has a queue (then it is never woken). */
export async function queueSnapshot(env: Env, config: GatewayConfig): Promise<QueueSnapshot | null> {
  if (!queueing(config)) return null;
  return upstreamSchedulerStub(env.UPSTREAM_SCHEDULER).snapshot();
}

export function queueUsage(queues: QueueSnapshot | null, handle: string): QueueUsage {
  const stats = queues?.users[handle];
  return { queued: stats?.queued ?? 0, waited: stats?.waited ?? 0, wait_ms_total: stats?.waitMsTotal ?? 0, wait_ms_max: stats?.waitMsMax ?? 0, timeouts: stats?.timeouts ?? 0 };
}


/** How a wait ended; `unavailable`: the scheduler was reset (a crash or an update) while it waited. */
export type QueueOutcome = Waited | { kind: "unavailable"; waitedMs: number };

/** The response header that says how long a request waited for its upstream slot, on every response of a queued route. */
export const QUEUE_WAIT_HEADER = "x-halo-queue-wait-ms";

/** A waiting stream is told where it stands when that changes, and at least this often (proxies drop idle streams). */
export const POSITION_EVERY_MS = 2_000;

/**
 * How often a waiting request asks the scheduler again (and how it shows it is alive: workerd cancels
 * a request whose client went away without firing `request.signal` while no response has started,
 * measured, so the scheduler drops a waiter that stops asking — src/queue/upstream-scheduler.ts).
 */
export const POLL_MS = 500;

/**
 * Waits for a queued request's turn, polling; `onPosition` hears where it stands after each poll. A
 * client that goes away leaves the queue at once where the runtime says so (`request.signal`), else
 * when its polls stop.
 */
export async function awaitTurn(scheduler: SchedulerStub, id: string, signal: AbortSignal | undefined, onPosition?: (position: number) => void): Promise<QueueOutcome> {
  const started = Date.now();
  const leave = () => void scheduler.leave(id).catch(() => {});
  signal?.addEventListener("abort", leave, { once: true });
  try {
    for (;;) {
      const answer = await scheduler.wait(id, POLL_MS);
      if (answer.kind !== "waiting") return answer;
      onPosition?.(answer.position);
    }
  } catch (error) {
    console.error(`halo-gate: the upstream scheduler failed while a request waited: ${error instanceof Error ? error.message : String(error)}`);
    return { kind: "unavailable", waitedMs: Date.now() - started };
  } finally {
    signal?.removeEventListener("abort", leave);
  }
}

/** The scheduler's lease of a granted request, renewed and released with the user's (src/quota/slot.ts). */
export function upstreamLease(scheduler: SchedulerStub, leaseId: string): AttachedLease {
  return { renew: (leaseMs) => scheduler.renew(leaseId, leaseMs), release: () => scheduler.release(leaseId) };
}

/**
 * A slot-holding request on a route without a queue, once some route has one: its lease on the user's
 * `streams` cap (counted with the queued routes' in the scheduler), or null when the user is at it.
 */
export async function holdOutsideQueue(scheduler: SchedulerStub, request: HoldRequest): Promise<AttachedLease | null> {
  const held = await scheduler.hold(request);
  return held.kind === "granted" ? upstreamLease(scheduler, held.leaseId) : null;
}

/** The refusal for a wait that did not end in a slot (`left` has nobody to tell). */
export function queueRefusal(outcome: Exclude<QueueOutcome, { kind: "granted" }>, route: string): Refusal {
  if (outcome.kind === "timeout") return refusals.queueTimeout(route, Math.round(outcome.waitedMs / 1000));
  return refusals.queueUnavailable();
}

const encoder = new TextEncoder();

export interface QueuedStreamOptions {
  scheduler: SchedulerStub;
  id: string;
  route: string;
  /** Where it stood when queued (the first comment line). */
  position: number;
  signal: AbortSignal | undefined;
  waitUntil: (promise: Promise<unknown>) => void;
  /** Its turn came: forward it (the user's slot and the upstream lease are the caller's). */
  run: (granted: { leaseId: string; waitedMs: number }) => Promise<Response>;
  /** The wait ended without a slot (the caller ends the user's slot). */
  refused: (outcome: Exclude<QueueOutcome, { kind: "granted" }>) => void;
}

/**
 * A streaming request that has to wait is answered at once with `200 text/event-stream`: comment
 * lines `: queued position=N` (the first at once, then when it moves and at least every
 * POSITION_EVERY_MS) until its turn, then
 * `: queue wait_ms=N` (its headers left before the wait ended, so the wait is told here) and the
 * upstream's own stream. A wait that times out, or an upstream that answers with an error instead of
 * a stream, ends the stream with an OpenAI-style `data: {"error": …}` event, which the SDKs raise.
 */
export function queuedEventStream(options: QueuedStreamOptions): ReadableStream<Uint8Array> {
  const { readable, writable } = new TransformStream<Uint8Array, Uint8Array>();
  const writer = writable.getWriter();
  // The client is gone when the request says so, or when its stream is cancelled (the runtime does
  // that when the connection closes, after the response started): either way it leaves the queue.
  // Writes are never awaited: a departed client never reads, and the task would hang on one.
  const gone = new AbortController();
  options.signal?.addEventListener("abort", () => gone.abort(options.signal!.reason), { once: true });
  writer.closed.catch(() => gone.abort(new Error("the client went away")));
  const write = (text: string) => writer.write(encoder.encode(text)).catch(() => {});
  const errorEvent = (refusal: Refusal) => write(`data: ${refusalJson(refusal)}\n\n`);
  const close = () => writer.close().catch(() => {});
  options.waitUntil(
    (async () => {
      let told = { position: options.position, at: Date.now() };
      void write(`: queued position=${told.position}\n\n`);
      const outcome = await awaitTurn(options.scheduler, options.id, gone.signal, (position) => {
        if (position === told.position && Date.now() - told.at < POSITION_EVERY_MS) return;
        told = { position, at: Date.now() };
        void write(`: queued position=${position}\n\n`);
      });
      if (outcome.kind !== "granted") {
        options.refused(outcome);
        if (outcome.kind !== "left") void errorEvent(queueRefusal(outcome, options.route));
        return void close();
      }
      void write(`: queue wait_ms=${outcome.waitedMs}\n\n`);
      let response: Response;
      try {
        response = await options.run(outcome);
      } catch (error) {
        void errorEvent(error instanceof Refused ? error.refusal : refusals.upstreamUnavailable());
        return void close();
      }
      if (response.ok && response.body && (response.headers.get("content-type") ?? "").startsWith("text/event-stream")) {
        writer.releaseLock();
        return response.body.pipeTo(writable).catch(() => {});
      }
      // Not a stream (the upstream refused the request, say): its error, as the stream's last event.
      const text = await response.text().catch(() => "");
      void write(`data: ${upstreamErrorJson(text, response.status)}\n\n`);
      return void close();
    })(),
  );
  return readable;
}

/** The upstream's own `{"error": …}` when it sent one, else one that names its status. */
function upstreamErrorJson(text: string, status: number): string {
  try {
    const parsed = JSON.parse(text) as { error?: unknown };
    if (parsed && typeof parsed === "object" && parsed.error !== undefined) return JSON.stringify({ error: parsed.error });
  } catch {
    // not JSON: described below
  }
  return refusalJson({ type: "upstream_error", code: "upstream_error", message: `The compute service answered ${status} instead of a stream.` });
}

export interface TurnOptions {
  scheduler: SchedulerStub;
  request: SlotRequest;
  /** The user's slot (its lease is renewed while the request waits, and ended if it never runs). */
  slot: Pick<Slot, "attach" | "end">;
  /** The request asked for a streamed answer (`"stream": true`). */
  streams: boolean;
  signal: AbortSignal | undefined;
  waitUntil: (promise: Promise<unknown>) => void;
  /** Forward it, its wait so far given (0: granted at once). */
  run: (waitedMs: number) => Promise<Response>;
  /** Its wait ended without a slot (for the audit row); the slot is ended here. */
  onRefused: (kind: Exclude<QueueOutcome, { kind: "granted" }>["kind"]) => void;
}

/**
 * A request on a queued route (issue 12): granted at once, or it waits its turn — a stream answered
 * at once and told where it stands, anything else held until its turn, its timeout or its client's
 * departure — and then runs with the upstream slot attached to the user's.
 */
export async function takeTurn(options: TurnOptions): Promise<Response> {
  const { scheduler, request, slot } = options;
  const refused = (outcome: Exclude<QueueOutcome, { kind: "granted" }>) => {
    options.onRefused(outcome.kind);
    void slot.end(outcome.kind === "left" ? 0 : outcome.kind === "timeout" ? 429 : 503);
  };
  let entered;
  try {
    entered = await scheduler.enter(request);
  } catch (error) {
    console.error(`halo-gate: the upstream scheduler failed: ${error instanceof Error ? error.message : String(error)}`);
    refused({ kind: "unavailable", waitedMs: 0 });
    throw errors.queueUnavailable();
  }
  if (entered.kind === "granted") {
    slot.attach(upstreamLease(scheduler, entered.leaseId));
    return options.run(0);
  }
  if (options.streams) {
    const body = queuedEventStream({
      scheduler,
      id: request.id,
      route: request.route,
      position: entered.position,
      signal: options.signal,
      waitUntil: options.waitUntil,
      refused,
      run: (granted) => {
        slot.attach(upstreamLease(scheduler, granted.leaseId));
        return options.run(granted.waitedMs);
      },
    });
    return new Response(body, { status: 200, headers: { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-store", [QUEUE_WAIT_HEADER]: "queued" } });
  }
  const outcome = await awaitTurn(scheduler, request.id, options.signal);
  if (outcome.kind !== "granted") {
    refused(outcome);
    throw new Refused(queueRefusal(outcome, request.route), { [QUEUE_WAIT_HEADER]: String(outcome.waitedMs) });
  }
  slot.attach(upstreamLease(scheduler, outcome.leaseId));
  return options.run(outcome.waitedMs);
}
