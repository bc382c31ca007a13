/**
 * `/healthz` says unhealthy while the gateway cannot write: it proves it with a real one-row upsert
 * to D1 (migrations/0002_health.sql), because a read can succeed on a full disk where every write
 * fails. The result is shared per isolate for a second, so a health-check flood costs at most one
 * write per second.
 */
export const HEALTH_PROBE_EVERY_MS = 1_000;

interface Probe {
  startedAt: number;
  writable: Promise<boolean>;
}

/** Per isolate and database binding (a test's substitute binding gets its own). */
const probes = new WeakMap<D1Database, Probe>();

/**
 * Whether D1 accepted a write within the last second. Requests arriving while a probe runs share
 * it (workerd hands a promise settled by another request back to the awaiting request's context).
 */
export function storageWritable(db: D1Database, waitUntil: (promise: Promise<unknown>) => void, now = Date.now()): Promise<boolean> {
  const last = probes.get(db);
  if (last && now - last.startedAt >= 0 && now - last.startedAt < HEALTH_PROBE_EVERY_MS) return last.writable;
  const writable = db
    .prepare("INSERT INTO health (id, at) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET at = excluded.at")
    .bind(now)
    .run()
    .then(
      () => true,
      (error: unknown) => {
        console.error(`halo-gate: health probe: storage cannot be written: ${error instanceof Error ? error.message : String(error)}`);
        return false;
      },
    );
  // The probe outlives the request that started it, for those that share it.
  waitUntil(writable);
  probes.set(db, { startedAt: now, writable });
  return writable;
}
