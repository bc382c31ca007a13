/**
 * The soak's client side: one bounded HTTP request through the gateway, read to its end (SSE event
 * by event), and recorded as what the client saw — status, error code, content deltas, the `usage`
 * chunk or body, whether the stream ended with `[DONE]`, an `error` event, or a cut connection.
 * Plain `fetch` (undici's, with its own connection pool); the OpenAI SDK is not a dependency.
 */
import { Agent, fetch } from "undici";

export type Kind = "stream" | "json" | "burst-post" | "burst-get" | "probe";

export type Outcome =
  /** 200 and the body ended as it should ([DONE] for SSE, a parsed JSON body otherwise). */
  | "completed"
  /** 200 SSE that ended with the gateway's `data: {"error": …}` event (the upstream broke mid-stream). */
  | "interrupted"
  /** 200 whose body was cut: the connection failed mid-body or the stream ended without [DONE]. */
  | "cut"
  /** An HTTP answer other than 200 (its status and error code are recorded). */
  | "refused"
  /** No HTTP answer: the connection was refused or reset before the response head. */
  | "conn_error"
  /** The client's own bound ran out (always a failure: nothing may hang). */
  | "timeout";

export interface RequestRecord {
  id: string;
  user: number;
  kind: Kind;
  /** Soak phase the request started in (1: load + outage, 2: load up to the kill -9, 3: after the restart). */
  phase: number;
  /** Planned completion tokens (`?n=`). */
  n: number;
  /** The request asked for `stream_options.include_usage`. */
  askedUsage: boolean;
  startedAt: number;
  headersAt: number | null;
  endedAt: number;
  status: number | null;
  outcome: Outcome;
  /** The JSON error's `code` (or the SSE error event's), else null. */
  errorCode: string | null;
  errorMessage: string | null;
  retryAfter: string | null;
  /** Non-empty content deltas the client received. */
  deltas: number;
  /** total_tokens of a usage chunk / body the client received. */
  usage: number | null;
  /** The error thrown (conn_error, cut, timeout), for the report. */
  failure: string | null;
  /** For a burst: the stream of the same user that was running when it was sent. */
  coveringId?: string;
}

export const agent = new Agent({ keepAliveTimeout: 2_000, connections: 128 });

let sequence = 0;
export const nextId = (prefix: string) => `${prefix}-${++sequence}`;

export interface RequestSpec {
  origin: string;
  token: string;
  user: number;
  kind: Kind;
  phase: number;
  /** Streamed (SSE) chat completion, JSON chat completion, or GET /v2/v1/models. */
  shape: "sse" | "json" | "models";
  n: number;
  gapMs: number;
  askedUsage: boolean;
  timeoutMs: number;
  /** Called once with the time of the first content delta (bursts are fired from here). */
  onFirstDelta?: (record: RequestRecord) => void;
  /** Aborts the request early (the soak is stopping): recorded as a timeout. */
  stop?: AbortSignal;
}

const errorFields = (body: unknown): { code: string | null; message: string | null } => {
  const error = (body as { error?: { code?: unknown; message?: unknown } } | null)?.error;
  return { code: typeof error?.code === "string" ? error.code : null, message: typeof error?.message === "string" ? error.message : null };
};

function describe(error: unknown): string {
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  const base = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  return cause ? `${base} (${cause.code ?? cause.message ?? "cause"})` : base;
}

export async function send(spec: RequestSpec): Promise<RequestRecord> {
  const id = nextId(`${spec.kind}-u${spec.user}`);
  const record: RequestRecord = {
    id,
    user: spec.user,
    kind: spec.kind,
    phase: spec.phase,
    n: spec.n,
    askedUsage: spec.askedUsage,
    startedAt: Date.now(),
    headersAt: null,
    endedAt: 0,
    status: null,
    outcome: "conn_error",
    errorCode: null,
    errorMessage: null,
    retryAfter: null,
    deltas: 0,
    usage: null,
    failure: null,
  };
  const timeout = AbortSignal.timeout(spec.timeoutMs);
  const signal = spec.stop ? AbortSignal.any([timeout, spec.stop]) : timeout;
  const headers: Record<string, string> = { authorization: `Bearer ${spec.token}`, "x-request-id": id };
  let init: { method: string; body?: string };
  let path: string;
  if (spec.shape === "models") {
    path = "/v2/v1/models";
    init = { method: "GET" };
  } else {
    path = `/v2/v1/chat/completions?n=${spec.n}&gap=${spec.gapMs}`;
    headers["content-type"] = "application/json";
    const body = {
      model: "soak-model",
      messages: [{ role: "user", content: `soak ${id}: ${"please count ".repeat(1 + (spec.n % 7))}` }],
      stream: spec.shape === "sse",
      ...(spec.shape === "sse" && spec.askedUsage ? { stream_options: { include_usage: true } } : {}),
    };
    init = { method: "POST", body: JSON.stringify(body) };
  }
  let inBody = false;
  try {
    const response = await fetch(spec.origin + path, { ...init, headers, signal, dispatcher: agent });
    record.headersAt = Date.now();
    record.status = response.status;
    record.retryAfter = response.headers.get("retry-after");
    inBody = true;
    if (response.status !== 200) {
      const text = await response.text();
      let parsed: unknown = null;
      try {
        parsed = JSON.parse(text);
      } catch {
        // not JSON: kept as the message
      }
      const { code, message } = errorFields(parsed);
      record.errorCode = code;
      record.errorMessage = message ?? text.slice(0, 200);
      record.outcome = "refused";
    } else if (spec.shape === "sse") {
      await readSse(response.body, record, spec);
    } else {
      const parsed = JSON.parse(await response.text()) as { usage?: { total_tokens?: number } };
      if (spec.shape === "json") record.usage = typeof parsed.usage?.total_tokens === "number" ? parsed.usage.total_tokens : null;
      record.outcome = "completed";
    }
  } catch (error) {
    if (timeout.aborted || spec.stop?.aborted) record.outcome = "timeout";
    else record.outcome = inBody ? "cut" : "conn_error";
    record.failure = describe(error);
  }
  record.endedAt = Date.now();
  return record;
}

/** Reads an SSE body event by event: deltas, usage, [DONE], or the gateway's error event. */
async function readSse(body: AsyncIterable<Uint8Array> | null, record: RequestRecord, spec: RequestSpec) {
  if (!body) {
    record.outcome = "cut";
    return;
  }
  const decoder = new TextDecoder();
  let pending = "";
  let done = false;
  let interrupted = false;
  let firstDeltaSent = false;
  const inspect = (event: string) => {
    for (const line of event.split(/\r?\n/)) {
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") {
        done = true;
        continue;
      }
      let chunk: { usage?: { total_tokens?: number }; choices?: Array<{ delta?: { content?: unknown } }>; error?: { code?: string; message?: string } };
      try {
        chunk = JSON.parse(data) as typeof chunk;
      } catch {
        continue;
      }
      if (chunk.error) {
        interrupted = true;
        record.errorCode = chunk.error.code ?? null;
        record.errorMessage = chunk.error.message ?? null;
        continue;
      }
      if (chunk.usage && typeof chunk.usage.total_tokens === "number") record.usage = chunk.usage.total_tokens;
      for (const choice of chunk.choices ?? []) {
        if (typeof choice.delta?.content === "string" && choice.delta.content !== "") {
          record.deltas++;
          if (!firstDeltaSent) {
            firstDeltaSent = true;
            spec.onFirstDelta?.(record);
          }
        }
      }
    }
  };
  for await (const chunk of body) {
    pending += decoder.decode(chunk, { stream: true });
    for (let end = pending.indexOf("\n\n"); end !== -1; end = pending.indexOf("\n\n")) {
      inspect(pending.slice(0, end));
      pending = pending.slice(end + 2);
    }
  }
  pending += decoder.decode();
  if (pending.trim() !== "") inspect(pending);
  record.outcome = interrupted ? "interrupted" : done ? "completed" : "cut";
}
