/**
 * The soak's fake LLM upstream, run as its own process so the soak can `kill -9` it and start it
 * again on the same port:
 *
 *   node --import tsx bench/soak/upstream.ts --port 0 --log FILE
 *
 * It speaks OpenAI chat completions like test/support/upstream-server.ts's `completion` handler
 * (copied here, so the soak does not depend on a test helper): `?n=` content deltas `?gap=` ms
 * apart; `usage` {prompt_tokens, completion_tokens: n, total_tokens} in the JSON body, or as a final
 * `choices: []` chunk when the request asked for `stream_options.include_usage`. The prompt tokens
 * are derived from the request body, so totals differ from request to request. `GET /v1/models`
 * answers a small fixed JSON.
 *
 * Every response that was written to its end appends one NDJSON line to the log file (synchronously,
 * so lines survive a later `kill -9`): the soak's request id (`x-request-id`), the user the gateway
 * named (`x-halo-user`), and the usage it reported — the upstream's side of the token comparison.
 * It prints "soak-upstream listening on PORT" once listening.
 */
import { appendFileSync } from "node:fs";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { parseArgs } from "node:util";

export interface UpstreamLogLine {
  id: string;
  user: string;
  stream: boolean;
  includeUsage: boolean;
  /** total_tokens of the usage the upstream sent (null: it sent none). */
  usage: number | null;
  deltas: number;
}

const MODELS = JSON.stringify({ object: "list", data: [{ id: "soak-model", object: "model", owned_by: "soak" }] });

const { values } = parseArgs({ options: { port: { type: "string", default: "0" }, log: { type: "string" } } });
const logFile = values.log;

const server = createServer((request, response) => {
  handle(request, response).catch(() => response.destroy());
});
server.keepAliveTimeout = 2_000;
server.listen(Number(values.port), "127.0.0.1", () => {
  console.log(`soak-upstream listening on ${(server.address() as AddressInfo).port}`);
});
// SIGTERM ends it cleanly; the soak's outage uses SIGKILL instead.
process.on("SIGTERM", () => {
  server.closeAllConnections();
  server.close(() => process.exit(0));
});

async function handle(request: IncomingMessage, response: ServerResponse) {
  const url = new URL(request.url ?? "/", "http://upstream.soak");
  let body = "";
  for await (const chunk of request) body += (chunk as Buffer).toString("utf8");
  if (request.method === "GET" && url.pathname === "/v1/models") {
    response.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(MODELS) });
    response.end(MODELS);
    return;
  }
  if (request.method === "POST" && url.pathname === "/v1/chat/completions") {
    await completion(request, url, body, response);
    return;
  }
  response.writeHead(404, { "content-type": "application/json" });
  response.end(JSON.stringify({ error: { message: "not found", type: "invalid_request_error" } }));
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

async function completion(request: IncomingMessage, url: URL, body: string, response: ServerResponse) {
  let parsed: { stream?: boolean; stream_options?: { include_usage?: boolean } } = {};
  try {
    parsed = JSON.parse(body) as typeof parsed;
  } catch {
    // an unparsable body still gets an answer
  }
  const count = Math.max(0, Math.min(1_000, Number(url.searchParams.get("n") ?? 3)));
  const gap = Math.max(0, Math.min(1_000, Number(url.searchParams.get("gap") ?? 0)));
  const promptTokens = 5 + (body.length % 23);
  const usage = { prompt_tokens: promptTokens, completion_tokens: count, total_tokens: promptTokens + count };
  const stream = parsed.stream === true;
  const includeUsage = stream && parsed.stream_options?.include_usage === true;
  const log = (reported: number | null, deltas: number) => {
    if (!logFile) return;
    const line: UpstreamLogLine = { id: String(request.headers["x-request-id"] ?? ""), user: String(request.headers["x-halo-user"] ?? ""), stream, includeUsage, usage: reported, deltas };
    appendFileSync(logFile, JSON.stringify(line) + "\n");
  };
  if (!stream) {
    // "Generation" time before the whole answer, as a non-streaming server would take.
    await sleep(count * gap);
    if (response.destroyed) return;
    const json = JSON.stringify({ id: "cmpl-soak", object: "chat.completion", choices: [{ index: 0, message: { role: "assistant", content: "x".repeat(count) }, finish_reason: "stop" }], usage });
    response.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(json) });
    response.end(json, () => log(usage.total_tokens, 0));
    return;
  }
  response.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
  for (let index = 0; index < count; index++) {
    if (response.destroyed) return;
    response.write(`data: {"id":"cmpl-soak","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"t${index}"}}]}\n\n`);
    if (gap > 0) await sleep(gap);
  }
  if (response.destroyed) return;
  response.write(`data: {"id":"cmpl-soak","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n`);
  if (includeUsage) response.write(`data: {"id":"cmpl-soak","object":"chat.completion.chunk","choices":[],"usage":${JSON.stringify(usage)}}\n\n`);
  response.end("data: [DONE]\n\n", () => log(includeUsage ? usage.total_tokens : null, count));
}
