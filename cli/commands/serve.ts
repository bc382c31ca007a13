/**
 * `halo-gate serve`: the production launcher. Validates config and bind rules, starts the workerd
 * core (miniflare) on loopback, applies migrations, opens the edge on the bind address, fires the
 * crons, and on SIGTERM/SIGINT finishes in-flight requests before exiting 0.
 */
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import type { GatewayConfig } from "../../src/shared/config";
import { CliError } from "../errors";
import { applyMigrations } from "../serve/migrations";
import { checkBindAllowed, formatHostPort, parseBindAddress, tailscaleAddress } from "../serve/bind";
import { bundleWorker } from "../serve/bundle";
import { startCore } from "../serve/core";
import { scheduleCrons, validateCron } from "../serve/cron";
import { startEdge, type Edge, type TlsCredentials } from "../serve/edge";
import { createMeshResolver, isLoopback, type MeshResolver } from "../serve/mesh-identity";
import { servedHosts } from "../serve/edge-screen";
import type { TlsMaterial } from "../serve/tls";
import { childPids, reapOrphan } from "../serve/orphans";
import { loadWorkerConfig, PROJECT_ROOT, runtimeConfig } from "../serve/worker-config";
import { ensureStateDir, loadOrCreateOperatorToken, readRuntimeInfo, removeRuntimeInfo, sha256Hex, writeRuntimeInfo } from "../state";

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

export interface ServeOptions {
  stateDir: string;
  bind: string;
  adminBind: string;
  allowInsecureExposure: boolean;
  cron?: string | undefined;
  config?: string | undefined;
  /** How long `--bind tailscale` waits for the mesh (docs/contract.md §1: 60 s). */
  meshWaitMs: number;
  /** How long shutdown waits for in-flight requests. */
  graceMs: number;
  /** HTTPS on the bind address (and then no plain-HTTP listener there). */
  tls: { enabled: boolean; names: string[]; certFile?: string | undefined; keyFile?: string | undefined };
}

/** The served certificate: the operator's files, or a self-signed one kept in the state dir. */
async function tlsMaterial(options: ServeOptions, bindHost: string): Promise<TlsMaterial> {
  const { certFile, keyFile, names } = options.tls;
  // Loaded only with --tls: certificate generation pulls in an ASN.1 stack plain HTTP never needs.
  const { ensureSelfSignedCertificate, loadOperatorCertificate } = await import("../serve/tls");
  try {
    if (certFile && keyFile) return loadOperatorCertificate(certFile, keyFile);
    return await ensureSelfSignedCertificate({ dir: join(options.stateDir, "tls"), names: [bindHost, ...names, "localhost", "127.0.0.1"] });
  } catch (error) {
    throw new CliError(`TLS: ${(error as Error).message}`);
  }
}

const credentials = (material: TlsMaterial): TlsCredentials => ({ cert: material.cert, key: material.key, fingerprint: material.fingerprint });

/** One start-up line saying how tokens are bound to devices (issue 10). */
function meshIdentityLine(mesh: GatewayConfig["mesh"]): string {
  if (mesh.identity === "off") return "halo-gate mesh identity: off (tokens work from any device)";
  const verb = mesh.identity === "enforce" ? "refused" : "admitted and recorded (warn)";
  return (
    `halo-gate mesh identity: ${mesh.identity}: a token used from a device that is not its owner's is ${verb}; ` +
    `owners from tailscaled at ${mesh.tailscaled_socket}${mesh.trust_loopback ? ", loopback trusted" : ""}${mesh.allow_tagged ? ", tagged nodes allowed" : ""}`
  );
}

export async function serve(options: ServeOptions): Promise<number> {
  const started = performance.now();
  const worker = loadWorkerConfig(options.config ? resolve(options.config) : undefined);
  if (options.cron) validateCron(options.cron);

  const tailscale = /^tailscale(?::(\d+))?$/.exec(options.bind);
  const bind = tailscale
    ? { host: await tailscaleAddress(options.meshWaitMs), port: tailscale[1] ? Number(tailscale[1]) : 8443 }
    : parseBindAddress(options.bind, 8443);
  checkBindAllowed(bind.host, options.allowInsecureExposure);
  const admin = parseBindAddress(options.adminBind, 8444);
  checkBindAllowed(admin.host, false); // the admin API is loopback only, whatever the flags

  ensureStateDir(options.stateDir);
  const running = readRuntimeInfo(options.stateDir);
  if (running && running.pid !== process.pid && isAlive(running.pid)) {
    throw new CliError(`another halo-gate serve is already running on this state dir (pid ${running.pid}, ${running.gateway}).`);
  }
  for (const pid of running?.workerd_pids ?? []) {
    if (await reapOrphan(pid)) console.log(`halo-gate: ended workerd ${pid} left behind by a serve that was killed`);
  }
  const operatorToken = loadOrCreateOperatorToken(options.stateDir);
  const tls = options.tls.enabled ? await tlsMaterial(options, bind.host) : undefined;
  const scriptPath = await bundleWorker(worker.main, join(options.stateDir, "build"));
  const edgeSecret = randomBytes(32).toString("hex");
  let core;
  try {
    core = await startCore({
      worker,
      scriptPath,
      stateDir: options.stateDir,
      admin,
      // Tickets live at most 60 s, so a fresh key per boot costs nothing and is never stored.
      bindings: { EDGE_SECRET: edgeSecret, ADMIN_TOKEN_SHA256: sha256Hex(operatorToken), TICKET_SECRET: randomBytes(32).toString("hex") },
    });
  } catch (error) {
    throw new CliError(`the workerd core did not start (is the admin address ${formatHostPort(admin.host, admin.port)} already in use?): ${(error as Error).message.split("\n")[0]}`);
  }
  // From here on the core runs: any failure must end it too, or serve would linger with nothing listening.
  let edge: Edge;
  const meshConfig = worker.config.mesh;
  // Issue 10: the edge asks tailscaled who owns each credentialed request's peer (off: never asks).
  const mesh: MeshResolver | undefined =
    meshConfig.identity === "off"
      ? undefined
      : createMeshResolver({
          socketPath: meshConfig.tailscaled_socket,
          trustLoopback: meshConfig.trust_loopback,
          onAvailability: (available, reason) =>
            available
              ? console.log(`halo-gate: mesh identity: tailscaled at ${meshConfig.tailscaled_socket} answers again`)
              : console.error(
                  `halo-gate: mesh identity: tailscaled at ${meshConfig.tailscaled_socket} does not answer (${reason}): ` +
                    (meshConfig.identity === "enforce" ? "credentialed requests from the mesh get 503 until it does" : "requests are admitted and recorded as mesh_unavailable"),
                ),
        });
  try {
    try {
      await applyMigrations(await core.miniflare.getD1Database("DB"), resolve(PROJECT_ROOT, "migrations"));
    } catch (error) {
      throw new CliError(`database migration failed: ${(error as Error).message.split("\n")[0]}`);
    }
    const hosts = servedHosts({ bindHost: bind.host, tlsNames: options.tls.names, config: worker.config });
    try {
      edge = await startEdge({ host: bind.host, port: bind.port, core: core.gatewayUrl, secret: edgeSecret, config: worker.config, hosts, tls: tls && credentials(tls), stateDir: options.stateDir, mesh });
    } catch (error) {
      throw new CliError(`cannot listen on ${formatHostPort(bind.host, bind.port)}: ${(error as Error).message}`);
    }
  } catch (error) {
    mesh?.close();
    await core.miniflare.dispose().catch(() => {});
    throw error;
  }
  const fetcher = await core.miniflare.getWorker();
  const crons = scheduleCrons(options.cron ? [options.cron] : worker.crons, async (cron, scheduledTime) => {
    await fetcher.scheduled({ cron, scheduledTime });
  });

  const gatewayAddress = `${tls ? "https" : "http"}://${formatHostPort(edge.address.host, edge.address.port)}`;
  const adminAddress = `http://${formatHostPort(core.adminUrl.hostname.replace(/^\[|\]$/g, ""), Number(core.adminUrl.port))}`;
  const workerdPids = childPids("workerd");
  writeRuntimeInfo(options.stateDir, {
    pid: process.pid,
    workerd_pids: workerdPids,
    gateway: gatewayAddress,
    admin: adminAddress,
    core: core.gatewayUrl.origin,
    started_at: new Date().toISOString(),
    ...(worker.config.public_url ? { public_url: worker.config.public_url } : {}),
    ...runtimeConfig(worker),
    ...(tls ? { tls: { fingerprint: tls.fingerprint, self_signed: tls.selfSigned, cert_path: tls.certPath } } : {}),
  });
  console.log(`halo-gate admin API on ${adminAddress} (loopback only; operator token in ${join(options.stateDir, "operator-token")})`);
  console.log(`halo-gate crons: ${(options.cron ? [options.cron] : worker.crons).join(", ") || "none"} (UTC); state in ${options.stateDir}; ready in ${Math.round(performance.now() - started)} ms`);
  if (!worker.config.quotas) console.warn("halo-gate: WARNING: quotas = false in HALO_CONFIG: per-user quotas are not enforced");
  console.log(meshIdentityLine(worker.config.mesh));
  // Bound to loopback with loopback trusted, no peer is ever looked up: nothing to warn about.
  if (mesh && !existsSync(meshConfig.tailscaled_socket) && !(meshConfig.trust_loopback && isLoopback(bind.host))) {
    console.warn(`halo-gate: WARNING: mesh.identity = "${meshConfig.identity}" but there is no tailscaled socket at ${meshConfig.tailscaled_socket} (set mesh.tailscaled_socket, or run halo-gate doctor)`);
  }
  if (tls) {
    const kind = tls.selfSigned ? `self-signed for ${tls.names.join(", ")}; clients pin it or trust ${tls.certPath}` : `from ${tls.certPath}; SIGHUP re-reads it`;
    console.log(`halo-gate TLS certificate ${tls.fingerprint} (${kind})`);
  }
  console.log(`halo-gate listening on ${gatewayAddress}`);

  // miniflare's exit-hook answers SIGTERM/SIGINT with an immediate process.exit(143/130), which would
  // cut in-flight streams; its on-exit cleanup (ending workerd) stays, and shutdown is ours.
  process.removeAllListeners("SIGTERM");
  process.removeAllListeners("SIGINT");
  return new Promise<number>((resolveExit) => {
    let stopping = false;
    // A core that dies would leave the edge answering 502 forever: exit 1 instead, so the service
    // manager (systemd Restart=on-failure) brings the whole gateway back.
    const watchdog = setInterval(() => {
      if (stopping || workerdPids.every(isAlive)) return;
      stopping = true;
      clearInterval(watchdog);
      console.error("halo-gate: the workerd core exited unexpectedly; stopping so the service manager restarts halo-gate");
      for (const cron of crons) cron.stop();
      void edge.close(0).finally(() => {
        removeRuntimeInfo(options.stateDir, process.pid);
        // miniflare's own Node handles would keep a process with a dead runtime alive: leave now.
        process.exit(1);
      });
    }, 1_000);
    const stop = async (signal: string) => {
      if (stopping) return;
      stopping = true;
      clearInterval(watchdog);
      console.log(`halo-gate: ${signal}: finishing ${edge.inFlight()} in-flight request(s)`);
      // Whatever hangs (a runtime that will not dispose), the service manager gets an exit.
      setTimeout(() => {
        console.error("halo-gate: shutdown overran its grace by 15 s; exiting");
        process.exit(1);
      }, options.graceMs + 15_000).unref();
      for (const cron of crons) cron.stop();
      // Issue 12: requests waiting in the fair queue are answered now (503, Retry-After), not cut
      // when the grace ends; running ones finish within it.
      if (worker.config.routes.some((route) => route.max_in_flight !== undefined)) {
        const answer = await fetch(`${adminAddress}/admin/queue/drain`, { method: "POST", headers: { authorization: `Bearer ${operatorToken}` }, signal: AbortSignal.timeout(5_000) })
          .then((response) => response.json() as Promise<{ drained?: number }>)
          .catch(() => ({ drained: undefined }));
        if (answer.drained) console.log(`halo-gate: answered ${answer.drained} queued request(s) 503 (retry shortly)`);
      }
      await edge.close(options.graceMs);
      mesh?.close();
      await core.miniflare.dispose();
      removeRuntimeInfo(options.stateDir, process.pid);
      console.log("halo-gate: stopped");
      resolveExit(0);
    };
    // SIGHUP: re-read the certificate (an operator's renewed files) without dropping a connection.
    process.on("SIGHUP", () => {
      if (!tls || stopping) return;
      void tlsMaterial(options, bind.host)
        .then((material) => {
          edge.reloadTls(credentials(material));
          console.log(`halo-gate: SIGHUP: serving TLS certificate ${material.fingerprint}`);
        })
        .catch((error: unknown) => console.error(`halo-gate: SIGHUP: kept the current certificate: ${(error as Error).message}`));
    });
    process.once("SIGTERM", () => void stop("SIGTERM"));
    process.once("SIGINT", () => void stop("SIGINT"));
  });
}
