/**
 * Issue 7, bounded clients: one mesh peer that opens hundreds of slow connections must not starve
 * everyone else. Black box through the real `serve`, raw sockets (node:net) from distinct loopback
 * source addresses, each one a different peer to the edge:
 *   127.0.0.2  the flood: up to 600 connections, slow uploads (1 byte every 2 s of a 1 MB body to the
 *              unauthenticated /studio route) and trickled headers (slowloris: a header line every 2 s);
 *   127.0.0.1  an ordinary user: /healthz (200 within 100 ms, each) and authenticated /v2/v1/models;
 *   127.0.0.3  one trickled header block, which a header timeout must cut within ~15 s.
 * Everything is bounded in count and time (≈ 20 s of traffic) and every socket is closed at the end.
 */
import { connect, type Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startRecordingUpstream, type RecordingUpstream } from "../support/upstream-server";
import { inviteJson, startServe, testWranglerConfig, type Serve } from "./harness";

const FLOOD_PEER = "127.0.0.2";
const USER_PEER = "127.0.0.1";
const HEADER_PEER = "127.0.0.3";
const FLOOD_CONNECTIONS = 600;
const PER_PEER_LIMIT = 64;
const TRICKLE_MS = 2_000;
const HEALTHZ_BUDGET_MS = 100;
const HEADER_TIMEOUT_BUDGET_MS = 15_000;

const PROBE_FROM_MS = 1_500;
const PROBE_UNTIL_MS = 15_500;
const SNAPSHOT_AT_MS = 8_000;
const HEADER_PROBE_GIVE_UP_MS = 20_000;

let upstream: RecordingUpstream;
let gateway: Serve;
let port: number;
let token: string;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface FloodConnection {
  socket: Socket;
  kind: "upload" | "headers";
  connected: boolean;
  closed: boolean;
  answer: string;
}

interface Probe {
  path: string;
  status: number;
  ms: number;
}

/** One request on a fresh connection from `localAddress`; its status (0: none) and time to the whole answer. */
function probe(path: string, headers: Record<string, string> = {}, timeoutMs = 3_000, localAddress = USER_PEER): Promise<Probe> {
  const started = performance.now();
  return new Promise((resolve) => {
    let data = "";
    let settled = false;
    const finish = () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      const match = /^HTTP\/1\.1 (\d{3})/.exec(data);
      resolve({ path, status: match ? Number(match[1]) : 0, ms: performance.now() - started });
    };
    const complete = () => {
      const headEnd = data.indexOf("\r\n\r\n");
      if (headEnd === -1) return false;
      const length = /\r\ncontent-length: *(\d+)/i.exec(data.slice(0, headEnd));
      if (length) return data.length - headEnd - 4 >= Number(length[1]);
      return /\r\n0\r\n\r\n$/.test(data);
    };
    const socket = connect({ host: "127.0.0.1", port, localAddress }, () => {
      const lines = Object.entries({ Host: "127.0.0.1", ...headers, Connection: "close" }).map(([name, value]) => `${name}: ${value}\r\n`);
      socket.write(`GET ${path} HTTP/1.1\r\n${lines.join("")}\r\n`);
    });
    const timer = setTimeout(finish, timeoutMs);
    socket.on("data", (chunk: Buffer) => {
      data += chunk.toString("latin1");
      if (complete()) finish();
    });
    socket.on("close", finish);
    socket.on("error", finish);
  });
}

function openFloodConnection(index: number): FloodConnection {
  // Mostly slow uploads, every eighth a trickled header block, interleaved so both kinds get in early.
  const kind = index % 8 === 7 ? "headers" : "upload";
  const socket = connect({ host: "127.0.0.1", port, localAddress: FLOOD_PEER });
  const connection: FloodConnection = { socket, kind, connected: false, closed: false, answer: "" };
  socket.on("connect", () => {
    connection.connected = true;
    socket.write(
      kind === "upload"
        ? `POST /studio/slow-upload-${index} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\nx`
        : `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nx-slow-0: 1\r\n`,
    );
  });
  socket.on("data", (chunk: Buffer) => {
    if (connection.answer.length < 200) connection.answer += chunk.toString("latin1");
  });
  socket.on("close", () => (connection.closed = true));
  socket.on("error", () => {}); // refused or reset: counted as closed
  return connection;
}

/** What the scenario measured, asserted case by case below. */
const results = {
  healthz: [] as Probe[],
  models: [] as Probe[],
  flood: { opened: 0, connectedEver: 0, openAtSnapshot: 0, openUploadsAtSnapshot: 0, openHeadersAtSnapshot: 0, stillOpenAtEnd: 0 },
  headerProbe: { cutAfterMs: null as number | null, answer: "" },
  after: null as Probe | null,
};

async function trickledHeaderBlock(): Promise<void> {
  const started = performance.now();
  const socket = connect({ host: "127.0.0.1", port, localAddress: HEADER_PEER });
  let line = 0;
  socket.on("connect", () => socket.write("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"));
  const ticker = setInterval(() => {
    if (!socket.destroyed && socket.writable) socket.write(`x-trickle-${++line}: 1\r\n`);
  }, TRICKLE_MS);
  let gaveUp = false;
  try {
    await new Promise<void>((resolve) => {
      const cut = () => {
        if (!gaveUp) results.headerProbe.cutAfterMs ??= performance.now() - started;
        resolve();
      };
      socket.on("data", (chunk: Buffer) => {
        results.headerProbe.answer += chunk.toString("latin1");
        cut();
      });
      socket.on("close", cut);
      socket.on("error", () => {});
      setTimeout(resolve, HEADER_PROBE_GIVE_UP_MS);
    });
  } finally {
    gaveUp = true;
    clearInterval(ticker);
    socket.destroy();
  }
}

async function scenario(): Promise<void> {
  const start = performance.now();
  const elapsed = () => performance.now() - start;
  const flood: FloodConnection[] = [];
  const trickle = setInterval(() => {
    for (const connection of flood) {
      if (!connection.connected || connection.closed || !connection.socket.writable) continue;
      connection.socket.write(connection.kind === "upload" ? "x" : `x-slow-${Math.round(elapsed())}: 1\r\n`);
    }
  }, TRICKLE_MS);
  const headerProbe = trickledHeaderBlock();
  try {
    // The flood: 50 connections every 50 ms.
    for (let index = 0; index < FLOOD_CONNECTIONS; index++) {
      flood.push(openFloodConnection(index));
      if (index % 50 === 49) await sleep(50);
    }
    results.flood.opened = flood.length;

    // Meanwhile another peer uses the gateway as usual.
    const probes: Promise<void>[] = [];
    await sleep(Math.max(0, PROBE_FROM_MS - elapsed()));
    let snapshotTaken = false;
    for (let tick = 0; elapsed() < PROBE_UNTIL_MS; tick++) {
      probes.push(probe("/healthz").then((result) => void results.healthz.push(result)));
      if (tick % 4 === 0) probes.push(probe("/v2/v1/models", { Authorization: `Bearer ${token}` }, 5_000).then((result) => void results.models.push(result)));
      if (!snapshotTaken && elapsed() >= SNAPSHOT_AT_MS) {
        snapshotTaken = true;
        const open = flood.filter((connection) => connection.connected && !connection.closed);
        results.flood.openAtSnapshot = open.length;
        results.flood.openUploadsAtSnapshot = open.filter((connection) => connection.kind === "upload").length;
        results.flood.openHeadersAtSnapshot = open.filter((connection) => connection.kind === "headers").length;
      }
      await sleep(250);
    }
    await Promise.all(probes);
    await headerProbe;
  } finally {
    clearInterval(trickle);
    results.flood.connectedEver = flood.filter((connection) => connection.connected).length;
    for (const connection of flood) connection.socket.destroy();
    const deadline = Date.now() + 3_000;
    while (flood.some((connection) => !connection.closed) && Date.now() < deadline) await sleep(50);
    results.flood.stillOpenAtEnd = flood.filter((connection) => !connection.closed).length;
  }
  await sleep(500);
  results.after = await probe("/healthz", {}, 5_000);
}

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  gateway = await startServe({ config: testWranglerConfig(upstream.port) });
  port = Number(new URL(gateway.url).port);
  ({ token } = await inviteJson(gateway.stateDir, "patient", ["--rps", "1000", "--burst", "1000", "--streams", "50"]));
  // Warm the path once so the first measured /healthz is not a cold start.
  await probe("/healthz", {}, 5_000);
  await probe("/v2/v1/models", { Authorization: `Bearer ${token}` }, 5_000);
  await scenario();
}, 60_000);

afterAll(async () => {
  await gateway?.stop();
  await upstream?.close();
});

const summary = (probes: Probe[]) =>
  `${probes.length} probes, statuses ${JSON.stringify(Object.fromEntries([...new Set(probes.map((entry) => entry.status))].map((status) => [status, probes.filter((entry) => entry.status === status).length])))}, max ${Math.round(Math.max(0, ...probes.map((entry) => entry.ms)))} ms`;

describe("serve edge: a slow-client flood from one peer does not starve the others", () => {
  it(`answers every /healthz from another peer with 200 within ${HEALTHZ_BUDGET_MS} ms`, () => {
    expect(results.healthz.length).toBeGreaterThan(40);
    const failed = results.healthz.filter((entry) => entry.status !== 200);
    const slowest = Math.max(...results.healthz.map((entry) => entry.ms));
    expect.soft(failed.length, `not 200: ${summary(results.healthz)}`).toBe(0);
    expect.soft(slowest, `slowest /healthz: ${summary(results.healthz)}`).toBeLessThanOrEqual(HEALTHZ_BUDGET_MS);
  });

  it("keeps answering authenticated requests from another peer (200)", () => {
    expect(results.models.length).toBeGreaterThan(10);
    expect(results.models.filter((entry) => entry.status !== 200).length, summary(results.models)).toBe(0);
  });

  it(`refuses or closes the flooding peer's connections beyond a per-peer cap (≤ ${PER_PEER_LIMIT} of ${FLOOD_CONNECTIONS} stay open)`, () => {
    expect(results.flood.opened).toBe(FLOOD_CONNECTIONS);
    expect(results.flood.openAtSnapshot, JSON.stringify(results.flood)).toBeLessThanOrEqual(PER_PEER_LIMIT);
  });

  it(`cuts a trickled header block with a header timeout (closed or 408 within ~${HEADER_TIMEOUT_BUDGET_MS / 1000} s)`, () => {
    const { cutAfterMs, answer } = results.headerProbe;
    expect(cutAfterMs, `never cut in ${HEADER_PROBE_GIVE_UP_MS / 1000} s`).not.toBeNull();
    expect.soft(cutAfterMs ?? Infinity, `cut after ${Math.round(cutAfterMs ?? -1)} ms`).toBeLessThanOrEqual(HEADER_TIMEOUT_BUDGET_MS);
    if (answer) expect.soft(answer, "an answer to an unfinished header block must be a 408").toMatch(/^HTTP\/1\.1 408 /);
  });

  it("is healthy afterwards, and every flood connection was closed", () => {
    expect.soft(results.after?.status, JSON.stringify(results.after)).toBe(200);
    expect.soft(results.flood.stillOpenAtEnd, JSON.stringify(results.flood)).toBe(0);
  });
});
