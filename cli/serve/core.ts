/**
 * The gateway core: the worker on workerd via miniflare, with persistent D1 and Durable Objects in
 * the state dir (wrangler's `--persist-to` layout). Its sockets are loopback-only: the gateway
 * socket is reached only through the edge, the admin socket serves the AdminApi entrypoint.
 */
import { dirname, join } from "node:path";
import { Log, LogLevel, Miniflare } from "miniflare";
import type { WorkerConfig } from "./worker-config";

export interface CoreOptions {
  worker: WorkerConfig;
  scriptPath: string;
  stateDir: string;
  admin: { host: string; port: number };
  bindings: { EDGE_SECRET: string; ADMIN_TOKEN_SHA256: string; TICKET_SECRET: string };
}

export interface Core {
  miniflare: Miniflare;
  gatewayUrl: URL;
  adminUrl: URL;
}

export async function startCore(options: CoreOptions): Promise<Core> {
  const persist = join(options.stateDir, "v3");
  const miniflare = new Miniflare({
    host: "127.0.0.1",
    port: 0,
    log: new Log(LogLevel.WARN),
    logRequests: false,
    cf: false,
    // The worker strips every client `cf-*` header itself (src/shared/header-allowlist.ts); miniflare's extra
    // outbound hop that does the same cost ~40 µs a request (issue 8).
    stripCfConnectingIp: false,
    telemetry: { enabled: false },
    modules: true,
    scriptPath: options.scriptPath,
    // Module names are relative to this root; it must contain the bundle wherever the state dir is.
    modulesRoot: dirname(options.scriptPath),
    compatibilityDate: options.worker.compatibilityDate,
    compatibilityFlags: options.worker.compatibilityFlags,
    bindings: { HALO_CONFIG: options.worker.rawHaloConfig as Record<string, unknown>, ...options.bindings },
    d1Databases: options.worker.d1Databases,
    d1Persist: join(persist, "d1"),
    durableObjects: options.worker.durableObjects,
    durableObjectsPersist: join(persist, "do"),
    unsafeDirectSockets: [
      { host: "127.0.0.1", port: 0 },
      { host: options.admin.host, port: options.admin.port, entrypoint: "AdminApi" },
    ],
  });
  await miniflare.ready;
  return {
    miniflare,
    gatewayUrl: await miniflare.unsafeGetDirectURL(),
    adminUrl: await miniflare.unsafeGetDirectURL(undefined, "AdminApi"),
  };
}
