/**
 * An LLM upstream with N slots on loopback, standing in for `llama-server -np N` (issue 12): at most
 * N chat completions are processed at once, each for a fixed service time; the rest wait inside the
 * server, first come first served, as llama-server defers a task no slot can take and hands the
 * oldest deferred task to the next slot that frees (tools/server/server-queue.cpp: `defer`,
 * `pop_deferred_task`). It records, per request, the user the gateway named (`x-halo-user`) and when
 * it arrived, got a slot and ended, and it tracks how many requests it had open at once (waiting
 * in its queue or in a slot): what the gateway sent it concurrently, the number a gateway-side
 * `max_in_flight` must keep at or below N. How many ran at once cannot exceed N here, by
 * construction, as in llama-server. Node only.
 *
 * What it copies from llama-server, because a gateway in front of it depends on it:
 * - `POST /v1/chat/completions` without `"stream": true` answers once the work is done: a JSON
 *   `chat.completion` with `usage` (and llama-server's `timings`), keep-alive with a length.
 * - With `"stream": true` nothing is sent while the request waits: the status line and the first
 *   chunk go out when a slot starts it (llama-server reads the first result before answering, so a
 *   failure can still be an HTTP error), then content deltas spread over the service time, a last
 *   chunk with `finish_reason`, a `choices: []` chunk with `usage` only when the request asked for
 *   `stream_options.include_usage`, and `data: [DONE]`. The reply advertises keep-alive, yet the
 *   connection is closed right after `[DONE]`: llama-server's stream provider returns false when
 *   it is done, and cpp-httplib closes the connection on that. A client that reuses the socket in
 *   that moment sees a reset (issue 9).
 * - A client that goes away gives its place back: a waiting request leaves the queue, a running one
 *   frees its slot. Here that happens at the socket's close; llama-server notices within its 1 s
 *   poll of the connection (HTTP_POLLING_SECONDS), which is not worth modelling at these scales.
 * - `GET /health` and `GET /v1/models` answer at once, without a slot, as there.
 *
 * Times are `Date.now()` milliseconds, like the other test upstreams'.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export interface SlottedOptions {
  /** How many requests are processed at once (llama-server's `-np`). */
  slots: number;
  /** How long a slot works on one request, in ms (a fixed service time). */
  serviceMs: number;
  /** Completion tokens per answer: the content deltas of a stream, `usage.completion_tokens`. Default 8. */
  tokens?: number;
  /** 0 (default): the kernel chooses. */
  port?: number;
  /** The model name it reports. Default "slotted". */
  model?: string;
}

export type SlottedOutcome =
  /** Still waiting for a slot. */
  | "waiting"
  /** In a slot now. */
  | "running"
  /** Served to its end. */
  | "completed"
  /** The client went away while it waited: it never held a slot. */
  | "abandoned_waiting"
  /** The client went away while it ran: its slot was freed at once. */
  | "abandoned_running";

export interface SlottedRequest {
  /** Arrival order, from 1. */
  seq: number;
  /** `x-halo-user` as the gateway set it (null: the header was absent). */
  user: string | null;
  /** `x-request-id`, when the client sent one (the gateway passes it through). */
  requestId: string | null;
  stream: boolean;
  /** The whole request had been read. */
  arrival: number;
  /** It got a slot (null: it never did). */
  start: number | null;
  /** It completed or was abandoned (null: not yet). */
  end: number | null;
  outcome: SlottedOutcome;
}

export interface SlottedStats {
  slots: number;
  serviceMs: number;
  /** Chat completions open right now: waiting for a slot or in one. */
  current: number;
  /** The most chat completions ever open at once (what the client side sent concurrently). */
  maxConcurrent: number;
  /** In a slot right now (at most `slots`). */
  running: number;
  /** The most ever in slots at once (at most `slots`). */
  maxRunning: number;
  /** Waiting for a slot right now, in the server's own queue. */
  waiting: number;
  /** The longest the server's own queue ever was. */
  maxWaiting: number;
  /** Every chat completion, in arrival order (a copy). */
  requests: SlottedRequest[];
}

export interface SlottedUpstream {
  port: number;
  stats(): SlottedStats;
  close(): Promise<void>;
}

interface Job {
  record: SlottedRequest;
  body: ChatRequest;
  bodyText: string;
  response: ServerResponse;
  /** The pending service-time timer while it runs (cleared when the client goes away). */
  timer?: NodeJS.Timeout;
}

interface ChatRequest {
  stream?: boolean;
  stream_options?: { include_usage?: boolean };
  model?: string;
}

export async function startSlottedUpstream(options: SlottedOptions): Promise<SlottedUpstream> {
  const { slots, serviceMs } = options;
  const tokens = options.tokens ?? 8;
  const model = options.model ?? "slotted";
  if (!Number.isInteger(slots) || slots < 1) throw new Error("slotted upstream: slots must be an integer ≥ 1");
  if (!(serviceMs >= 0)) throw new Error("slotted upstream: serviceMs must be ≥ 0");
  if (!Number.isInteger(tokens) || tokens < 1) throw new Error("slotted upstream: tokens must be an integer ≥ 1");

  const requests: SlottedRequest[] = [];
  const queue: Job[] = [];
  const running = new Set<Job>();
  let maxConcurrent = 0;
  let maxRunning = 0;
  let maxWaiting = 0;
  let seq = 0;
  let closed = false;

  /** A slot is free: the oldest waiting job takes it (FIFO, as llama-server's deferred queue). */
  const dispatch = () => {
    while (!closed && running.size < slots && queue.length > 0) start(queue.shift()!);
  };

  /** A waiting job whose client went away: out of the queue, never held a slot. */
  const leaveQueue = (job: Job) => {
    const at = queue.indexOf(job);
    if (at === -1) return false;
    queue.splice(at, 1);
    job.record.end = Date.now();
    job.record.outcome = "abandoned_waiting";
    return true;
  };

  /** The job's end (completed or abandoned while running): its slot goes to the next in line. */
  const finish = (job: Job, outcome: SlottedOutcome) => {
    if (job.record.end !== null) return;
    job.record.end = Date.now();
    job.record.outcome = outcome;
    if (job.timer) clearTimeout(job.timer);
    running.delete(job);
    dispatch();
  };

  const start = (job: Job) => {
    running.add(job);
    maxRunning = Math.max(maxRunning, running.size);
    job.record.start = Date.now();
    job.record.outcome = "running";
    const work = job.body.stream === true ? serveStream(job) : serveJson(job);
    work.catch(() => {
      job.response.destroy();
      finish(job, "abandoned_running");
    });
  };

  const usageOf = (job: Job) => {
    // A stand-in's tokenizer: about four characters a token, as a rough English average.
    const prompt = Math.max(1, Math.ceil(job.bodyText.length / 4));
    return { completion_tokens: tokens, prompt_tokens: prompt, total_tokens: prompt + tokens };
  };
  const timings = (job: Job) => ({ prompt_n: usageOf(job).prompt_tokens, prompt_ms: 0, predicted_n: tokens, predicted_ms: serviceMs });
  const completionId = (job: Job) => `chatcmpl-slotted-${job.record.seq}`;

  /** Non-streaming: the whole service time in the slot, then one JSON answer. */
  async function serveJson(job: Job) {
    await new Promise<void>((resolve) => (job.timer = setTimeout(resolve, serviceMs)));
    if (job.record.end !== null || job.response.destroyed) return;
    const json = JSON.stringify({
      choices: [{ finish_reason: "stop", index: 0, message: { role: "assistant", content: "x ".repeat(tokens).trim() } }],
      created: Math.floor(Date.now() / 1000),
      model: job.body.model ?? model,
      system_fingerprint: "slotted",
      object: "chat.completion",
      usage: usageOf(job),
      id: completionId(job),
      timings: timings(job),
    });
    job.response.writeHead(200, { "content-type": "application/json; charset=utf-8", "content-length": Buffer.byteLength(json), server: "llama.cpp" });
    job.response.end(json, () => finish(job, "completed"));
  }

  /** Streaming: headers and the first chunk at the slot's start, deltas over the service time, then close. */
  async function serveStream(job: Job) {
    const { response } = job;
    const created = Math.floor(Date.now() / 1000);
    const chunk = (fields: Record<string, unknown>) =>
      `data: ${JSON.stringify({ ...fields, created, id: completionId(job), model: job.body.model ?? model, system_fingerprint: "slotted", object: "chat.completion.chunk" })}\n\n`;
    // Advertised keep-alive (Node's default for a keep-alive client, as cpp-httplib's `Keep-Alive`)…
    response.writeHead(200, { "content-type": "text/event-stream", server: "llama.cpp" });
    response.write(chunk({ choices: [{ finish_reason: null, index: 0, delta: { role: "assistant", content: null } }] }));
    const gap = serviceMs / tokens;
    for (let index = 0; index < tokens; index++) {
      await new Promise<void>((resolve) => (job.timer = setTimeout(resolve, gap)));
      if (job.record.end !== null || response.destroyed) return;
      response.write(chunk({ choices: [{ finish_reason: null, index: 0, delta: { content: `t${index} ` } }] }));
    }
    const last: Record<string, unknown> = { choices: [{ finish_reason: "stop", index: 0, delta: {} }] };
    const includeUsage = job.body.stream_options?.include_usage === true;
    if (!includeUsage) last.timings = timings(job);
    response.write(chunk(last));
    if (includeUsage) response.write(chunk({ choices: [], usage: usageOf(job), timings: timings(job) }));
    // …and closed once the stream is done, like llama-server: the slot is free, the socket goes.
    response.end("data: [DONE]\n\n", () => {
      finish(job, "completed");
      response.socket?.end();
    });
  }

  async function handle(request: IncomingMessage, response: ServerResponse) {
    const url = new URL(request.url ?? "/", "http://slotted.upstream");
    let bodyText = "";
    for await (const piece of request) bodyText += (piece as Buffer).toString("utf8");
    if (request.method === "GET" && url.pathname === "/health") {
      response.writeHead(200, { "content-type": "application/json; charset=utf-8" }).end('{"status":"ok"}');
      return;
    }
    if (request.method === "GET" && url.pathname === "/v1/models") {
      const json = JSON.stringify({ object: "list", data: [{ id: model, object: "model", created: 0, owned_by: "llamacpp" }] });
      response.writeHead(200, { "content-type": "application/json; charset=utf-8" }).end(json);
      return;
    }
    if (request.method !== "POST" || url.pathname !== "/v1/chat/completions") {
      response.writeHead(404, { "content-type": "application/json; charset=utf-8" }).end('{"error":{"code":404,"message":"File Not Found","type":"not_found_error"}}');
      return;
    }
    let body: ChatRequest;
    try {
      body = JSON.parse(bodyText) as ChatRequest;
    } catch {
      response.writeHead(400, { "content-type": "application/json; charset=utf-8" }).end('{"error":{"code":400,"message":"invalid JSON body","type":"invalid_request_error"}}');
      return;
    }
    const header = (name: string) => {
      const value = request.headers[name];
      return typeof value === "string" ? value : null;
    };
    const record: SlottedRequest = { seq: ++seq, user: header("x-halo-user"), requestId: header("x-request-id"), stream: body.stream === true, arrival: Date.now(), start: null, end: null, outcome: "waiting" };
    requests.push(record);
    const job: Job = { record, body, bodyText, response };
    // The client went away before the answer ended: leave the queue, or free the slot.
    response.on("close", () => {
      if (record.end !== null || response.writableFinished) return;
      if (!leaveQueue(job)) finish(job, "abandoned_running");
    });
    queue.push(job);
    maxConcurrent = Math.max(maxConcurrent, running.size + queue.length);
    dispatch();
    maxWaiting = Math.max(maxWaiting, queue.length);
  }

  const server: Server = createServer((request, response) => {
    handle(request, response).catch(() => response.destroy());
  });
  // cpp-httplib's defaults: idle keep-alive connections close after 5 s, and after 100 requests.
  server.keepAliveTimeout = 5_000;
  server.maxRequestsPerSocket = 100;
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, "127.0.0.1", resolve));

  return {
    port: (server.address() as AddressInfo).port,
    stats: () => ({
      slots,
      serviceMs,
      current: running.size + queue.length,
      maxConcurrent,
      running: running.size,
      maxRunning,
      waiting: queue.length,
      maxWaiting,
      requests: requests.map((entry) => ({ ...entry })),
    }),
    async close() {
      closed = true;
      for (const job of [...queue]) leaveQueue(job);
      for (const job of [...running]) finish(job, "abandoned_running");
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
