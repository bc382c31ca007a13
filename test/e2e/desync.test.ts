/**
 * Issue 7, request smuggling through serve, black box with raw sockets (node:net): nothing on the
 * client side may normalise the bytes. The edge keeps a keep-alive pool to the workerd core that
 * every user shares, so a body the edge reads but forwards without framing (or a framing the two
 * hops read differently) becomes the *next request* on a socket another user's request then takes.
 *
 * Every attack case below: the attack on one connection, then innocent authenticated requests from
 * other connections straight after (the pool hands them the socket the attack just used), then:
 *   (a) the attack connection got the expected 4xx, or exactly one normal answer for its own
 *       request; never a 5xx;
 *   (b) every innocent request got its own answer (200 from the upstream, naming its own marker);
 *   (c) the upstream saw exactly the requests sent: nothing smuggled, each innocent marker once, the
 *       attack's body (when forwarded) with the attack only; and no upstream request anywhere
 *       carries `x-halo-edge-secret` or `authorization`, in its headers or its body.
 *
 * The edge's policy these cases pin down: GET/HEAD with a body (Content-Length > 0 or any
 * Transfer-Encoding) → 400; DELETE/OPTIONS/POST bodies are forwarded framed; ambiguous framing → 400;
 * more than 200 header lines → 431; `#` in the target → 400; a Host with `/ ? @` or whitespace → 400;
 * a Host the gateway does not serve → 421; `Expect: 100-continue` → 100 then the answer; `Upgrade`
 * only on a GET to the WebSocket route, piped only after the core's 101, never a tunnel otherwise.
 */
import { connect, type Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocketServer } from "ws";
import { startRecordingUpstream, type RecordedRequest, type RecordingUpstream } from "../support/upstream-server";
import { inviteJson, startServe, testWranglerConfig, type Serve } from "./harness";

let upstream: RecordingUpstream;
let audio: WebSocketServer;
let gateway: Serve;
let port: number;
let token: string;

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  audio = new WebSocketServer({ host: "127.0.0.1", port: 0, path: "/ws" });
  audio.on("connection", (socket) => socket.on("message", (data) => socket.send(`echo:${String(data)}`)));
  await new Promise((resolve) => audio.once("listening", resolve));
  const audioPort = (audio.address() as { port: number }).port;
  gateway = await startServe({ config: testWranglerConfig(upstream.port, {}, { audio: `ws://127.0.0.1:${audioPort}/ws` }) });
  port = Number(new URL(gateway.url).port);
  // Roomy limits: a request a vulnerable edge strands must not turn later cases into 429s.
  ({ token } = await inviteJson(gateway.stateDir, "alice", ["--scopes", "v2,sd,audio", "--rps", "1000", "--burst", "1000", "--streams", "200"]));
});

afterAll(async () => {
  await gateway?.stop();
  audio?.close();
  await upstream?.close();
});

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 on a socket, and a small response parser (latin1 strings, so every byte survives).

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
let sequence = 0;
const uniqueId = (prefix: string) => `${prefix}-${++sequence}-${Math.random().toString(36).slice(2, 8)}`;

class RawConnection {
  data = "";
  closed = false;
  private wake: (() => void) | undefined;

  private constructor(private readonly socket: Socket) {
    socket.setNoDelay(true);
    socket.on("data", (chunk: Buffer) => {
      this.data += chunk.toString("latin1");
      this.wake?.();
    });
    socket.on("close", () => {
      this.closed = true;
      this.wake?.();
    });
    socket.on("error", () => {}); // a reset is just a close here
  }

  static open(): Promise<RawConnection> {
    return new Promise((resolve, reject) => {
      const socket = connect({ host: "127.0.0.1", port });
      socket.once("connect", () => resolve(new RawConnection(socket)));
      socket.once("error", reject);
    });
  }

  write(bytes: string): void {
    if (!this.socket.destroyed && this.socket.writable) this.socket.write(Buffer.from(bytes, "latin1"));
  }

  /** Until `done(data)` holds or the socket closes (at most `timeoutMs`), then `graceMs` more for stray bytes. */
  async settle(done: (data: string) => boolean, timeoutMs = 3_000, graceMs = 150): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && !done(this.data) && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, Math.max(0, deadline - Date.now()));
      });
    }
    this.wake = undefined;
    if (!this.closed && graceMs > 0) await sleep(graceMs);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

interface ParsedResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
  complete: boolean;
}

/**
 * Every response in `data`, in order. `bodiless` says which final responses have no body (answers to
 * HEAD). Stops at a 101 (the rest is the tunnel) and at bytes that are not a response.
 */
function parseResponses(data: string, closed: boolean, bodiless: (finalIndex: number) => boolean = () => false): { responses: ParsedResponse[]; rest: string } {
  const responses: ParsedResponse[] = [];
  let position = 0;
  let finals = 0;
  while (position < data.length) {
    if (!/^HTTP\/1\.[01] \d{3}/.test(data.slice(position, position + 12))) break;
    const status = Number(data.slice(position + 9, position + 12));
    const headEnd = data.indexOf("\r\n\r\n", position);
    if (headEnd === -1) {
      responses.push({ status, headers: {}, body: "", complete: false });
      return { responses, rest: "" };
    }
    const headers: Record<string, string> = {};
    for (const line of data.slice(position, headEnd).split("\r\n").slice(1)) {
      const colon = line.indexOf(":");
      const name = line.slice(0, colon).trim().toLowerCase();
      headers[name] = headers[name] === undefined ? line.slice(colon + 1).trim() : `${headers[name]}, ${line.slice(colon + 1).trim()}`;
    }
    position = headEnd + 4;
    if (status < 200) {
      responses.push({ status, headers, body: "", complete: true });
      if (status === 101) break;
      continue;
    }
    if (status === 204 || status === 304 || bodiless(finals++)) {
      responses.push({ status, headers, body: "", complete: true });
      continue;
    }
    if (/chunked/i.test(headers["transfer-encoding"] ?? "")) {
      let body = "";
      let complete = false;
      for (;;) {
        const lineEnd = data.indexOf("\r\n", position);
        if (lineEnd === -1) break;
        const size = parseInt(data.slice(position, lineEnd), 16);
        if (Number.isNaN(size)) break;
        if (size === 0) {
          const trailerEnd = data.indexOf("\r\n\r\n", lineEnd);
          if (trailerEnd === -1) break;
          position = trailerEnd + 4;
          complete = true;
          break;
        }
        if (data.length < lineEnd + 2 + size + 2) break;
        body += data.slice(lineEnd + 2, lineEnd + 2 + size);
        position = lineEnd + 2 + size + 2;
      }
      responses.push({ status, headers, body, complete });
      if (!complete) return { responses, rest: "" };
    } else if (headers["content-length"] !== undefined) {
      const length = Number(headers["content-length"]);
      const body = data.slice(position, position + length);
      responses.push({ status, headers, body, complete: body.length === length });
      position += body.length;
    } else {
      responses.push({ status, headers, body: data.slice(position), complete: closed });
      position = data.length;
    }
  }
  return { responses, rest: data.slice(position) };
}

const finalResponses = (responses: ParsedResponse[]) => responses.filter((response) => response.status >= 200 || response.status === 101);
const hasFinalResponse = (bodiless = false) => (data: string) => finalResponses(parseResponses(data, false, () => bodiless).responses).some((response) => response.complete);

function jsonBody(response: ParsedResponse | undefined): Record<string, unknown> | undefined {
  try {
    return JSON.parse(response?.body ?? "") as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

const describeResponses = (responses: ParsedResponse[], closed: boolean) =>
  `${responses.map((response) => `${response.status}${response.complete ? "" : "(incomplete)"} ${response.body.slice(0, 160)}`).join(" | ") || "no response"}${closed ? " [closed]" : ""}`;

// ---------------------------------------------------------------------------------------------
// Innocent traffic and what the upstream saw.

/** A plain authenticated request on its own connection; the marker is in its query and a header. */
async function innocentRequest(marker: string): Promise<{ responses: ParsedResponse[]; closed: boolean }> {
  const connection = await RawConnection.open();
  connection.write(`GET /v2/v1/models?m=${marker} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${token}\r\nx-request-id: ${marker}\r\nConnection: close\r\n\r\n`);
  await connection.settle(hasFinalResponse(), 2_500, 0);
  connection.destroy();
  return { responses: parseResponses(connection.data, connection.closed).responses, closed: connection.closed };
}

/** Several innocent requests, one after the other, each checked for its own answer (b). */
async function innocentsGetTheirOwnAnswers(label: string, count = 3): Promise<string[]> {
  const markers: string[] = [];
  for (let index = 0; index < count; index++) {
    const marker = uniqueId("innocent");
    markers.push(marker);
    const { responses, closed } = await innocentRequest(marker);
    const finals = finalResponses(responses);
    const answer = jsonBody(finals[0]);
    expect.soft(finals.length, `${label}: innocent #${index} got exactly one answer: ${describeResponses(responses, closed)}`).toBe(1);
    expect.soft(finals[0]?.status, `${label}: innocent #${index} status: ${describeResponses(responses, closed)}`).toBe(200);
    expect.soft(answer?.target, `${label}: innocent #${index} got someone else's answer: ${describeResponses(responses, closed)}`).toBe(`/v1/models?m=${marker}`);
  }
  return markers;
}

const leaksCredentials = (entry: RecordedRequest) => /x-halo-edge-secret|authorization|sk-halo-/i.test(`${entry.rawHeaders.join("\n")}\n${entry.target}\n${entry.body}`);
const describeEntry = (entry: RecordedRequest) => `${entry.method} ${entry.target} body=${JSON.stringify(entry.body.slice(0, 300))}`;

/** (c): the upstream saw the innocents once each, the expected own requests, and nothing else. */
function upstreamSawExactly(label: string, seen: RecordedRequest[], innocents: string[], own: { prefix: string; count: number | [number, number]; body?: string }[] = []) {
  const listing = seen.map(describeEntry).join("\n  ") || "nothing";
  expect.soft(seen.filter((entry) => /smuggled/.test(entry.target)).map(describeEntry), `${label}: a smuggled request reached the upstream:\n  ${listing}`).toEqual([]);
  expect.soft(seen.filter(leaksCredentials).map(describeEntry), `${label}: the edge secret or a bearer token reached the upstream`).toEqual([]);
  for (const marker of innocents) {
    const matching = seen.filter((entry) => entry.headers["x-request-id"] === marker);
    expect.soft(matching.length, `${label}: innocent ${marker} seen by the upstream:\n  ${listing}`).toBe(1);
    expect.soft(matching[0]?.target, `${label}: innocent ${marker} target`).toBe(`/v1/models?m=${marker}`);
  }
  let accounted = innocents.length;
  for (const { prefix, count, body } of own) {
    const matching = seen.filter((entry) => entry.target.startsWith(prefix));
    accounted += matching.length;
    const [min, max] = Array.isArray(count) ? count : [count, count];
    expect.soft(matching.length >= min && matching.length <= max, `${label}: upstream requests for ${prefix}: ${matching.length}, expected ${min}..${max}:\n  ${listing}`).toBe(true);
    if (body !== undefined) for (const entry of matching) expect.soft(entry.body, `${label}: the body the upstream got with ${prefix}`).toBe(body);
  }
  expect.soft(seen.length, `${label}: the upstream saw requests nobody sent:\n  ${listing}`).toBe(accounted);
}

// ---------------------------------------------------------------------------------------------
// The framing corpus.

type Method = "GET" | "HEAD" | "DELETE" | "OPTIONS" | "POST";
type Expectation = { refuse: number[] } | { forward: true } | { refuseOrForward: number[] };

interface Trick {
  name: string;
  /** The header lines that frame `payload` and the body bytes on the wire; `eol` for the whole head. */
  build(payload: string): { headers: string[]; body: string; eol?: string };
  expect(method: Method): Expectation;
}

const hex = (length: number) => length.toString(16);
const chunked = (payload: string, sizeLine = hex(payload.length), eol = "\r\n") => `${sizeLine}${eol}${payload}${eol}0${eol}${eol}`;
const bodiless = (method: Method) => method === "GET" || method === "HEAD";
/** GET/HEAD with a body → 400; the others forward it framed. */
const bodyPolicy = (method: Method): Expectation => (bodiless(method) ? { refuse: [400] } : { forward: true });
/** GET/HEAD → 400; the others either refuse the odd framing (400) or forward the body framed. */
const strictOrForward = (method: Method): Expectation => (bodiless(method) ? { refuse: [400] } : { refuseOrForward: [400] });
const ambiguous = (): Expectation => ({ refuse: [400] });

const TRICKS: Trick[] = [
  { name: "Content-Length (plain)", build: (p) => ({ headers: [`Content-Length: ${p.length}`], body: p }), expect: bodyPolicy },
  { name: "Transfer-Encoding: chunked (hop-by-hop, dropped by the edge)", build: (p) => ({ headers: ["Transfer-Encoding: chunked"], body: chunked(p) }), expect: bodyPolicy },
  {
    name: "Content-Length named in Connection",
    build: (p) => ({ headers: ["Connection: content-length", `Content-Length: ${p.length}`], body: p }),
    expect: strictOrForward,
  },
  {
    name: "Content-Length after 2,000 tiny headers (past Node's header-count cap)",
    build: (p) => ({ headers: [...Array.from({ length: 2_000 }, () => "a:1"), `Content-Length: ${p.length}`], body: p }),
    expect: () => ({ refuse: [431] }),
  },
  { name: "CL + TE", build: (p) => ({ headers: [`Content-Length: ${p.length}`, "Transfer-Encoding: chunked"], body: chunked(p) }), expect: ambiguous },
  { name: "TE + CL", build: (p) => ({ headers: ["Transfer-Encoding: chunked", `Content-Length: ${p.length}`], body: chunked(p) }), expect: ambiguous },
  { name: "two differing Content-Lengths", build: (p) => ({ headers: [`Content-Length: ${p.length}`, `Content-Length: ${p.length + 7}`], body: `${p}padding` }), expect: ambiguous },
  { name: "Transfer-Encoding: chunked, identity", build: (p) => ({ headers: ["Transfer-Encoding: chunked, identity"], body: chunked(p) }), expect: ambiguous },
  { name: "Transfer-Encoding: identity", build: (p) => ({ headers: ["Transfer-Encoding: identity"], body: p }), expect: ambiguous },
  { name: "obs-fold on Transfer-Encoding", build: (p) => ({ headers: ["Transfer-Encoding:", " chunked"], body: chunked(p) }), expect: ambiguous },
  { name: "bare LF line endings", build: (p) => ({ headers: ["Transfer-Encoding: chunked"], body: chunked(p, hex(p.length), "\n"), eol: "\n" }), expect: strictOrForward },
  { name: "Transfer-Encoding : chunked (space before the colon)", build: (p) => ({ headers: ["Transfer-Encoding : chunked"], body: chunked(p) }), expect: ambiguous },
  { name: "Content-Length: +N", build: (p) => ({ headers: [`Content-Length: +${p.length}`], body: p }), expect: ambiguous },
  { name: "chunk extension", build: (p) => ({ headers: ["Transfer-Encoding: chunked"], body: chunked(p, `${hex(p.length)};ext="1"`) }), expect: bodyPolicy },
  {
    name: "chunk size of 17 hex digits (wraps to the real size in 64 bits)",
    build: (p) => ({ headers: ["Transfer-Encoding: chunked"], body: chunked(p, `1${hex(p.length).padStart(16, "0")}`) }),
    expect: ambiguous,
  },
  { name: "chunk size with a 0x prefix", build: (p) => ({ headers: ["Transfer-Encoding: chunked"], body: chunked(p, `0x${hex(p.length)}`) }), expect: ambiguous },
];

const METHODS: Method[] = ["GET", "HEAD", "DELETE", "OPTIONS", "POST"];

/**
 * The body: a complete request to an unauthenticated route, then a POST whose declared body swallows
 * the start of whatever request comes next on that core socket (an innocent user's, with its bearer
 * token and the edge secret), delivering it to the unauthenticated upstream.
 */
const smuggledPayload = (id: string) =>
  `GET /studio/smuggled-${id}-get HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n` + `POST /studio/smuggled-${id}-post HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 260\r\n\r\n`;

const CASES = TRICKS.flatMap((trick) => METHODS.map((method) => ({ name: `${method} with ${trick.name}`, method, trick })));

describe("serve edge: a framing corpus cannot smuggle a request onto the shared core connection", () => {
  it.each(CASES)("$name", async ({ name, method, trick }) => {
    const id = uniqueId("attack");
    const target = `/studio/${id}`;
    const payload = smuggledPayload(id);
    const { headers, body, eol = "\r\n" } = trick.build(payload);
    const expectation = trick.expect(method);
    const before = upstream.recorded.length;

    const attack = await RawConnection.open();
    attack.write(`${method} ${target} HTTP/1.1${eol}Host: 127.0.0.1${eol}${headers.map((line) => `${line}${eol}`).join("")}${eol}${body}`);
    await attack.settle(hasFinalResponse(method === "HEAD"));
    const markers = await innocentsGetTheirOwnAnswers(name);
    attack.destroy();
    await sleep(150);

    // (a) the attack's own answer.
    const { responses } = parseResponses(attack.data, attack.closed, () => method === "HEAD");
    const finals = finalResponses(responses);
    const answer = finals[0];
    const shown = describeResponses(responses, attack.closed);
    expect.soft(responses.filter((response) => response.status >= 500).length, `${name}: a 5xx: ${shown}`).toBe(0);
    expect.soft(finals.length, `${name}: exactly one answer on the attack connection: ${shown}`).toBe(1);
    const forwarded = answer !== undefined && answer.status < 300;
    if ("refuse" in expectation) {
      expect.soft(expectation.refuse, `${name}: the attack's status: ${shown}`).toContain(answer?.status);
    } else if ("forward" in expectation) {
      expect.soft(answer?.status, `${name}: the attack's status: ${shown}`).toBe(200);
    } else {
      expect.soft([...expectation.refuseOrForward, 200], `${name}: the attack's status: ${shown}`).toContain(answer?.status);
    }
    if (forwarded && method !== "HEAD") expect.soft(jsonBody(answer), `${name}: the attack's answer is for its own request: ${shown}`).toEqual({ method, target, bodyBytes: payload.length });

    // (c) what the upstream saw in this case's window.
    const seen = upstream.recorded.slice(before);
    const ownCount = "refuse" in expectation ? 0 : "forward" in expectation ? 1 : forwarded ? 1 : 0;
    upstreamSawExactly(name, seen, markers, [{ prefix: target, count: ownCount, body: payload }]);
  });

  it.each([
    ["GET", 0],
    ["HEAD", 0],
  ] as const)("control: %s with Content-Length: %d is answered normally", async (method, length) => {
    const id = uniqueId("control");
    const before = upstream.recorded.length;
    const connection = await RawConnection.open();
    connection.write(`${method} /studio/${id} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ${length}\r\nConnection: close\r\n\r\n`);
    await connection.settle(hasFinalResponse(method === "HEAD"));
    connection.destroy();
    const { responses } = parseResponses(connection.data, connection.closed, () => method === "HEAD");
    expect.soft(finalResponses(responses).map((response) => response.status), describeResponses(responses, connection.closed)).toEqual([200]);
    const markers = await innocentsGetTheirOwnAnswers(`${method} CL 0`);
    upstreamSawExactly(`${method} CL 0`, upstream.recorded.slice(before), markers, [{ prefix: `/studio/${id}`, count: 1, body: "" }]);
  });
});

// ---------------------------------------------------------------------------------------------
// Request-line and header screening.

/** One request on its own connection; `finalStatus` of its answer, and the upstream never saw its marker unless it passed. */
async function screened(head: (marker: string) => string, opts: { bodiless?: boolean } = {}) {
  const marker = uniqueId("screen");
  const before = upstream.recorded.length;
  const connection = await RawConnection.open();
  connection.write(head(marker));
  await connection.settle(hasFinalResponse(opts.bodiless));
  connection.destroy();
  await sleep(100);
  const { responses } = parseResponses(connection.data, connection.closed, () => Boolean(opts.bodiless));
  const seen = upstream.recorded.slice(before).filter((entry) => entry.headers["x-request-id"] === marker || entry.target.includes(marker));
  return { responses, finals: finalResponses(responses), shown: describeResponses(responses, connection.closed), seen, marker };
}

const authorized = (marker: string, extra = "", target = `/v2/v1/models?m=${marker}`, host = "127.0.0.1") =>
  `GET ${target} HTTP/1.1\r\nHost: ${host}\r\nAuthorization: Bearer ${token}\r\nx-request-id: ${marker}\r\n${extra}Connection: close\r\n\r\n`;

describe("serve edge: request line and header screening", () => {
  it.each([
    ["a fragment after the path", (marker: string) => `/v2/v1/models?m=${marker}#frag`],
    ["a fragment hiding a dot-segment walk", (marker: string) => `/studio/${marker}#/../../v2/v1/models`],
  ])("refuses %s (`#` in the request target) with 400", async (_name, target) => {
    const result = await screened((marker) => authorized(marker, "", target(marker)));
    expect.soft(result.finals.map((response) => response.status), result.shown).toEqual([400]);
    expect.soft(result.seen.map(describeEntry), "the upstream saw it").toEqual([]);
  });

  it.each([
    ["a slash", "127.0.0.1/v2"],
    ["a question mark", "127.0.0.1?x=1"],
    ["an at sign (userinfo)", "evil@127.0.0.1"],
    ["whitespace", "127.0.0.1 evil"],
  ])("refuses a Host header containing %s with 400", async (_name, host) => {
    const result = await screened((marker) => authorized(marker, "", undefined, host));
    expect.soft(result.finals.map((response) => response.status), result.shown).toEqual([400]);
    expect.soft(result.seen.map(describeEntry), "the upstream saw it").toEqual([]);
  });

  it.each(["evil.example", "evil.example:443", "169.254.169.254"])("answers 421 to a Host it does not serve (%s)", async (host) => {
    const result = await screened((marker) => authorized(marker, "", undefined, host));
    expect.soft(result.finals.map((response) => response.status), result.shown).toEqual([421]);
    expect.soft(result.seen.map(describeEntry), "the upstream saw it").toEqual([]);
  });

  it("refuses a request with two different Host headers with 400", async () => {
    const result = await screened((marker) => authorized(marker, "Host: evil.example\r\n"));
    expect.soft(result.finals.map((response) => response.status), result.shown).toEqual([400]);
    expect.soft(result.seen.map(describeEntry), "the upstream saw it").toEqual([]);
  });

  it("refuses a request without a Host header with 400", async () => {
    const result = await screened((marker) => `GET /v2/v1/models?m=${marker} HTTP/1.1\r\nAuthorization: Bearer ${token}\r\nx-request-id: ${marker}\r\nConnection: close\r\n\r\n`);
    expect.soft(result.finals.map((response) => response.status), result.shown).toEqual([400]);
    expect.soft(result.seen.map(describeEntry), "the upstream saw it").toEqual([]);
  });

  it.each(["localhost", "127.0.0.1", "bind address with port", "localhost with port"])("serves the Host %s", async (which) => {
    const host = which === "bind address with port" ? `127.0.0.1:${port}` : which === "localhost with port" ? `localhost:${port}` : which;
    const result = await screened((marker) => authorized(marker, "", undefined, host));
    expect.soft(result.finals.map((response) => response.status), result.shown).toEqual([200]);
    expect.soft(result.seen.length, "the upstream saw it once").toBe(1);
  });

  it("answers 431 to more than 200 header lines", async () => {
    const many = Array.from({ length: 250 }, (_, index) => `x-h${index}: 1\r\n`).join("");
    const result = await screened((marker) => authorized(marker, many));
    expect.soft(result.finals.map((response) => response.status), result.shown).toEqual([431]);
    expect.soft(result.seen.map(describeEntry), "the upstream saw it").toEqual([]);
  });

  it("control: serves a request with 60 header lines", async () => {
    const many = Array.from({ length: 60 }, (_, index) => `x-h${index}: 1\r\n`).join("");
    const result = await screened((marker) => authorized(marker, many));
    expect.soft(result.finals.map((response) => response.status), result.shown).toEqual([200]);
    expect.soft(result.seen.length, "the upstream saw it once").toBe(1);
  });

  it("answers Expect: 100-continue on a POST with 100, then the final answer; never a 5xx", async () => {
    const id = uniqueId("expect");
    const before = upstream.recorded.length;
    const connection = await RawConnection.open();
    connection.write(`POST /studio/${id} HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\n`);
    await connection.settle((data) => /^HTTP\/1\.1 1\d\d /.test(data) || hasFinalResponse()(data), 2_000, 0);
    expect.soft(connection.data, "a 100 Continue before the body is sent").toMatch(/^HTTP\/1\.1 100 /);
    connection.write("hello");
    await connection.settle(hasFinalResponse(), 3_000, 50);
    connection.destroy();
    await sleep(100);
    const { responses } = parseResponses(connection.data, connection.closed);
    const shown = describeResponses(responses, connection.closed);
    expect.soft(responses.filter((response) => response.status >= 500).length, `a 5xx: ${shown}`).toBe(0);
    expect.soft(finalResponses(responses).map((response) => response.status), shown).toEqual([200]);
    expect.soft(jsonBody(finalResponses(responses)[0]), shown).toEqual({ method: "POST", target: `/studio/${id}`, bodyBytes: 5 });
    upstreamSawExactly("Expect: 100-continue", upstream.recorded.slice(before), [], [{ prefix: `/studio/${id}`, count: 1, body: "hello" }]);
  });
});

// ---------------------------------------------------------------------------------------------
// Upgrade: only a GET to the WebSocket route becomes a tunnel, and only after the core's 101.

const WS_HEADERS = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/** Requests written on the same connection after the first answer: each must be screened (or the connection closed). */
const FOLLOW_UPS = [
  { name: "a literal /v2/../sd/ walk", status: 400, request: (id: string) => `GET /v2/../sd/tunnel-${id} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${token}\r\n\r\n` },
  { name: "CONNECT", status: 405, request: () => `CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n` },
] as const;

const FIRST_REQUESTS = [
  { name: "GET /v2/v1/models with Upgrade: websocket (not a WebSocket route)", request: (id: string) => `GET /v2/v1/models?m=${id} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${token}\r\n${WS_HEADERS}\r\n` },
  { name: "POST /studio with Upgrade: websocket", request: (id: string) => `POST /studio/${id} HTTP/1.1\r\nHost: 127.0.0.1\r\n${WS_HEADERS}Content-Length: 5\r\n\r\nhello` },
  { name: "POST /audio/ws with Upgrade: websocket (a WebSocket route, but not a GET)", request: (id: string) => `POST /audio/ws?m=${id} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${token}\r\n${WS_HEADERS}Content-Length: 5\r\n\r\nhello` },
  { name: "GET /audio/ws with Upgrade: websocket but no credentials (the core answers 401, not 101)", request: () => `GET /audio/ws HTTP/1.1\r\nHost: 127.0.0.1\r\n${WS_HEADERS}\r\n` },
] as const;

describe("serve edge: Upgrade never turns a connection into an unscreened tunnel", () => {
  it.each(FIRST_REQUESTS.flatMap((first) => FOLLOW_UPS.map((followUp) => ({ name: `${first.name}, then ${followUp.name}`, first, followUp }))))("$name", async ({ name, first, followUp }) => {
    const id = uniqueId("upgrade");
    const before = upstream.recorded.length;
    const connection = await RawConnection.open();
    connection.write(first.request(id));
    await connection.settle(hasFinalResponse());
    const firstParse = parseResponses(connection.data, connection.closed);
    const firstShown = describeResponses(firstParse.responses, connection.closed);
    const firstFinals = finalResponses(firstParse.responses);
    expect.soft(firstFinals.length, `${name}: one answer to the first request: ${firstShown}`).toBe(1);
    expect.soft(firstFinals[0]?.status, `${name}: the first request must not be upgraded: ${firstShown}`).not.toBe(101);
    expect.soft(firstFinals[0]?.status ?? 0, `${name}: the first answer is a 5xx: ${firstShown}`).toBeLessThan(500);

    const consumed = connection.data.length;
    connection.write(followUp.request(id));
    await connection.settle((data) => hasFinalResponse()(data.slice(consumed)));
    connection.destroy();
    await sleep(150);
    const after = parseResponses(connection.data.slice(consumed), connection.closed);
    const afterShown = describeResponses(after.responses, connection.closed);
    // Closing the connection is as good as screening; any other answer means the bytes went through unscreened.
    const statuses = finalResponses(after.responses).map((response) => response.status);
    const screenedOrClosed = statuses.length === 0 ? connection.closed : statuses.length === 1 && statuses[0] === followUp.status;
    expect.soft(screenedOrClosed, `${name}: the follow-up was not screened (want ${followUp.status} or a close): ${afterShown} (rest ${JSON.stringify(after.rest.slice(0, 80))})`).toBe(true);
    const tunnelled = upstream.recorded.slice(before).filter((entry) => entry.target.includes(`tunnel-${id}`));
    expect.soft(tunnelled.map(describeEntry), `${name}: the follow-up reached the upstream`).toEqual([]);
    expect.soft(upstream.recorded.slice(before).filter(leaksCredentials).map(describeEntry), `${name}: credentials reached the upstream`).toEqual([]);
  });

  it("control: GET /audio/ws with a bearer token is upgraded and carries frames both ways", async () => {
    const connection = await RawConnection.open();
    connection.write(`GET /audio/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${token}\r\n${WS_HEADERS}\r\n`);
    await connection.settle((data) => data.includes("\r\n\r\n"), 3_000, 0);
    expect(connection.data).toMatch(/^HTTP\/1\.1 101 /);
    // A masked text frame "hi" (mask 1,2,3,4); the upstream answers "echo:hi".
    const mask = [1, 2, 3, 4];
    const masked = [..."hi"].map((character, index) => String.fromCharCode(character.charCodeAt(0) ^ mask[index % 4]!)).join("");
    connection.write(String.fromCharCode(0x81, 0x82, ...mask) + masked);
    await connection.settle((data) => data.includes("echo:hi"), 3_000, 0);
    connection.destroy();
    expect(connection.data).toContain("echo:hi");
  });
});

describe("serve edge: nothing secret ever reached an upstream", () => {
  it("no upstream request in this whole file carried x-halo-edge-secret or authorization, in headers or body", () => {
    expect(upstream.recorded.filter(leaksCredentials).map(describeEntry)).toEqual([]);
  });
});
