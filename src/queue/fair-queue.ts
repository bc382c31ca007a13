/**
 * The waiting line of one queued route (issue 12): each user is served in proportion to what it
 * asks, up to an equal share, whatever how many requests it queues — so a user with many waiting
 * requests cannot push the others back (LiteLLM's "fair queuing" ask, #18128). Within a user,
 * first come, first served.
 *
 * How (start-time fair queuing, one unit per request): every user has a virtual time, the number of
 * requests it was granted, counted from when it became active; a granted request carries its user's
 * virtual time as its start tag while it runs. The next request granted is the eligible one whose
 * user has the lowest virtual time (the oldest request first among equals). A user that becomes
 * active (a request waits, or is granted at once) starts at the system's virtual time — the lowest
 * of the waiting users' times and the running requests' tags — or where it left off, if that is
 * later. So idling earns no credit, running loses none (a closed-loop client has nothing waiting
 * while its one request runs), and a user who came first cannot keep the slots it took before the
 * others arrived. Measured on the way (test/e2e/fair-queue.test.ts, 10 users, 4 slots): with the
 * virtual time taken from whoever was served last, the flooding user took 25 % of the slots
 * instead of 10 %; from the active users' times, 12 % (the 4 slots it held when the others came).
 *
 * Fair by requests, not by GPU time: a long generation costs one unit like a short one.
 *
 * Pure data structure, no timers and no runtime APIs: the scheduler object (upstream-scheduler.ts)
 * owns the clock, the leases and the answers, and says which users have requests running.
 */
export interface Waiter {
  id: string;
  user: string;
}

interface Queued<W> {
  waiter: W;
  /** Arrival order (ties between users of the same virtual time go to the older request). */
  arrival: number;
}

export class FairQueue<W extends Waiter> {
  /** user → that user's waiters, oldest first. */
  private readonly lines = new Map<string, Queued<W>[]>();
  /** user → requests granted (virtual time); kept while the user is active, and after, to not lose its place. */
  private readonly clock = new Map<string, number>();
  /** The virtual time of the last grant: where an active user starts when nobody else is active. */
  private floor = 0;
  /** Start tags of the requests running now (tag → how many). */
  private readonly running = new Map<number, number>();
  private arrivals = 0;
  private count = 0;

  get size(): number {
    return this.count;
  }

  add(waiter: W): void {
    let line = this.lines.get(waiter.user);
    if (!line) {
      this.activate(waiter.user);
      this.lines.set(waiter.user, (line = []));
    }
    line.push({ waiter, arrival: this.arrivals++ });
    this.count++;
  }

  /** Removes a waiter (timed out, or its client left); false when it was not waiting. */
  remove(waiter: W): boolean {
    const line = this.lines.get(waiter.user);
    const index = line?.findIndex((queued) => queued.waiter === waiter) ?? -1;
    if (!line || index === -1) return false;
    line.splice(index, 1);
    this.count--;
    if (line.length === 0) this.lines.delete(waiter.user);
    return true;
  }

  /**
   * The next waiter that may run now (its user below its cap), removed from the queue, with its start
   * tag (give it back to `finished` when the request ends). Undefined when nobody may run.
   */
  take(mayRun: (user: string) => boolean): { waiter: W; tag: number } | undefined {
    const user = nextUser(this.lines, this.clock, mayRun);
    if (user === undefined) return undefined;
    const line = this.lines.get(user)!;
    const { waiter } = line.shift()!;
    this.count--;
    if (line.length === 0) this.lines.delete(user);
    return { waiter, tag: this.countGrant(user) };
  }

  /** A request of `user` granted without waiting (nobody was in line): it counts all the same. Returns its tag. */
  charge(user: string): number {
    if (!this.lines.has(user)) this.activate(user);
    return this.countGrant(user);
  }

  /** A granted request ended (released, or its lease lapsed). */
  finished(tag: number): void {
    const count = this.running.get(tag) ?? 0;
    if (count <= 1) this.running.delete(tag);
    else this.running.set(tag, count - 1);
  }

  /** Where a waiter stands (1: next) if every user stays eligible: the order `take` would serve. */
  position(waiter: W): number | null {
    const own = this.lines.get(waiter.user);
    if (!own?.some((queued) => queued.waiter === waiter)) return null;
    // Replays the grants on copies of the lines and clocks: O(position × users).
    const lines = new Map([...this.lines].map(([user, line]) => [user, [...line]]));
    const clock = new Map(this.clock);
    for (let served = 1; ; served++) {
      const user = nextUser(lines, clock, () => true)!;
      const line = lines.get(user)!;
      if (line.shift()!.waiter === waiter) return served;
      if (line.length === 0) lines.delete(user);
      clock.set(user, (clock.get(user) ?? 0) + 1);
    }
  }

  /** Every waiter, for answering them all at once (a drain). */
  *waiters(): Iterable<W> {
    for (const line of this.lines.values()) for (const queued of line) yield queued.waiter;
  }

  /** Becoming active (a first request waiting or granted): no credit for the time it was idle. */
  private activate(user: string) {
    this.clock.set(user, Math.max(this.clock.get(user) ?? 0, this.systemTime()));
  }

  private countGrant(user: string): number {
    const time = this.clock.get(user) ?? 0;
    this.floor = Math.max(this.floor, time);
    this.clock.set(user, time + 1);
    this.running.set(time, (this.running.get(time) ?? 0) + 1);
    this.forgetIdle();
    return time;
  }

  /** The lowest of the waiting users' times and the running requests' tags, else the last grant's. */
  private systemTime(): number {
    let minimum = Infinity;
    for (const user of this.lines.keys()) minimum = Math.min(minimum, this.clock.get(user) ?? 0);
    for (const tag of this.running.keys()) minimum = Math.min(minimum, tag);
    return minimum === Infinity ? this.floor : minimum;
  }

  /** Bounded: an idle user at or behind the system's time restarts there anyway; its clock can go. */
  private forgetIdle() {
    if (this.clock.size <= 4 * this.lines.size + 64) return;
    const now = this.systemTime();
    for (const [user, time] of this.clock) if (time <= now && !this.lines.has(user)) this.clock.delete(user);
  }
}

/** The eligible user with the lowest virtual time, the oldest request first among equals. */
function nextUser<W>(lines: Map<string, Queued<W>[]>, clock: Map<string, number>, mayRun: (user: string) => boolean): string | undefined {
  let best: { user: string; time: number; arrival: number } | undefined;
  for (const [user, line] of lines) {
    const time = clock.get(user) ?? 0;
    const arrival = line[0]!.arrival;
    if (best && (time > best.time || (time === best.time && arrival > best.arrival))) continue;
    if (mayRun(user)) best = { user, time, arrival };
  }
  return best?.user;
}
