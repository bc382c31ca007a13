/**
 * A real HTTP upstream on loopback that records what it receives (method, raw target, headers,
 * body size) and can stream SSE, delay its headers, or answer with LLM-style usage. Node only.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export interface RecordedRequest {
  method: string;
  target: string;
  headers: Record<string, string | string[] | undefined>;
  rawHeaders: string[];
  bodyBytes: number;
  /** The request body as text (first 16 KiB). */
  body: string;
  at: number;
  /** The client (the gateway) closed the connection before the response ended. */
  aborted: boolean;
}

export interface RecordingUpstream {
  port: number;
  recorded: RecordedRequest[];
  close(): Promise<void>;
}

const MARKER = "x-request-id";

export async function startRecordingUpstream(port = 0): Promise<RecordingUpstream> {
  const recorded: RecordedRequest[] = [];
  const server: Server = createServer((request, response) => {
    // A client that aborts mid-body (as the gateway does past the body limit) is not recorded.
    handle(request, response, recorded).catch(() => response.destroy());
  });
  server.keepAliveTimeout = 1_000;
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
  return {
    port: (server.address() as AddressInfo).port,
    recorded,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

async function handle(request: IncomingMessage, response: ServerResponse, recorded: RecordedRequest[]) {
  const target = request.url ?? "";
  const url = new URL(target, "http://upstream.test");
  // Control endpoint: the requests that carried a given marker.
  if (url.pathname === "/__recorded") {
    const marker = url.searchParams.get("marker");
    const matching = recorded.filter((entry) => entry.headers[MARKER] === marker);
    response.writeHead(200, { "content-type": "application/json" });
    response.end(JSON.stringify(matching));
    return;
  }
  let bodyBytes = 0;
  let body = "";
  for await (const chunk of request) {
    bodyBytes += (chunk as Buffer).byteLength;
    if (body.length < 16_384) body += (chunk as Buffer).toString("utf8");
  }
  const entry: RecordedRequest = { method: request.method ?? "", target, headers: request.headers, rawHeaders: request.rawHeaders, bodyBytes, body, at: Date.now(), aborted: false };
  recorded.push(entry);
  if (recorded.length > 5_000) recorded.splice(0, 1_000);
  response.on("close", () => {
    if (!response.writableFinished) entry.aborted = true;
  });

  if (request.method === "POST" && /\/v1\/(chat\/)?completions$/.test(url.pathname)) {
    await completion(url, body, response);
    return;
  }

  if (url.pathname.endsWith("/sse")) {
    const count = Number(url.searchParams.get("n") ?? 3);
    const gap = Number(url.searchParams.get("gap") ?? 200);
    // `die=K`: the upstream process "crashes" after K events (the socket is reset, no clean end).
    const die = url.searchParams.has("die") ? Number(url.searchParams.get("die")) : null;
    response.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    for (let index = 0; index < count; index++) {
      if (index > 0) await new Promise((resolve) => setTimeout(resolve, gap));
      if (index === die) {
        request.socket.resetAndDestroy();
        return;
      }
      response.write(`data: {"event":${index},"sent_at":${Date.now()}}\n\n`);
    }
    response.end();
    return;
  }
  if (url.pathname.endsWith("/slow-headers")) {
    const delay = Number(url.searchParams.get("ms") ?? 1_000);
    await new Promise((resolve) => setTimeout(resolve, delay));
  }
  if (url.pathname.endsWith("/hop-by-hop")) {
    response.writeHead(200, {
      "content-type": "application/json",
      connection: "x-upstream-private",
      "x-upstream-private": "secret-ish",
      "keep-alive": "timeout=5",
      "x-visible": "yes",
    });
    response.end("{}");
    return;
  }
  response.writeHead(200, { "content-type": "application/json", "x-upstream": "recording" });
  response.end(JSON.stringify({ method: entry.method, target, bodyBytes }));
}

/**
 * An OpenAI-style completion: `n` content deltas (query, default 3), `gap` ms apart; usage
 * {prompt 7, completion n} in the JSON body, or as a final `choices: []` chunk when the request
 * asked for `stream_options.include_usage` — never with `usage=never`.
 */
async function completion(url: URL, body: string, response: ServerResponse) {
  let request: { stream?: boolean; stream_options?: { include_usage?: boolean } } = {};
  try {
    request = JSON.parse(body) as typeof request;
  } catch {
    // an unparsable body still gets an answer
  }
  const count = Number(url.searchParams.get("n") ?? 3);
  const gap = Number(url.searchParams.get("gap") ?? 0);
  const sendUsage = url.searchParams.get("usage") !== "never";
  const usage = { prompt_tokens: 7, completion_tokens: count, total_tokens: 7 + count };
  if (!request.stream) {
    response.writeHead(200, { "content-type": "application/json" });
    response.end(JSON.stringify({ id: "cmpl-1", object: "chat.completion", choices: [{ index: 0, message: { role: "assistant", content: "x".repeat(count) } }], ...(sendUsage ? { usage } : {}) }));
    return;
  }
  response.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
  for (let index = 0; index < count; index++) {
    if (response.destroyed) return;
    response.write(`data: {"id":"cmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"t${index}"}}]}\n\n`);
    if (gap > 0) await new Promise((resolve) => setTimeout(resolve, gap));
  }
  response.write(`data: {"id":"cmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n`);
  if (sendUsage && request.stream_options?.include_usage) {
    response.write(`data: {"id":"cmpl-1","object":"chat.completion.chunk","choices":[],"usage":${JSON.stringify(usage)}}\n\n`);
  }
  response.end("data: [DONE]\n\n");
}
