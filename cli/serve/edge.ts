/**
 * The mesh-facing edge: the only listener on the bind address (HTTP or, with `--tls`, HTTPS), in
 * front of the loopback-only workerd core. It exists because (measured on workerd 2026-04-26):
 *   - workerd resolves literal `..` segments before a worker sees the URL, so only a layer that
 *     reads the raw request target can refuse `/v2/../sd` instead of silently rerouting it;
 *   - workerd answers CONNECT on any worker socket with 500, and a client's mistake is never a 5xx;
 *   - miniflare's sockets trust a client-sent `MF-CF-Blob` for `request.cf`; here the client
 *     address comes only from the TCP peer, passed on with a per-boot secret.
 *
 * No HTTP framing is written by hand on the request path (issue 7): Node's parser (llhttp, strict)
 * reads the client's bytes, `edge-screen.ts` refuses what must not pass, and every request reaches
 * the core as a new message framed by undici, on a pool of loopback connections. Bodies are framed
 * for every method (Content-Length when the client declared one, else chunked) — the old
 * `http.request` + `pipe` hop wrote GET/DELETE bodies unframed, which desynced the shared pool.
 * Everything else (auth, scopes, header hygiene for the upstream) stays in the worker.
 */
import { createServer as createHttpServer, ServerResponse, type IncomingMessage, type Server } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { statfsSync } from "node:fs";
import type { Duplex } from "node:stream";
import type { Socket } from "node:net";
import { Pool, type Dispatcher } from "undici";
import type { GatewayConfig } from "../../src/shared/config";
import { meshHeaders, type MeshPeer } from "../../src/shared/mesh-identity";
import { AUTH_KINDS } from "../../src/shared/auth-kinds";
import { randomUUID } from "node:crypto";
import { ABANDONED_PATH, EDGE_CLIENT_HEADER, EDGE_REQUEST_HEADER, EDGE_SECRET_HEADER, EDGE_TLS_HEADER, isInternalHeader } from "../../src/shared/edge-protocol";
import { canonicalName, HOP_BY_HOP } from "../../src/shared/header-allowlist";
import { refusalJson, refusals } from "../../src/shared/refusals";
import { declaredBody, isWebSocketUpgrade, routedPath, routeOf, screenRequest, type EdgeRefusal } from "./edge-screen";
import { carriesCredentials, type MeshResolver } from "./mesh-identity";

/** Bounds on what one client can hold (issue 7: 520 slow uploads from one peer stopped the gateway). */
export interface EdgeLimits {
  /** Open connections per peer address; more are closed at accept. */
  connectionsPerPeer: number;
  /** Requests in flight to the core per peer address; more get 429. */
  inFlightPerPeer: number;
  /** Time to receive the request head (slowloris). */
  headersTimeoutMs: number;
  /** Time to receive the whole request, body included. */
  requestTimeoutMs: number;
  /** Longest pause between two chunks of a request body. */
  bodyIdleTimeoutMs: number;
  /** An idle keep-alive connection is closed after this. */
  keepAliveTimeoutMs: number;
}

export const DEFAULT_EDGE_LIMITS: EdgeLimits = {
  connectionsPerPeer: 64,
  inFlightPerPeer: 32,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 120_000,
  bodyIdleTimeoutMs: 30_000,
  keepAliveTimeoutMs: 5_000,
};

export interface TlsCredentials {
  cert: string;
  key: string;
  fingerprint: string;
}

export interface EdgeOptions {
  host: string;
  port: number;
  /** The workerd core's loopback socket. */
  core: URL;
  /** Proves to the worker that the client address header came from here. */
  secret: string;
  config: GatewayConfig;
  /** Host names served (see `servedHosts`); any other Host gets 421. */
  hosts: ReadonlySet<string>;
  tls?: TlsCredentials | undefined;
  limits?: Partial<EdgeLimits>;
  /** The state dir: while its filesystem is (nearly) full, what needs storage gets 503. */
  stateDir?: string;
  /**
   * Who owns the peer on the mesh (issue 10; absent when `mesh.identity` is off): asked for requests
   * that carry credentials, and passed to the core in `x-halo-mesh*` beside the client address.
   */
  mesh?: MeshResolver | undefined;
}

/**
 * Below this much free space on the state dir's filesystem the gateway stops taking requests that
 * write (issue 7). SQLite only fails a write when its WAL must grow, so on a full disk a write may
 * or may not fail depending on the WAL's slack; watching the free space makes "full" one clear,
 * early state instead: authenticated requests and tickets get 503 `storage_unavailable`,
 * `/healthz` says unhealthy, and both recover within a second of space coming back.
 */
export const STORAGE_RESERVE_BYTES = 16 * 1024 * 1024;

export interface Edge {
  server: Server;
  address: { host: string; port: number };
  inFlight(): number;
  /** New certificate and key for new TLS handshakes; open connections are kept. */
  reloadTls(credentials: TlsCredentials): void;
  /** Stop accepting, close keep-alive connections as their requests end, wait up to `graceMs`, then cut the rest. */
  close(graceMs: number): Promise<void>;
}

/** Framing and hop headers the edge sets itself; `Connection` can name others, never these. */
const FRAMING = new Set(["content-length", "transfer-encoding", "host", "expect"]);

function peerAddress(socket: Socket): string {
  const address = socket.remoteAddress ?? "unknown";
  return address.startsWith("::ffff:") ? address.slice(7) : address;
}

/** Client headers minus hop-by-hop, framing, those named in Connection and internal ones; plus the edge's own. */
function coreRequestHeaders(request: IncomingMessage, options: EdgeOptions, body: { length: number | null }, mesh: MeshPeer | null, requestId: string): string[] {
  const named = new Set((request.headers.connection ?? "").split(",").map((token) => canonicalName(token.trim())));
  const headers: string[] = ["host", request.headers.host!];
  for (let index = 0; index < request.rawHeaders.length; index += 2) {
    const name = canonicalName(request.rawHeaders[index]!);
    if (FRAMING.has(name) || HOP_BY_HOP.has(name) || named.has(name) || isInternalHeader(name)) continue;
    headers.push(request.rawHeaders[index]!, request.rawHeaders[index + 1]!);
  }
  if (body.length !== null && body.length > 0) headers.push("content-length", String(body.length));
  headers.push(EDGE_SECRET_HEADER, options.secret, EDGE_CLIENT_HEADER, peerAddress(request.socket), EDGE_REQUEST_HEADER, requestId);
  if (options.tls) headers.push(EDGE_TLS_HEADER, options.tls.fingerprint);
  if (mesh) for (const [name, value] of meshHeaders(mesh)) headers.push(name, value);
  return headers;
}

/** The core's response headers for the client, hop-by-hop ones removed (Node frames the body anew). */
function clientHeaders(headers: Record<string, string | string[] | undefined>): Record<string, string | string[]> {
  const named = new Set(String(headers.connection ?? "").split(",").map((token) => canonicalName(token.trim())));
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) if (value !== undefined && !HOP_BY_HOP.has(name) && !named.has(name)) out[name] = value;
  return out;
}

function sendRefusal(response: ServerResponse, refusal: EdgeRefusal, close = false) {
  if (response.headersSent) {
    response.destroy();
    return;
  }
  if (close) response.shouldKeepAlive = false;
  const body = refusal.body ? JSON.stringify(refusal.body) : refusalJson(refusal);
  response.writeHead(refusal.status, { "content-type": "application/json; charset=utf-8", "content-length": Buffer.byteLength(body), "cache-control": "no-store", ...refusal.headers });
  response.end(body);
}

/** Errors of a pooled connection the core closed before answering: safe to replay a bodiless request once. */
const STALE_CONNECTION = new Set(["UND_ERR_SOCKET", "ECONNRESET", "EPIPE", "UND_ERR_CLOSED"]);

export async function startEdge(options: EdgeOptions): Promise<Edge> {
  const limits = { ...DEFAULT_EDGE_LIMITS, ...options.limits };
  // One connection per in-flight request (no pipelining); the per-peer caps bound the total.
  const pool = new Pool(options.core.origin, { pipelining: 1, keepAliveTimeout: 4_000, headersTimeout: 0, bodyTimeout: 0 });
  const peers = new Map<string, { connections: number; inFlight: number }>();
  const peer = (address: string) => {
    let entry = peers.get(address);
    if (!entry) peers.set(address, (entry = { connections: 0, inFlight: 0 }));
    return entry;
  };
  let active = 0;
  let stopping = false;
  let storageFull = false;
  const watchStorage = () => {
    if (!options.stateDir) return;
    try {
      const stats = statfsSync(options.stateDir);
      const full = stats.bavail * stats.bsize < STORAGE_RESERVE_BYTES;
      if (full !== storageFull) console.error(full ? `halo-gate: the state dir's disk is full (< ${STORAGE_RESERVE_BYTES >> 20} MiB free): refusing requests that write` : "halo-gate: the state dir's disk has room again");
      storageFull = full;
    } catch {
      // statfs itself failing is no reason to refuse traffic; the core's own errors still answer 503.
    }
  };
  watchStorage();
  const storageWatch = setInterval(watchStorage, 1_000);
  storageWatch.unref();

  const serverOptions = {
    headersTimeout: limits.headersTimeoutMs,
    requestTimeout: limits.requestTimeoutMs,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    // Node checks the two timeouts above on this interval (default 30 s, too coarse for a 10 s limit).
    connectionsCheckingInterval: 1_000,
    // Counted by the screen instead: Node's own cap silently drops headers past it (a smuggling vector).
    maxHeadersCount: 0,
  };
  const server: Server = options.tls
    ? createHttpsServer({ ...serverOptions, cert: options.tls.cert, key: options.tls.key, minVersion: "TLSv1.2" })
    : createHttpServer(serverOptions);

  server.on("connection", (socket: Socket) => {
    const address = peerAddress(socket);
    const entry = peer(address);
    if (entry.connections >= limits.connectionsPerPeer) {
      socket.destroy();
      return;
    }
    entry.connections++;
    // Issue 10: ask tailscaled about a new peer while its request head (and TLS handshake) arrives;
    // only a request with credentials will wait for the answer, the rest never look at it.
    if (options.mesh) void options.mesh.lookup(address, socket.remotePort ?? 0);
    socket.once("close", () => {
      entry.connections--;
      if (entry.connections === 0 && entry.inFlight === 0) peers.delete(address);
    });
  });

  server.on("request", (request: IncomingMessage, response: ServerResponse) => {
    try {
      handle(request, response, null);
    } catch (error) {
      // Never let one bad request take the listener down.
      console.error(`halo-gate edge: ${(error as Error).message}`);
      sendRefusal(response, refusals.badRequest("The request could not be forwarded."), true);
    }
  });
  // `Expect: 100-continue`: screened first, so a refused upload is never invited; then handled as usual.
  server.on("checkContinue", (request: IncomingMessage, response: ServerResponse) => {
    const refusal = screenRequest(request, { hosts: options.hosts, bodyLimitBytes: options.config.body_limit_bytes });
    if (refusal) {
      sendRefusal(response, refusal, true);
      return;
    }
    response.writeContinue();
    server.emit("request", request, response);
  });

  /** On a full disk: what writes (authenticated routes, tickets) is refused, and health says so. */
  function storageRefusal(request: IncomingMessage): EdgeRefusal | undefined {
    const path = request.url!.split("?")[0]!;
    // /healthz answers in its own shape, as the core's does.
    if (path === "/healthz") return { ...refusals.storageUnavailable(), body: { status: "unhealthy", reason: "storage" } };
    const route = routeOf(request, options.config.routes);
    const writes = path === "/auth/ticket" || (route !== undefined && AUTH_KINDS[route.auth].credentials);
    if (!writes) return undefined;
    return refusals.storageUnavailable();
  }

  /** Tells the core that a request's client left before its response started (fire and forget). */
  function abandoned(requestId: string) {
    pool
      .request({ path: ABANDONED_PATH, method: "POST", headers: { host: "halo-gate.internal", [EDGE_SECRET_HEADER]: options.secret, [EDGE_REQUEST_HEADER]: requestId } })
      .then((answer) => answer.body.dump())
      .catch(() => {});
  }

  /** One client request → one freshly framed core request. `upgradeSocket` is set for WebSocket handshakes. */
  function handle(request: IncomingMessage, response: ServerResponse, upgradeSocket: { socket: Duplex; head: Buffer } | null) {
    if (stopping) response.shouldKeepAlive = false;
    const refusal = screenRequest(request, { hosts: options.hosts, bodyLimitBytes: options.config.body_limit_bytes }) ?? (storageFull ? storageRefusal(request) : undefined);
    if (refusal) {
      sendRefusal(response, refusal, true);
      request.resume();
      return;
    }
    // The edge's own message to the core; a client has no business there, under any spelling.
    if (routedPath(request) === ABANDONED_PATH) {
      sendRefusal(response, refusals.notFound());
      request.resume();
      return;
    }
    const address = peerAddress(request.socket);
    const requestId = randomUUID();
    const entry = peer(address);
    if (entry.inFlight >= limits.inFlightPerPeer) {
      sendRefusal(response, refusals.tooManyInFlight(limits.inFlightPerPeer, address));
      request.resume();
      return;
    }
    entry.inFlight++;
    active++;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      active--;
      entry.inFlight--;
      if (entry.connections === 0 && entry.inFlight === 0) peers.delete(address);
      socket.off("close", closed);
    };

    const body = declaredBody(request);
    // A body that stalls: the connection is cut (no listener on the body itself: undici reads it).
    const socket = request.socket;
    const stalled = () => sendRefusal(response, refusals.requestTimeout("The request body stalled."), true);
    const bodyReceived = () => {
      socket.setTimeout(0);
      socket.off("timeout", stalled);
    };
    if (body.present) {
      socket.setTimeout(limits.bodyIdleTimeoutMs, stalled);
      request.once("end", bodyReceived);
    }
    let controller: Dispatcher.DispatchController | undefined;
    let responded = false;
    // A client that goes away mid-request or mid-stream cancels the core request (and so the upstream).
    const closed = () => {
      if (done) return;
      if (body.present) bodyReceived();
      if (!response.writableFinished) {
        controller?.abort(new Error("client closed"));
        // Gone before its response ended: the core is told, as it is not by the closed connection
        // until it next writes (src/shared/edge-protocol.ts) — a request waiting in the fair queue
        // (a streaming one has its 200 already, a WebSocket not yet its 101) gives its place up at
        // once, and one holding a slot gives it back and cancels its upstream.
        if (controller && !(upgradeSocket && responded)) abandoned(requestId);
      }
      finish();
    };
    response.once("close", closed);
    // A pipelined request queued behind another has no response on the socket yet, and its
    // response's "close" never comes when the connection drops (measured, issue 12's attack: its
    // place in the queue and its in-flight count were kept for good).
    socket.once("close", closed);
    // A WebSocket handshake's socket is the HTTP server's no more: a client that leaves half-closes
    // it ("end"), and "close" would come only when the edge ends its side.
    if (upgradeSocket) {
      upgradeSocket.socket.once("end", () => {
        if (responded) return;
        closed();
        upgradeSocket.socket.destroy();
      });
    }

    const dispatch = (attempt: number) => {
      const handler: Dispatcher.DispatchHandler = {
        onRequestStart(started) {
          controller = started;
          if (response.destroyed) started.abort(new Error("client closed"));
        },
        onRequestUpgrade(_controller, statusCode, headers, coreSocket) {
          responded = true;
          const client = upgradeSocket!;
          response.writeHead(statusCode, { ...clientHeaders(headers), connection: "Upgrade", upgrade: "websocket" });
          response.flushHeaders();
          response.detachSocket(client.socket as Socket);
          // Bytes flow only now, after the core's 101; the edge no longer parses this connection.
          if (client.head.length > 0) coreSocket.write(client.head);
          coreSocket.pipe(client.socket);
          client.socket.pipe(coreSocket);
          const teardown = () => {
            coreSocket.destroy();
            client.socket.destroy();
          };
          coreSocket.on("error", teardown);
          client.socket.on("error", teardown);
          coreSocket.on("close", () => client.socket.end());
          client.socket.on("close", () => {
            coreSocket.end();
            tunnels.delete(client.socket);
            finish();
          });
          tunnels.add(client.socket);
        },
        onResponseStart(paused, statusCode, headers, statusMessage) {
          if (statusCode < 200) return; // 1xx from the core are its own business
          responded = true;
          // A shutdown that began while this request was in the core: its answer closes the connection.
          if (stopping) response.shouldKeepAlive = false;
          response.writeHead(statusCode, statusMessage, clientHeaders(headers));
          response.flushHeaders(); // SSE: the client sees the headers before the first event
          response.on("drain", () => paused.resume());
        },
        onResponseData(paused, chunk) {
          if (!response.write(chunk)) paused.pause();
        },
        onResponseEnd() {
          response.end();
        },
        onResponseError(_controller, error) {
          const code = (error as { code?: string }).code ?? "";
          if (!responded && attempt === 0 && !body.present && STALE_CONNECTION.has(code) && !response.destroyed) {
            dispatch(1); // the pooled connection was closed under us before any answer: replay once
            return;
          }
          if (!responded) sendRefusal(response, refusals.coreUnavailable(), stopping);
          else response.destroy();
        },
      };
      pool.dispatch(
        {
          origin: options.core.origin,
          path: request.url!,
          method: request.method!,
          headers: coreRequestHeaders(request, options, body, mesh, requestId),
          body: body.present ? request : null,
          ...(upgradeSocket ? { upgrade: "websocket" } : {}),
        },
        handler,
      );
    };
    // The peer's mesh owner, only when the core will check credentials (issue 10): trusted and
    // cached answers are at hand at once; otherwise the request waits for one whois (and is not sent
    // at all if the client left meanwhile).
    let mesh: MeshPeer | null = null;
    const lookup = options.mesh && carriesCredentials(request.headers, request.url!) ? options.mesh.lookup(address, request.socket.remotePort ?? 0) : null;
    if (lookup instanceof Promise) {
      void lookup.then((answer) => {
        mesh = answer;
        if (done) return;
        try {
          dispatch(0);
        } catch (error) {
          // As in the "request" handler: never let one bad request take the listener down.
          console.error(`halo-gate edge: ${(error as Error).message}`);
          sendRefusal(response, refusals.badRequest("The request could not be forwarded."), true);
        }
      });
    } else {
      mesh = lookup;
      dispatch(0);
    }
  }

  /**
   * A request that asked to switch protocols. Only a WebSocket handshake on a WebSocket route is
   * upgraded (after the core's 101); anything else is answered as a plain request on a connection
   * that then closes, so no later bytes on it can skip the screen.
   */
  const tunnels = new Set<Duplex>();
  server.on("upgrade", (request: IncomingMessage, socket: Duplex, head: Buffer) => {
    const response = new ServerResponse(request);
    response.assignSocket(socket as Socket);
    response.shouldKeepAlive = false;
    response.once("finish", () => socket.end());
    socket.on("error", () => socket.destroy());
    try {
      if (declaredBody(request).present || (head.length > 0 && !isWebSocketUpgrade(request, options.config.routes))) {
        sendRefusal(response, refusals.badRequest("An upgrade request cannot carry a body."), true);
        return;
      }
      handle(request, response, isWebSocketUpgrade(request, options.config.routes) ? { socket, head } : null);
    } catch (error) {
      console.error(`halo-gate edge: ${(error as Error).message}`);
      sendRefusal(response, refusals.badRequest("The request could not be forwarded."), true);
    }
  });
  server.on("connect", (request: IncomingMessage, socket: Duplex) => {
    const response = new ServerResponse(request);
    response.assignSocket(socket as Socket);
    response.once("finish", () => socket.end());
    socket.on("error", () => socket.destroy());
    sendRefusal(response, screenRequest(request, { hosts: options.hosts, bodyLimitBytes: 0 })!, true);
  });
  // What llhttp itself refuses (bad framing, obs-fold, bare CR/LF, CL+TE, …) and the timeouts.
  server.on("clientError", (error: NodeJS.ErrnoException, socket: Duplex) => {
    if (!socket.writable || (socket as { _httpMessage?: ServerResponse })._httpMessage?.headersSent) {
      socket.destroy();
      return;
    }
    const [refusal, reason] =
      error.code === "ERR_HTTP_REQUEST_TIMEOUT"
        ? [refusals.requestTimeout("Request Timeout"), "Request Timeout"]
        : error.code === "HPE_HEADER_OVERFLOW"
          ? [refusals.headersTooLarge(), "Request Header Fields Too Large"]
          : [refusals.badRequest("Malformed HTTP request."), "Bad Request"];
    const body = refusalJson(refusal);
    const status = refusal.status;
    // Node's own default for this event writes a fixed response the same way: there is no request to frame.
    socket.end(`HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
  });

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port, options.host, () => resolve());
  });
  const bound = server.address() as { address: string; port: number };
  return {
    server,
    address: { host: bound.address, port: bound.port },
    inFlight: () => active,
    reloadTls(credentials) {
      if (!options.tls) throw new Error("this edge serves plain HTTP");
      (server as unknown as { setSecureContext(options: { cert: string; key: string }): void }).setSecureContext({ cert: credentials.cert, key: credentials.key });
      options.tls = credentials;
    },
    async close(graceMs) {
      stopping = true;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      const deadline = Date.now() + graceMs;
      // Keep-alive connections close as soon as they are idle (new requests on them get `Connection: close`).
      while (active > 0 && Date.now() < deadline) {
        server.closeIdleConnections();
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
      server.closeAllConnections();
      for (const tunnel of tunnels) tunnel.destroy();
      clearInterval(storageWatch);
      await pool.destroy();
      await closed;
    },
  };
}
