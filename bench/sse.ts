/**
 * Streaming: what the gateway adds to a server-sent-events answer (an LLM's token stream).
 * The upstream is a small Node server in this process sending 50 events 20 ms apart, each stamped
 * with performance.now() as it is written; the client (also this process, same clock) notes when
 * each event arrives. Per stream: time to the first event (from the request) and the median
 * delivery delay of an event (arrival − sent). serve's cost = serve's number − direct's.
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { median } from "./lib/stats.ts";

export const SSE_EVENTS = 50;
export const SSE_GAP_MS = 20;

export interface SseUpstream {
  port: number;
  close(): Promise<void>;
}

export async function startSseUpstream(): Promise<SseUpstream> {
  const server = createServer((request, response) => {
    request.resume();
    const count = Number(new URL(request.url ?? "/", "http://upstream").searchParams.get("n") ?? SSE_EVENTS);
    response.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    let index = 0;
    const send = () => {
      if (response.destroyed) return;
      response.write(`data: {"index":${index},"sent":${performance.now()}}\n\n`);
      if (++index < count) setTimeout(send, SSE_GAP_MS);
      else response.end();
    };
    send();
  });
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export interface SseRun {
  /** Request start → first event arrived, ms. */
  firstEventMs: number;
  /** Median over the stream's events of (arrived − sent), ms. */
  perEventMs: number;
}

/** Reads one whole stream of `events` events (bounded to 10 s) and times them. */
export async function measureSse(url: string, headers: Record<string, string>, events = SSE_EVENTS): Promise<SseRun> {
  const started = performance.now();
  const response = await fetch(`${url}?n=${events}`, { headers, signal: AbortSignal.timeout(10_000) });
  if (response.status !== 200 || !response.body) throw new Error(`SSE ${url}: status ${response.status}`);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const delays: number[] = [];
  let firstEventMs = NaN;
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const arrived = performance.now();
    buffered += decoder.decode(value, { stream: true });
    const parts = buffered.split("\n\n");
    buffered = parts.pop() ?? "";
    for (const event of parts) {
      if (Number.isNaN(firstEventMs)) firstEventMs = arrived - started;
      delays.push(arrived - (JSON.parse(event.slice("data: ".length)) as { sent: number }).sent);
    }
  }
  if (delays.length !== events) throw new Error(`SSE ${url}: ${delays.length} of ${events} events arrived`);
  return { firstEventMs, perEventMs: median(delays) };
}
