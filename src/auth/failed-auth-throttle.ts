/**
 * Failed-auth throttling per client address (the real TCP peer, docs/contract.md §1), so one mesh peer cannot
 * brute-force or flood the token store. Each address has a bucket of 10 failures refilling one per
 * 6 s, kept in a Durable Object (so it holds across isolates); while an address's bucket is empty,
 * its bearer requests get 429 before any lookup. Other addresses are never affected, and an
 * unknown address (no edge in front) is never throttled, since that would throttle everyone.
 */
import { DurableObject } from "cloudflare:workers";
import { errors, type Refused } from "../http/errors";

export const FAILURE_BURST = 10;
export const FAILURE_REFILL_MS = 6_000;

export class AuthThrottle extends DurableObject<Env> {
  /** Records a failure; returns until when (ms) the address is blocked, or 0. */
  async recordFailure(now: number): Promise<number> {
    const stored = (await this.ctx.storage.get<{ level: number; at: number }>("bucket")) ?? { level: FAILURE_BURST, at: now };
    const level = Math.min(FAILURE_BURST, stored.level + Math.max(0, now - stored.at) / FAILURE_REFILL_MS) - 1;
    await this.ctx.storage.put("bucket", { level, at: now });
    // Blocked while the bucket holds less than one attempt.
    return level < 1 ? now + Math.ceil((1 - level) * FAILURE_REFILL_MS) : 0;
  }
}

/** Per-isolate memory of blocked addresses, learned from the Durable Object on each failure. */
const blockedUntil = new Map<string, number>();

export function throttledRefusal(address: string, now: number): Refused | null {
  const until = blockedUntil.get(address);
  if (until === undefined) return null;
  if (until <= now) {
    blockedUntil.delete(address);
    return null;
  }
  const seconds = Math.max(1, Math.ceil((until - now) / 1000));
  return errors.tooManyAuthFailures(seconds);
}

export async function recordAuthFailure(namespace: DurableObjectNamespace<AuthThrottle>, address: string, now: number): Promise<void> {
  const until = await namespace.get(namespace.idFromName(address)).recordFailure(now);
  if (until > now) blockedUntil.set(address, until);
  if (blockedUntil.size > 10_000) blockedUntil.clear();
}
