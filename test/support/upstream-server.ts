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
  at: number;
}

export interface RecordingUpstream {
  port: number;
  recorded: RecordedRequest[];
  close(): Promise<void>;
}

const MARKER = "x-test-marker";

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
  for await (const chunk of request) bodyBytes += (chunk as Buffer).byteLength;
  const entry = { method: request.method ?? "", target, headers: request.headers, rawHeaders: request.rawHeaders, bodyBytes, at: Date.now() };
  recorded.push(entry);
  if (recorded.length > 5_000) recorded.splice(0, 1_000);

  if (url.pathname.endsWith("/sse")) {
    const count = Number(url.searchParams.get("n") ?? 3);
    const gap = Number(url.searchParams.get("gap") ?? 200);
    response.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    for (let index = 0; index < count; index++) {
      if (index > 0) await new Promise((resolve) => setTimeout(resolve, gap));
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
