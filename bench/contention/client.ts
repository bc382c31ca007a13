/**
 * The contention bench's client: one non-streaming chat completion through the gateway, retried on
 * 429 the way the OpenAI SDKs retry it — wait `retry-after-ms` if given (and sane), else
 * `Retry-After` in seconds, else an exponential backoff with jitter — at most MAX_RETRIES times,
 * after which the SDK would raise (recorded here as `gave_up`). Every attempt is bounded by a
 * timeout, and a stop signal ends waits and requests early. Plain `fetch` (undici's, with its own
 * connection pool); the OpenAI SDK is not a dependency of the bench.
 */
import { Agent, fetch } from "undici";

/** openai-node's default `maxRetries`. */
export const MAX_RETRIES = 2;

export const agent = new Agent({ keepAliveTimeout: 2_000, connections: 64 });

export type Outcome =
  /** 200 with a parsed `chat.completion` body. */
  | "completed"
  /** Still 429 after MAX_RETRIES retries (the SDK would raise RateLimitError). */
  | "gave_up"
  /** Another HTTP status (its code is recorded). */
  | "refused"
  /** No HTTP answer, or a body cut short. */
  | "conn_error"
  /** The attempt's own bound ran out, or the bench stopped it. */
  | "timeout";

export interface CallRecord {
  handle: string;
  /** Which of the user's loops sent it. */
  loop: number;
  outcome: Outcome;
  /** The last attempt's status (null: no answer). */
  status: number | null;
  /** The last answer's error code (`rate_limit_exceeded`, `queue_timeout`, …), else null. */
  errorCode: string | null;
  /** 429 answers this call saw, the last one included. */
  refusals429: number;
  /** Their error codes (`rate_limit_exceeded`, `queue_timeout`; `-` for none), in order. */
  codes429: string[];
  /** Time slept on 429s before retrying. */
  backoffMs: number;
  /** First send to the end of the last answer, retries included. */
  totalMs: number;
  /** The last attempt alone: send to end of body. */
  attemptMs: number;
  /** `x-halo-queue-wait-ms` of the last answer, when it carried one. */
  queueWaitHeaderMs: number | null;
  startedAt: number;
  endedAt: number;
  failure: string | null;
}

export interface CallSpec {
  origin: string;
  token: string;
  handle: string;
  loop: number;
  attemptTimeoutMs: number;
  /** Stops waits and requests (the run is over or the bench is interrupted). */
  stop: AbortSignal;
}

const sleep = (ms: number, stop: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (stop.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      stop.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    stop.addEventListener("abort", done, { once: true });
  });

/**
 * How long the OpenAI SDK waits before retry number `retriesSoFar + 1` (openai-node `retryRequest`):
 * `retry-after-ms`, else `retry-after` (seconds, or an HTTP date), used when between 0 and 60 s;
 * otherwise min(0.5 s × 2^n, 8 s), less up to 25 % jitter.
 */
export function retryDelayMs(headers: { get(name: string): string | null }, retriesSoFar: number): number {
  let delay: number | undefined;
  const ms = Number.parseFloat(headers.get("retry-after-ms") ?? "");
  if (!Number.isNaN(ms)) delay = ms;
  const after = headers.get("retry-after");
  if (delay === undefined && after) {
    const seconds = Number.parseFloat(after);
    delay = Number.isNaN(seconds) ? Date.parse(after) - Date.now() : seconds * 1000;
  }
  if (delay !== undefined && delay >= 0 && delay < 60_000) return delay;
  const backoff = Math.min(0.5 * 2 ** retriesSoFar, 8);
  return backoff * (1 - Math.random() * 0.25) * 1000;
}

function describe(error: unknown): string {
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  const base = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  return cause ? `${base} (${cause.code ?? cause.message ?? "cause"})` : base;
}

/** The body as JSON (null: not JSON; the outcome then says what it was). */
function parseJson(text: string): { error?: { code?: unknown }; choices?: unknown } | null {
  try {
    return JSON.parse(text) as { error?: { code?: unknown }; choices?: unknown } | null;
  } catch {
    return null;
  }
}

let sequence = 0;

export async function chat(spec: CallSpec): Promise<CallRecord> {
  const startedAt = Date.now();
  const record: CallRecord = {
    handle: spec.handle,
    loop: spec.loop,
    outcome: "conn_error",
    status: null,
    errorCode: null,
    refusals429: 0,
    codes429: [],
    backoffMs: 0,
    totalMs: 0,
    attemptMs: 0,
    queueWaitHeaderMs: null,
    startedAt,
    endedAt: 0,
    failure: null,
  };
  const id = `contention-${spec.handle}-${spec.loop}-${++sequence}`;
  const body = JSON.stringify({ model: "slotted", messages: [{ role: "user", content: `contention ${id}: say something short` }], max_tokens: 8, stream: false });
  for (let attempt = 0; ; attempt++) {
    const attemptStart = Date.now();
    const timeout = AbortSignal.timeout(spec.attemptTimeoutMs);
    const signal = AbortSignal.any([timeout, spec.stop]);
    let retryIn: number | null = null;
    try {
      const response = await fetch(`${spec.origin}/v2/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${spec.token}`, "content-type": "application/json", "x-request-id": id },
        body,
        signal,
        dispatcher: agent,
      });
      const text = await response.text();
      record.status = response.status;
      const wait = response.headers.get("x-halo-queue-wait-ms");
      record.queueWaitHeaderMs = wait !== null && wait !== "" && Number.isFinite(Number(wait)) ? Number(wait) : null;
      const parsed = parseJson(text);
      record.errorCode = typeof parsed?.error?.code === "string" ? parsed.error.code : null;
      if (response.status === 200 && Array.isArray(parsed?.choices)) record.outcome = "completed";
      else if (response.status === 200) {
        record.outcome = "conn_error";
        record.failure = `200 without a chat.completion body: ${text.slice(0, 120)}`;
      } else if (response.status === 429) {
        record.refusals429++;
        record.codes429.push(record.errorCode ?? "-");
        if (attempt < MAX_RETRIES) retryIn = retryDelayMs(response.headers, attempt);
        else record.outcome = "gave_up";
      } else record.outcome = "refused";
    } catch (error) {
      record.outcome = timeout.aborted || spec.stop.aborted ? "timeout" : "conn_error";
      record.failure = describe(error);
    }
    record.attemptMs = Date.now() - attemptStart;
    if (retryIn === null) break;
    const slept = Date.now();
    await sleep(retryIn, spec.stop);
    record.backoffMs += Date.now() - slept;
    if (spec.stop.aborted) {
      record.outcome = "timeout";
      record.failure = "the bench stopped while it backed off";
      break;
    }
  }
  record.endedAt = Date.now();
  record.totalMs = record.endedAt - startedAt;
  return record;
}
