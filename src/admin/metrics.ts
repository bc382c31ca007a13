/**
 * Per-user usage and metrics, read from each user's UserQuota Durable Object: JSON for
 * `halo-gate usage`, Prometheus text for `/metrics`. Labels carry the handle, never a token.
 */
import type { GatewayConfig } from "../shared/config";
import { usageSnapshot } from "../quota/durable-object-quota";
import { LATENCY_BUCKETS } from "../quota/user-quota";
import { listUsers } from "./users";
import type { UserUsage } from "../shared/admin-wire";
import { queueSnapshot, queueUsage } from "../queue/queue-wait";

export async function collectUsage(env: Env, config: GatewayConfig, now: number): Promise<UserUsage[]> {
  const users = await listUsers(env.DB, config, now);
  const queues = await queueSnapshot(env, config);
  return Promise.all(
    users.map(async (user) => {
      const snapshot = await usageSnapshot(env.USER_QUOTA, user.handle, now, config.timezone);
      let cumulative = 0;
      const buckets = snapshot.metrics.latencyBuckets.map((count, index) => {
        cumulative += count;
        return { le: index < LATENCY_BUCKETS.length ? String(LATENCY_BUCKETS[index]) : "+Inf", count: cumulative };
      });
      return {
        handle: user.handle,
        status: user.status,
        requests: snapshot.metrics.status,
        refused: snapshot.metrics.refused,
        mesh: snapshot.metrics.mesh,
        tokens_today: snapshot.tokensToday,
        daily_tokens: user.limits.daily_tokens,
        tokens_remaining: Math.max(0, user.limits.daily_tokens - snapshot.tokensToday),
        // Requests on queued routes hold their slot in the scheduler, not in the user's object.
        in_flight: snapshot.inFlight + (queues?.users[user.handle]?.inFlight ?? 0),
        streams: user.limits.streams,
        upstream_latency: { count: snapshot.metrics.latencyCount, sum_seconds: snapshot.metrics.latencySumSeconds, buckets },
        day: snapshot.day,
        queue: queueUsage(queues, user.handle),
      };
    }),
  );
}

const label = (value: string) => value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");

export function prometheusText(usage: UserUsage[]): string {
  const lines: string[] = [];
  const metric = (name: string, type: string, help: string, rows: Array<[Record<string, string>, number]>) => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, value] of rows) {
      const rendered = Object.entries(labels).map(([key, text]) => `${key}="${label(text)}"`).join(",");
      lines.push(`${name}{${rendered}} ${value}`);
    }
  };
  metric("halo_gate_requests_total", "counter", "Requests by response status class (aborted: the client went away).", usage.flatMap((user) => Object.entries(user.requests).map(([klass, value]) => [{ handle: user.handle, class: klass }, value] as [Record<string, string>, number])));
  metric("halo_gate_quota_refused_total", "counter", "Requests refused by a quota.", usage.flatMap((user) => Object.entries(user.refused).map(([reason, value]) => [{ handle: user.handle, reason }, value] as [Record<string, string>, number])));
  metric("halo_gate_mesh_mismatch_total", "counter", "Requests from a device that is not the user's own (mesh.identity): admitted and recorded under warn, refused under enforce.", usage.flatMap((user) => Object.entries(user.mesh).map(([outcome, value]) => [{ handle: user.handle, outcome }, value] as [Record<string, string>, number])));
  metric("halo_gate_tokens_today", "gauge", "LLM tokens charged today (quota day in the configured timezone).", usage.map((user) => [{ handle: user.handle }, user.tokens_today]));
  metric("halo_gate_tokens_daily_limit", "gauge", "Daily LLM token quota.", usage.map((user) => [{ handle: user.handle }, user.daily_tokens]));
  metric("halo_gate_in_flight", "gauge", "Requests in flight (leased slots).", usage.map((user) => [{ handle: user.handle }, user.in_flight]));
  metric("halo_gate_user_active", "gauge", "1 when the user holds an active token.", usage.map((user) => [{ handle: user.handle }, user.status === "active" ? 1 : 0]));
  metric("halo_gate_queue_depth", "gauge", "Requests waiting in the fair queue of routes with max_in_flight.", usage.map((user) => [{ handle: user.handle }, user.queue.queued]));
  metric("halo_gate_queue_waits_total", "counter", "Requests that waited in the fair queue (since serve started).", usage.map((user) => [{ handle: user.handle }, user.queue.waited]));
  metric("halo_gate_queue_wait_seconds_total", "counter", "Time requests spent waiting in the fair queue (since serve started).", usage.map((user) => [{ handle: user.handle }, user.queue.wait_ms_total / 1000]));
  metric("halo_gate_queue_timeouts_total", "counter", "Requests whose wait in the fair queue timed out (429).", usage.map((user) => [{ handle: user.handle }, user.queue.timeouts]));
  lines.push("# HELP halo_gate_upstream_latency_seconds Time to the upstream's response headers.", "# TYPE halo_gate_upstream_latency_seconds histogram");
  for (const user of usage) {
    for (const bucket of user.upstream_latency.buckets) lines.push(`halo_gate_upstream_latency_seconds_bucket{handle="${label(user.handle)}",le="${bucket.le}"} ${bucket.count}`);
    lines.push(`halo_gate_upstream_latency_seconds_sum{handle="${label(user.handle)}"} ${user.upstream_latency.sum_seconds}`);
    lines.push(`halo_gate_upstream_latency_seconds_count{handle="${label(user.handle)}"} ${user.upstream_latency.count}`);
  }
  return lines.join("\n") + "\n";
}
