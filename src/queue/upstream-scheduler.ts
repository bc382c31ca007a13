/**
 * Upstream slots and the fair queue (issue 12), in one Durable Object for the whole gateway: the box
 * has one iGPU, and a user's own concurrency cap must be counted in one place.
 *
 * A request to a route with `max_in_flight` that holds a slot (POST/PUT/PATCH, WebSocket upgrades)
 * `enter`s after its token and quota were confirmed by the user's `UserQuota` object. It is granted
 * a slot at once when the route has one free, the user is below its `streams` cap and nobody is
 * waiting ahead of it; otherwise it waits in the route's `FairQueue` (round-robin between users) until
 * it is granted, its `queue_timeout` passes, its client leaves (`leave`), or the queues are drained
 * (`drain`, serve's shutdown). Nothing is refused for being busy any more: only for waiting too long.
 *
 * A user's `streams` cap is one number across every route: once a route is queued, this object counts
 * all of a user's slot-holding requests. One on a route without a queue `hold`s a lease with no
 * upstream slot, granted at once below the cap and refused (429) at it; a queued request of that user
 * waits for it like for any other of its own. (Counted in two places — here and in the user's object —
 * `streams = 1` let a user run one request on a queued route and another elsewhere.)
 *
 * What is kept where, and what a crash costs:
 * - slots are leases like the user's (src/quota/user-quota.ts): renewed with the user's lease while
 *   the response runs (src/quota/slot.ts), released when it ends, lapsing after `quota_lease` when a
 *   release never came. Memory only: a lease describes a request running through this process;
 * - the queues are memory only: a waiter is a pending call from the request that waits. If this
 *   object is reset (a crash, an update), every pending `wait` fails, and the gateway answers each
 *   waiting client 503 with Retry-After (src/queue/queue-wait.ts) rather than dropping it; serve's
 *   shutdown drains the queues the same way first;
 * - per-user queue statistics (waits, wait time, timeouts) are memory only: they describe this boot.
 *
 * An object with running leases is kept alive by their renewals (at most 4 s apart) and one with
 * waiters by their pending calls; an idle one may be evicted and forgets nothing that matters.
 */
import { DurableObject } from "cloudflare:workers";
import { FairQueue, type Waiter } from "./fair-queue";

/** A request asking for one of a queued route's upstream slots. */
export interface SlotRequest {
  /** Unique per request (the gateway makes one). */
  id: string;
  route: string;
  /** The route's `max_in_flight` (sent with each request: the object holds no config). */
  maxInFlight: number;
  user: string;
  /** The user's `streams` cap across every route; Infinity when quotas are off. */
  cap: number;
  leaseMs: number;
  timeoutMs: number;
}

export type Entered = { kind: "granted"; leaseId: string } | { kind: "queued"; position: number };

/** A slot-holding request on a route without a queue: it counts against its user's cap, nothing else. */
export interface HoldRequest {
  user: string;
  cap: number;
  leaseMs: number;
}

export type Held = { kind: "granted"; leaseId: string } | { kind: "at_cap"; inFlight: number };

export type Waited =
  | { kind: "granted"; leaseId: string; waitedMs: number }
  | { kind: "timeout"; waitedMs: number }
  /** The client left (the gateway called `leave`). */
  | { kind: "left"; waitedMs: number }
  /** serve is shutting down: answer 503, retry shortly. */
  | { kind: "draining"; waitedMs: number };

/** Per user, since this object started: what `usage`, `/metrics` and `/api/me` show. */
export interface UserQueueStats {
  /** Requests waiting right now. */
  queued: number;
  /** Requests that had to wait (were not granted at once), and their total and longest wait. */
  waited: number;
  waitMsTotal: number;
  waitMsMax: number;
  timeouts: number;
}

export interface QueueSnapshot {
  routes: Record<string, { inFlight: number; maxInFlight: number; queued: number }>;
  users: Record<string, UserQueueStats & { inFlight: number }>;
}

/** What a poll of `wait` answers: the end of the wait, or "still waiting" with its position. */
export type Polled = Waited | { kind: "waiting"; position: number };

interface Waiting extends Waiter {
  request: SlotRequest;
  enqueuedAt: number;
  answer: Promise<Waited>;
  resolve: (waited: Waited) => void;
  /** Set when the wait has ended. */
  outcome: Waited | null;
  /** When its request last asked (entered, or a `wait` began or ended): a request that stops asking is gone. */
  polledAt: number;
  /** `wait` calls in progress (while one is, the request is alive). */
  polls: number;
  timer: ReturnType<typeof setTimeout>;
}

interface Lease {
  /** Null for a `hold`: a request on a route without a queue, counted against its user's cap only. */
  route: string | null;
  user: string;
  expiresAt: number;
  /** Its start tag in the route's fair queue (0 for a hold). */
  tag: number;
}

/** How often lapsed leases and abandoned waiters are looked for while someone waits. */
const LAPSE_CHECK_MS = 250;
/**
 * A queued request polls `wait` at least every POLL_MS (src/queue/queue-wait.ts); one silent for this
 * long is gone — its client left and the runtime cancelled the request, which workerd does without
 * firing `request.signal` while no response has started (measured) — and leaves the queue; a slot
 * granted to it and never fetched is released.
 */
export const ABANDONED_MS = 1_500;

const emptyStats = (): UserQueueStats => ({ queued: 0, waited: 0, waitMsTotal: 0, waitMsMax: 0, timeouts: 0 });

export class UpstreamScheduler extends DurableObject<Env> {
  private readonly routes = new Map<string, { maxInFlight: number; inFlight: number; queue: FairQueue<Waiting> }>();
  private readonly leases = new Map<string, Lease>();
  /** Every request that had to wait, by id, until its answer is fetched by `wait`. */
  private readonly waiting = new Map<string, Waiting>();
  private readonly stats = new Map<string, UserQueueStats>();
  private lapseCheck: ReturnType<typeof setInterval> | null = null;

  /** A slot at once, or a place in the queue (then `wait` for the answer). */
  async enter(request: SlotRequest): Promise<Entered> {
    const route = this.route(request.route, request.maxInFlight);
    this.dropLapsedLeases();
    // At once only when nobody waits on this route: a newcomer never overtakes the queue.
    if (route.queue.size === 0 && route.inFlight < route.maxInFlight && this.inFlightOf(request.user) < request.cap) {
      return { kind: "granted", leaseId: this.grant(request, route.queue.charge(request.user)) };
    }
    let resolve: (waited: Waited) => void = () => {};
    const answer = new Promise<Waited>((done) => (resolve = done));
    const waiter: Waiting = {
      id: request.id,
      user: request.user,
      request,
      enqueuedAt: Date.now(),
      answer,
      resolve,
      outcome: null,
      polledAt: Date.now(),
      polls: 0,
      timer: setTimeout(() => this.finish(waiter, "timeout"), request.timeoutMs),
    };
    this.waiting.set(request.id, waiter);
    route.queue.add(waiter);
    this.statsOf(request.user).queued++;
    this.startLapseCheck();
    this.pump();
    // Granted by the pump above: a slot was free, others were waiting, and it was its turn.
    if (waiter.outcome?.kind === "granted") {
      this.waiting.delete(request.id);
      return { kind: "granted", leaseId: waiter.outcome.leaseId };
    }
    return { kind: "queued", position: route.queue.position(waiter) ?? 1 };
  }

  /**
   * The answer for a request that was queued: granted, timed out, left or drained — or, after
   * `pollMs`, "still waiting" with its position. The request polls until it has its answer; one that
   * stops polling (its client went away and the runtime cancelled it) is dropped from the queue, and
   * a slot granted to it is taken back, within ABANDONED_MS.
   */
  async wait(id: string, pollMs = Infinity): Promise<Polled> {
    const waiter = this.waiting.get(id);
    if (!waiter) return { kind: "left", waitedMs: 0 };
    waiter.polledAt = Date.now();
    waiter.polls++;
    let poll!: ReturnType<typeof setTimeout>;
    const stillWaiting = new Promise<null>((resolve) => (poll = setTimeout(() => resolve(null), Math.min(pollMs, 2 ** 31 - 1))));
    // (A poll that ends "still waiting" leaves `answer` pending for the next one.)
    const answer = await Promise.race([waiter.answer, stillWaiting]);
    clearTimeout(poll);
    waiter.polls--;
    waiter.polledAt = Date.now();
    if (answer === null) return { kind: "waiting", position: this.routes.get(waiter.request.route)?.queue.position(waiter) ?? 1 };
    this.waiting.delete(id);
    return answer;
  }

  /** The client of a waiting request went away: out of the queue at once, charged nothing. */
  async leave(id: string): Promise<void> {
    const waiter = this.waiting.get(id);
    if (!waiter) return;
    if (!this.finish(waiter, "left")) {
      // Granted just before it left: the slot it was given is freed at once.
      const answer = await waiter.answer;
      if (answer.kind === "granted") await this.release(answer.leaseId);
    }
    this.waiting.delete(id);
  }

  /** A slot-holding request on a route without a queue: admitted below its user's cap, refused at it. */
  async hold(request: HoldRequest): Promise<Held> {
    this.dropLapsedLeases();
    const inFlight = this.inFlightOf(request.user);
    if (inFlight >= request.cap) return { kind: "at_cap", inFlight };
    return { kind: "granted", leaseId: this.grant({ route: null, user: request.user, leaseMs: request.leaseMs }, 0) };
  }

  async renew(leaseId: string, leaseMs: number): Promise<void> {
    const lease = this.leases.get(leaseId);
    if (lease) lease.expiresAt = Date.now() + leaseMs;
  }

  async release(leaseId: string): Promise<void> {
    const lease = this.leases.get(leaseId);
    if (!lease) return;
    this.end(leaseId, lease);
    this.pump();
  }

  /** Answers every waiting request "draining" (serve is shutting down); returns how many. */
  async drain(): Promise<number> {
    let drained = 0;
    for (const route of this.routes.values()) for (const waiter of [...route.queue.waiters()]) if (this.finish(waiter, "draining")) drained++;
    return drained;
  }

  async snapshot(): Promise<QueueSnapshot> {
    this.dropLapsedLeases();
    const routes: QueueSnapshot["routes"] = {};
    for (const [name, route] of this.routes) routes[name] = { inFlight: route.inFlight, maxInFlight: route.maxInFlight, queued: route.queue.size };
    const users: QueueSnapshot["users"] = {};
    // Every user with a request running or a wait behind it (one granted at once has no stats yet).
    for (const user of new Set([...this.stats.keys(), ...[...this.leases.values()].map((lease) => lease.user)])) {
      users[user] = { ...(this.stats.get(user) ?? emptyStats()), inFlight: this.inFlightOf(user) };
    }
    return { routes, users };
  }

  private route(name: string, maxInFlight: number) {
    let route = this.routes.get(name);
    if (!route) this.routes.set(name, (route = { maxInFlight, inFlight: 0, queue: new FairQueue<Waiting>() }));
    // The config may change across a restart of serve while this object lives on: the latest wins.
    route.maxInFlight = maxInFlight;
    return route;
  }

  /** A lease on the user's cap and, unless it is a hold (route null), on one of the route's slots. */
  private grant(request: Pick<SlotRequest, "user" | "leaseMs"> & { route: string | null }, tag: number): string {
    const leaseId = crypto.randomUUID();
    this.leases.set(leaseId, { route: request.route, user: request.user, expiresAt: Date.now() + request.leaseMs, tag });
    if (request.route !== null) this.routes.get(request.route)!.inFlight++;
    return leaseId;
  }

  /** A lease ends (released, or lapsed): its slot and its place in the fair queue's time are freed. */
  private end(leaseId: string, lease: Lease) {
    this.leases.delete(leaseId);
    const route = lease.route === null ? undefined : this.routes.get(lease.route);
    if (!route) return;
    route.inFlight--;
    route.queue.finished(lease.tag);
  }

  /** Grants free slots to the waiters whose turn it is, in fair order, each route in turn. */
  private pump() {
    this.dropLapsedLeases();
    this.dropAbandoned();
    for (const route of this.routes.values()) {
      while (route.inFlight < route.maxInFlight && route.queue.size > 0) {
        const next = route.queue.take((user) => this.inFlightOf(user) < this.capOf(route.queue, user));
        if (!next) break;
        const { waiter, tag } = next;
        const leaseId = this.grant(waiter.request, tag);
        this.settle(waiter, { kind: "granted", leaseId, waitedMs: Date.now() - waiter.enqueuedAt });
      }
    }
    if (this.waiting.size === 0) this.stopLapseCheck();
  }

  /** Ends a wait that has not been granted; false when it no longer waits. */
  private finish(waiter: Waiting, kind: "timeout" | "left" | "draining"): boolean {
    const route = this.routes.get(waiter.request.route);
    if (!route?.queue.remove(waiter)) return false;
    const waitedMs = Date.now() - waiter.enqueuedAt;
    if (kind === "timeout") this.statsOf(waiter.user).timeouts++;
    // (No pump: a wait that ends frees no slot and no cap, so it makes no one else grantable; and a
    // drain that pumped between two waiters could grant the second instead of answering it.)
    this.settle(waiter, { kind, waitedMs });
    return true;
  }

  private settle(waiter: Waiting, answer: Waited) {
    clearTimeout(waiter.timer);
    const stats = this.statsOf(waiter.user);
    stats.queued--;
    if (answer.kind !== "left") {
      stats.waited++;
      stats.waitMsTotal += answer.waitedMs;
      stats.waitMsMax = Math.max(stats.waitMsMax, answer.waitedMs);
    }
    waiter.outcome = answer;
    waiter.resolve(answer);
    // Normally fetched by the pending `wait` at once; a request that died in between leaves nothing behind.
    setTimeout(() => {
      if (this.waiting.get(waiter.id) !== waiter) return;
      this.waiting.delete(waiter.id);
      if (answer.kind === "granted") void this.release(answer.leaseId);
    }, ABANDONED_MS);
  }

  /** A user's cap is the one its waiting requests carry (the latest limits the user's object gave). */
  private capOf(queue: FairQueue<Waiting>, user: string): number {
    for (const waiter of queue.waiters()) if (waiter.user === user) return waiter.request.cap;
    return Infinity;
  }

  /** The user's running slot-holding requests, on every route (what its cap counts). */
  private inFlightOf(user: string): number {
    let count = 0;
    for (const lease of this.leases.values()) if (lease.user === user) count++;
    return count;
  }

  private statsOf(user: string): UserQueueStats {
    let stats = this.stats.get(user);
    if (!stats) this.stats.set(user, (stats = emptyStats()));
    return stats;
  }

  private dropLapsedLeases() {
    const now = Date.now();
    for (const [leaseId, lease] of this.leases) {
      if (lease.expiresAt > now) continue;
      this.end(leaseId, lease);
    }
  }

  /** Waiters whose request stopped polling: their client is gone. */
  private dropAbandoned() {
    const silentSince = Date.now() - ABANDONED_MS;
    for (const waiter of this.waiting.values()) if (waiter.outcome === null && waiter.polls === 0 && waiter.polledAt < silentSince) this.finish(waiter, "left");
  }

  private startLapseCheck() {
    this.lapseCheck ??= setInterval(() => this.pump(), LAPSE_CHECK_MS);
  }

  private stopLapseCheck() {
    if (this.lapseCheck) clearInterval(this.lapseCheck);
    this.lapseCheck = null;
  }
}
