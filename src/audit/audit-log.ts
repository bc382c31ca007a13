/**
 * The audit log in D1. Admin actions are written in the same transaction as the change they record
 * (so before the command returns); auth decisions are buffered per isolate and flushed off the
 * request path within about a second. Rows carry the token_id, never a token or its hash.
 * A row stands for `count` events (migrations/0003): 1 for every row but aggregated denials, which
 * carry the number of identical denials in their window (src/audit/auth-audit.ts).
 */
export type AuditKind = "admin" | "auth" | "cron";

export interface AuditEvent {
  at: number;
  kind: AuditKind;
  action: string;
  handle?: string | null;
  tokenId?: string | null;
  route?: string | null;
  status?: number | null;
  client?: string | null;
  reason?: string | null;
  detail?: Record<string, unknown> | null;
}

const COLUMNS = "at, kind, action, handle, token_id, route, status, client, reason, detail";
const PARAMS = "?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10";

export function auditStatement(db: D1Database, event: AuditEvent): D1PreparedStatement {
  return db.prepare(`INSERT INTO audit (${COLUMNS}) VALUES (${PARAMS})`).bind(...auditValues(event));
}

/** The same row, written only if `condition` (a SQL expression over ?11…) holds when the batch runs. */
export function conditionalAuditStatement(
  db: D1Database,
  event: AuditEvent,
  condition: string,
  ...conditionValues: unknown[]
): D1PreparedStatement {
  return db
    .prepare(`INSERT INTO audit (${COLUMNS}) SELECT ${PARAMS} WHERE ${condition}`)
    .bind(...auditValues(event), ...conditionValues);
}

/**
 * One row for `count` identical events of one aggregation window: the first flush of the window
 * inserts it, later flushes (from any isolate) add to its count. `aggregateKey` names the window and
 * everything the events share; it is never NULL here, so the partial unique index always applies.
 */
export function aggregatedAuditStatement(db: D1Database, event: AuditEvent, count: number, aggregateKey: string): D1PreparedStatement {
  return db
    .prepare(
      `INSERT INTO audit (${COLUMNS}, count, aggregate_key) VALUES (${PARAMS}, ?11, ?12)
       ON CONFLICT (aggregate_key) WHERE aggregate_key IS NOT NULL DO UPDATE SET count = count + excluded.count`,
    )
    .bind(...auditValues(event), count, aggregateKey);
}

function auditValues(event: AuditEvent) {
  return [
    event.at,
    event.kind,
    event.action,
    event.handle ?? null,
    event.tokenId ?? null,
    event.route ?? null,
    event.status ?? null,
    event.client ?? null,
    event.reason ?? null,
    event.detail ? JSON.stringify(event.detail) : null,
  ];
}

export interface AuditRow {
  id: number;
  at: number;
  kind: AuditKind;
  action: string;
  handle: string | null;
  token_id: string | null;
  route: string | null;
  status: number | null;
  client: string | null;
  reason: string | null;
  detail: string | null;
  /** How many events this row stands for (1 unless it aggregates denials). */
  count: number;
  /** Internal: the aggregation window and key of an aggregated row, NULL otherwise. Not exported. */
  aggregate_key?: string | null;
}

/** Rows at or after `since`, oldest first, in pages (the export streams them as NDJSON). */
export async function readAudit(db: D1Database, since: number, afterId: number, limit: number): Promise<AuditRow[]> {
  const { results } = await db
    .prepare("SELECT * FROM audit WHERE at >= ?1 AND id > ?2 ORDER BY id LIMIT ?3")
    .bind(since, afterId, limit)
    .all<AuditRow>();
  return results;
}

/** The public shape of one audit event: ISO 8601 UTC time, no internal nulls. */
export function auditRecord(row: AuditRow) {
  return {
    id: row.id,
    time: new Date(row.at).toISOString(),
    kind: row.kind,
    action: row.action,
    handle: row.handle,
    token_id: row.token_id,
    route: row.route,
    status: row.status,
    client: row.client,
    reason: row.reason,
    count: row.count ?? 1,
    ...(row.detail ? { detail: JSON.parse(row.detail) as unknown } : {}),
  };
}
