/**
 * The mesh-facing edge: the only listener on the bind address, in front of the loopback-only
 * workerd core. It exists because (measured on workerd 2026-04-26):
 *   - workerd resolves literal `..` segments before a worker sees the URL, so only a layer that
 *     reads the raw request target can refuse `/v2/../sd` instead of silently rerouting it;
 *   - workerd answers CONNECT on any worker socket with 500, and SPEC §1 wants 4xx or a close;
 *   - miniflare's sockets trust a client-sent `MF-CF-Blob` for `request.cf`; here the client
 *     address comes only from the TCP peer, passed on with a per-boot secret.
 * Everything else (auth, scopes, header hygiene for the upstream) stays in the worker.
 */
import { Agent, createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { connect, type Socket } from "node:net";
import { ALLOW_HEADER, ALLOWED_METHODS } from "../../src/http/methods";
import { normalizePath, splitRequestTarget } from "../../src/http/path";
import { canonicalName, HOP_BY_HOP } from "../../src/proxy/headers";

export interface EdgeOptions {
  host: string;
  port: number;
  /** The workerd core's loopback socket. */
  core: URL;
  /** Proves to the worker that the client address header came from here. */
  secret: string;
}

export interface Edge {
  server: Server;
  address: { host: string; port: number };
  inFlight(): number;
  /** Stop accepting, let in-flight requests finish (up to `graceMs`), then close the rest. */
  close(graceMs: number): Promise<void>;
}

/** Headers that steer the core's trust; a client may never send them. */
const isInternal = (name: string) => name.startsWith("x-halo-") || name.startsWith("mf-") || name.startsWith("cf-");

function jsonError(status: number, code: string, message: string) {
  return JSON.stringify({ error: { message, type: status >= 500 ? "server_error" : "invalid_request_error", code } });
}

function rawResponse(status: number, reason: string, body: string, extra = ""): string {
  return `HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n${extra}\r\n${body}`;
}

/** Why a request must not reach the core, or undefined when it may. */
function screen(method: string | undefined, target: string | undefined): { status: number; code: string; message: string } | undefined {
  if (!method || !ALLOWED_METHODS.has(method)) {
    return { status: 405, code: "method_not_allowed", message: `Method ${String(method).slice(0, 20)} is not supported by halo-gate.` };
  }
  if (!target?.startsWith("/")) return { status: 400, code: "invalid_path", message: "Rejected request target: it must be an origin-form path." };
  const { rawPath } = splitRequestTarget(`http://edge${target}`);
  const normalized = normalizePath(rawPath);
  if (!normalized.ok) return { status: 400, code: "invalid_path", message: `Rejected path: ${normalized.reason}.` };
  return undefined;
}

/** Client headers minus hop-by-hop, those named in Connection and internal ones; plus the edge's own. */
function forwardedHeaders(request: IncomingMessage, secret: string, keepUpgrade: boolean): Record<string, string | string[]> {
  const named = new Set((request.headers.connection ?? "").split(",").map((token) => canonicalName(token.trim())).filter(Boolean));
  const headers: Record<string, string[]> = {};
  for (let index = 0; index < request.rawHeaders.length; index += 2) {
    const name = canonicalName(request.rawHeaders[index]!);
    const value = request.rawHeaders[index + 1]!;
    if (isInternal(name)) continue;
    if ((HOP_BY_HOP.has(name) || named.has(name)) && !(keepUpgrade && (name === "upgrade" || name === "connection"))) continue;
    (headers[name] ??= []).push(value);
  }
  headers["x-halo-edge-secret"] = [secret];
  headers["x-halo-client-addr"] = [peerAddress(request.socket)];
  // Node wants single values as strings (and `host` must be one).
  return Object.fromEntries(Object.entries(headers).map(([name, values]) => [name, values.length === 1 ? values[0]! : values]));
}

function peerAddress(socket: Socket): string {
  const address = socket.remoteAddress ?? "unknown";
  return address.startsWith("::ffff:") ? address.slice(7) : address;
}

export async function startEdge(options: EdgeOptions): Promise<Edge> {
  const agent = new Agent({ keepAlive: true, maxSockets: 512 });
  let active = 0;
  const server = createServer({ requestTimeout: 0, headersTimeout: 60_000 }, (request: IncomingMessage, response: ServerResponse) => {
    try {
      handle(request, response);
    } catch (error) {
      // Never let one bad request take the listener down.
      console.error(`halo-gate edge: ${(error as Error).message}`);
      if (!response.headersSent) {
        response.writeHead(400, { "content-type": "application/json" });
        response.end(jsonError(400, "bad_request", "The request could not be forwarded."));
      } else response.destroy();
    }
  });

  function handle(request: IncomingMessage, response: ServerResponse) {
    const refusal = screen(request.method, request.url);
    if (refusal) {
      response.writeHead(refusal.status, { "content-type": "application/json", ...(refusal.status === 405 ? { allow: ALLOW_HEADER } : {}) });
      response.end(jsonError(refusal.status, refusal.code, refusal.message));
      request.resume();
      return;
    }
    active++;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      active--;
    };
    const upstream = httpRequest({
      host: options.core.hostname,
      port: options.core.port,
      method: request.method,
      path: request.url,
      headers: forwardedHeaders(request, options.secret, false),
      agent,
    });
    upstream.on("response", (coreResponse) => {
      const headers: string[] = [];
      for (let index = 0; index < coreResponse.rawHeaders.length; index += 2) {
        if (!HOP_BY_HOP.has(coreResponse.rawHeaders[index]!.toLowerCase())) headers.push(coreResponse.rawHeaders[index]!, coreResponse.rawHeaders[index + 1]!);
      }
      response.writeHead(coreResponse.statusCode ?? 502, coreResponse.statusMessage, headers);
      response.flushHeaders();
      coreResponse.pipe(response);
      coreResponse.on("error", () => response.destroy());
    });
    upstream.on("error", () => {
      if (!response.headersSent) {
        response.writeHead(502, { "content-type": "application/json" });
        response.end(jsonError(502, "gateway_unavailable", "The gateway core is not reachable; try again shortly."));
      } else {
        response.destroy();
      }
      finish();
    });
    // A client that goes away mid-request or mid-stream cancels the core request (and so the upstream).
    response.on("close", () => {
      if (!response.writableFinished) upstream.destroy();
      finish();
    });
    request.pipe(upstream);
  }

  server.on("connect", (_request, socket: Socket) => {
    socket.end(rawResponse(405, "Method Not Allowed", jsonError(405, "method_not_allowed", "CONNECT is not supported by halo-gate."), `allow: ${ALLOW_HEADER}\r\n`));
  });
  server.on("clientError", (_error, socket: Socket) => {
    if (socket.writable) socket.end(rawResponse(400, "Bad Request", jsonError(400, "bad_request", "Malformed HTTP request.")));
    else socket.destroy();
  });
  // Upgraded sockets leave the HTTP server's bookkeeping (closeAllConnections skips them), so the
  // edge tracks its tunnels itself: they count as in flight and are cut after the shutdown grace.
  const tunnels = new Set<Socket>();
  server.on("upgrade", (request: IncomingMessage, socket: Socket, head: Buffer) => {
    tunnels.add(socket);
    socket.once("close", () => tunnels.delete(socket));
    proxyUpgrade(request, socket, head, options);
  });

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port, options.host, () => resolve());
  });
  const bound = server.address() as { address: string; port: number };
  return {
    server,
    address: { host: bound.address, port: bound.port },
    inFlight: () => active + tunnels.size,
    async close(graceMs) {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      const deadline = Date.now() + graceMs;
      while (active + tunnels.size > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
      server.closeAllConnections();
      for (const tunnel of tunnels) tunnel.destroy();
      agent.destroy();
      await closed;
    },
  };
}

/** WebSocket upgrades: screened like any request, then bytes are piped both ways to the core. */
function proxyUpgrade(request: IncomingMessage, socket: Socket, head: Buffer, options: EdgeOptions) {
  const refusal = screen(request.method, request.url);
  if (refusal) {
    socket.end(rawResponse(refusal.status, refusal.status === 405 ? "Method Not Allowed" : "Bad Request", jsonError(refusal.status, refusal.code, refusal.message)));
    return;
  }
  const core = connect(Number(options.core.port), options.core.hostname, () => {
    const headers = forwardedHeaders(request, options.secret, true);
    let head_ = `${request.method} ${request.url} HTTP/1.1\r\n`;
    for (const [name, values] of Object.entries(headers)) for (const value of [values].flat()) head_ += `${name}: ${value}\r\n`;
    core.write(head_ + "\r\n");
    if (head.length > 0) core.write(head);
    core.pipe(socket);
    socket.pipe(core);
  });
  const teardown = () => {
    core.destroy();
    socket.destroy();
  };
  core.on("error", teardown);
  socket.on("error", teardown);
  core.on("close", () => socket.end());
  socket.on("close", () => core.end());
}
