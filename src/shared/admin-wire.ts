/**
 * The admin API's response shapes: one definition for the worker that sends them and the CLI that
 * reads them. Types only, and free of Workers types, so the Node side can import it too.
 */
import type { UserLimits } from "./config";

export type TokenStatus = "active" | "expired" | "revoked";

export interface IssuedToken {
  handle: string;
  /** The plaintext: returned once, to the operator, and never stored. */
  token: string;
  token_id: string;
  scopes: string[];
  issued_at: string;
  expires_at: string;
}

export interface UserView {
  handle: string;
  status: TokenStatus;
  token_id: string;
  token_hint: string;
  scopes: string[];
  issued_at: string;
  expires_at: string;
  revoked_at: string | null;
  last_used_at: string | null;
  /** The device (mesh node name, or "loopback") the token was last used from; null until known (issue 10). */
  last_device: string | null;
  /** The mesh user (Headscale user id) the user's tokens work from; null: none recorded (refused under mesh.identity = "enforce"). */
  mesh_user: string | null;
  limits: UserLimits;
}

/** `GET /admin/users`: each user with the tokens charged today (from its quota object). */
export type ListedUser = UserView & { tokens_today: number };

export interface MalformedLine {
  line: number;
  reason: string;
}

export interface ImportReport {
  imported: Array<{ line: number; handle: string; token_id: string; status: TokenStatus }>;
  skipped: Array<{ line: number; handle: string; reason: string }>;
  /** `code`: `revoked_after_issue` (the handle was revoked after the line was issued), or the admin API's refusal code (`seats_full`, `handle_active`). */
  refused: Array<{ line: number; handle: string; reason: string; code: string }>;
  malformed: MalformedLine[];
}

/** `GET /admin/usage`: one user's metrics. */
export interface UserUsage {
  handle: string;
  status: TokenStatus;
  requests: { "2xx": number; "3xx": number; "4xx": number; "5xx": number; aborted: number };
  refused: { rate: number; concurrency: number; daily: number };
  /** Requests from a device not the user's own: admitted and recorded (`warn`), or refused (`enforce`). */
  mesh: { warned: number; refused: number };
  tokens_today: number;
  daily_tokens: number;
  tokens_remaining: number;
  in_flight: number;
  streams: number;
  upstream_latency: { count: number; sum_seconds: number; buckets: Array<{ le: string; count: number }> };
  day: string;
  /**
   * The fair queue of routes with `max_in_flight` (issue 12), since serve started: requests waiting
   * now, requests that had to wait, their total and longest wait, and waits that timed out (429).
   */
  queue: QueueUsage;
}

export interface QueueUsage {
  queued: number;
  waited: number;
  wait_ms_total: number;
  wait_ms_max: number;
  timeouts: number;
}

/** The key of the audit export's closing line: `{"end_of_audit": true, "rows": N}` (GET /admin/audit). */
export const AUDIT_END = "end_of_audit";
