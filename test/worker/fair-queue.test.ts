/**
 * The fair queue (issue 12) in two layers: the round-robin line itself, and the scheduler object
 * (a real Durable Object in workerd) that grants upstream slots, holds a user to its cap, times
 * waits out and lets a leaving client go at once.
 */
import { env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { FairQueue, type Waiter } from "../../src/queue/fair-queue";
import type { SlotRequest } from "../../src/queue/upstream-scheduler";

const waiter = (user: string, n: number): Waiter => ({ id: `${user}${n}`, user });

/** Takes the next waiter (its request then runs until `finished`), returning its id. */
const next = (queue: FairQueue<Waiter>, mayRun: (user: string) => boolean = () => true) => queue.take(mayRun)?.waiter.id;

describe("FairQueue", () => {
  it("serves users round-robin, each user's own requests in order: a flood gets one turn per round", () => {
    const queue = new FairQueue<Waiter>();
    for (let n = 1; n <= 5; n++) queue.add(waiter("flood", n));
    queue.add(waiter("ann", 1));
    queue.add(waiter("bob", 1));
    queue.add(waiter("ann", 2));
    const order: string[] = [];
    for (let id = next(queue); id; id = next(queue)) order.push(id);
    expect(order).toEqual(["flood1", "ann1", "bob1", "flood2", "ann2", "flood3", "flood4", "flood5"]);
    expect(queue.size).toBe(0);
  });

  it("a newcomer takes its turn after the users already in this round, never before them", () => {
    const queue = new FairQueue<Waiter>();
    for (const each of [waiter("a", 1), waiter("a", 2), waiter("b", 1), waiter("b", 2)]) queue.add(each);
    expect(next(queue)).toBe("a1");
    queue.add(waiter("c", 1)); // b has not had its turn in this round; c comes next, then a again
    expect([next(queue), next(queue), next(queue), next(queue)]).toEqual(["b1", "c1", "a2", "b2"]);
  });

  it("a user who took every slot before the others came keeps no head start: the newcomers go first", () => {
    const queue = new FairQueue<Waiter>();
    const tags = [0, 1, 2, 3].map(() => queue.charge("flood")); // granted at once, nobody waiting
    for (let n = 1; n <= 4; n++) queue.add(waiter("flood", n));
    queue.add(waiter("ann", 1));
    queue.add(waiter("bob", 1));
    for (const tag of tags) queue.finished(tag);
    expect([next(queue), next(queue), next(queue)]).toEqual(["ann1", "bob1", "flood1"]);
  });

  it("a user whose one request was running (a closed-loop client) keeps its share: no flood overtakes it meanwhile", () => {
    const queue = new FairQueue<Waiter>();
    for (let n = 1; n <= 6; n++) queue.add(waiter("flood", n));
    queue.add(waiter("ann", 1));
    const flood1 = queue.take(() => true)!;
    expect(flood1.waiter.id).toBe("flood1");
    const ann1 = queue.take(() => true)!;
    expect(ann1.waiter.id).toBe("ann1");
    queue.finished(flood1.tag);
    // ann's request runs; only the flood waits, and takes the free slots.
    const floods = [queue.take(() => true)!, queue.take(() => true)!];
    expect(floods.map((taken) => taken.waiter.id)).toEqual(["flood2", "flood3"]);
    queue.finished(ann1.tag);
    queue.add(waiter("ann", 2)); // ann is back the moment its request ended: it lost nothing
    expect(next(queue)).toBe("ann2");
    // A newcomer starts at the system's time, the oldest running request's tag (ann2's), so ahead of
    // the flood, which was served while ann's request ran; idle time before it came earns it nothing.
    queue.add(waiter("bob", 1));
    expect([next(queue), next(queue)]).toEqual(["bob1", "flood4"]);
  });

  it("skips a user at its cap without losing its place, and positions match the order served", () => {
    const queue = new FairQueue<Waiter>();
    const all = [waiter("a", 1), waiter("a", 2), waiter("a", 3), waiter("b", 1), waiter("c", 1), waiter("c", 2)];
    for (const each of all) queue.add(each);
    // Positions predicted before anything is served...
    const predicted = Object.fromEntries(all.map((each) => [each.id, queue.position(each)]));
    // ...are the order in which they are served when every user stays eligible.
    const served: string[] = [];
    for (let taken = queue.take(() => true); taken; taken = queue.take(() => true)) {
      served.push(taken.waiter.id);
      queue.finished(taken.tag);
    }
    expect(served.map((id) => predicted[id])).toEqual([1, 2, 3, 4, 5, 6]);

    // Again, with a at its cap for a while: skipped, but it keeps its place (it was first in line).
    for (const each of all) queue.add(each);
    expect(next(queue, (user) => user !== "a")).toBe("b1");
    expect(next(queue)).toBe("a1");
    expect(next(queue)).toBe("c1");
  });

  it("removing a waiter (timeout, client gone) takes it out of the line and the order stays round-robin", () => {
    const queue = new FairQueue<Waiter>();
    const [a1, b1, b2, c1] = [waiter("a", 1), waiter("b", 1), waiter("b", 2), waiter("c", 1)];
    for (const each of [a1, b1, b2, c1]) queue.add(each);
    expect(queue.remove(b1)).toBe(true);
    expect(queue.remove(b1)).toBe(false);
    expect(queue.position(b2)).toBe(2);
    expect(queue.remove(a1)).toBe(true);
    expect([next(queue), next(queue)]).toEqual(["b2", "c1"]);
    expect(queue.position(a1)).toBeNull();
  });
});

const scheduler = (name: string) => env.UPSTREAM_SCHEDULER.get(env.UPSTREAM_SCHEDULER.idFromName(name));
/** Where a request stands, as its own poll learns it (null: it no longer waits). */
const positionOf = async (stub: ReturnType<typeof scheduler>, id: string) => {
  const answer = await stub.wait(id, 0);
  return answer.kind === "waiting" ? answer.position : null;
};
const slot = (user: string, overrides: Partial<SlotRequest> = {}): SlotRequest => ({
  id: crypto.randomUUID(),
  route: "v2",
  maxInFlight: 2,
  user,
  cap: 1,
  leaseMs: 30_000,
  timeoutMs: 5_000,
  ...overrides,
});

describe("UpstreamScheduler", () => {
  it("grants up to max_in_flight at once; the rest wait, and the users who had none go first as slots free", async () => {
    const stub = scheduler(`rr-${crypto.randomUUID()}`);
    const first = await stub.enter(slot("flood", { cap: 8 }));
    const second = await stub.enter(slot("flood", { cap: 8 }));
    expect(first.kind).toBe("granted");
    expect(second.kind).toBe("granted");
    const waiting = [slot("flood", { cap: 8 }), slot("flood", { cap: 8 }), slot("ann"), slot("bob")];
    const entered = [];
    for (const request of waiting) entered.push(await stub.enter(request));
    expect(entered.map((each) => each.kind)).toEqual(["queued", "queued", "queued", "queued"]);
    // The flood holds both slots already: ann and bob, who hold none, are placed before its waiters.
    expect(entered.map((each) => (each.kind === "queued" ? each.position : 0))).toEqual([1, 2, 1, 2]);
    const answers = waiting.map((request) => stub.wait(request.id));
    await stub.release((first as { leaseId: string }).leaseId);
    const ann = await answers[2]!;
    expect(ann.kind).toBe("granted");
    await stub.release((second as { leaseId: string }).leaseId);
    expect((await answers[3]!).kind).toBe("granted");
    await stub.release((ann as { leaseId: string }).leaseId);
    expect((await answers[0]!).kind).toBe("granted");
    const snapshot = await stub.snapshot();
    expect(snapshot.routes.v2).toEqual({ inFlight: 2, maxInFlight: 2, queued: 1 });
    expect(snapshot.users.flood).toMatchObject({ queued: 1, waited: 1, inFlight: 1 });
  });

  it("holds each user to its own cap, even with free upstream slots", async () => {
    const stub = scheduler(`cap-${crypto.randomUUID()}`);
    const own = await stub.enter(slot("ann", { maxInFlight: 4 }));
    expect(own.kind).toBe("granted");
    const second = slot("ann", { maxInFlight: 4 });
    expect((await stub.enter(second)).kind).toBe("queued");
    // Another user is not held back by ann's line.
    expect((await stub.enter(slot("bob", { maxInFlight: 4 }))).kind).toBe("granted");
    const answer = stub.wait(second.id);
    await stub.release((own as { leaseId: string }).leaseId);
    expect((await answer).kind).toBe("granted");
  });

  it("counts a user's work on routes without a queue (hold) against the same cap: held at the cap, and its queued request waits for it", async () => {
    const stub = scheduler(`hold-${crypto.randomUUID()}`);
    const outside = await stub.hold({ user: "ann", cap: 2, leaseMs: 30_000 });
    expect(outside.kind).toBe("granted");
    const queued = await stub.enter(slot("ann", { cap: 2, maxInFlight: 4 }));
    expect(queued.kind).toBe("granted");
    // Two of two: another hold is refused, and a queued request waits though the route has free slots.
    expect(await stub.hold({ user: "ann", cap: 2, leaseMs: 30_000 })).toEqual({ kind: "at_cap", inFlight: 2 });
    const waiting = slot("ann", { cap: 2, maxInFlight: 4 });
    expect((await stub.enter(waiting)).kind).toBe("queued");
    // Holds take no upstream slot, and other users are not held back by ann's.
    expect((await stub.snapshot()).routes.v2).toEqual({ inFlight: 1, maxInFlight: 4, queued: 1 });
    expect((await stub.hold({ user: "bob", cap: 1, leaseMs: 30_000 })).kind).toBe("granted");
    // The hold ends: ann's waiting request is granted at once.
    const answer = stub.wait(waiting.id);
    await stub.release((outside as { leaseId: string }).leaseId);
    expect((await answer).kind).toBe("granted");
    expect((await stub.snapshot()).users.ann).toMatchObject({ inFlight: 2, queued: 0 });
  });

  it("a wait ends at its timeout, and a client that leaves is out of the line at once, freeing its place", async () => {
    const stub = scheduler(`timeout-${crypto.randomUUID()}`);
    const held = await stub.enter(slot("ann", { maxInFlight: 1 }));
    expect(held.kind).toBe("granted");
    const patient = slot("bob", { maxInFlight: 1, timeoutMs: 300 });
    const leaving = slot("cid", { maxInFlight: 1 });
    const behind = slot("dan", { maxInFlight: 1 });
    for (const request of [patient, leaving, behind]) expect((await stub.enter(request)).kind).toBe("queued");
    const timedOut = await stub.wait(patient.id);
    expect(timedOut.kind).toBe("timeout");
    expect(timedOut.kind === "timeout" && timedOut.waitedMs).toBeGreaterThanOrEqual(250);
    expect(await positionOf(stub, behind.id)).toBe(2);
    await stub.leave(leaving.id);
    expect(await positionOf(stub, behind.id)).toBe(1);
    expect(await positionOf(stub, leaving.id)).toBeNull();
    const snapshot = await stub.snapshot();
    expect(snapshot.users.bob).toMatchObject({ timeouts: 1, queued: 0 });
    expect(snapshot.users.cid).toMatchObject({ queued: 0, waited: 0 });
  });

  it("a lease whose release never came lapses and frees its slot for the next in line; drain answers every waiter", async () => {
    const stub = scheduler(`lapse-${crypto.randomUUID()}`);
    expect((await stub.enter(slot("ann", { maxInFlight: 1, leaseMs: 300 }))).kind).toBe("granted");
    const next = slot("bob", { maxInFlight: 1 });
    expect((await stub.enter(next)).kind).toBe("queued");
    const granted = await stub.wait(next.id);
    expect(granted.kind).toBe("granted");
    const waiters = [slot("cid", { maxInFlight: 1 }), slot("dan", { maxInFlight: 1 })];
    for (const request of waiters) expect((await stub.enter(request)).kind).toBe("queued");
    const answers = waiters.map((request) => stub.wait(request.id));
    expect(await stub.drain()).toBe(2);
    expect((await Promise.all(answers)).map((answer) => answer.kind)).toEqual(["draining", "draining"]);
  });
});
