/** vitest globalSetup: one recording upstream and one closed port for the whole run. */
import { createServer } from "node:net";
import type { TestProject } from "vitest/node";
import { startRecordingUpstream } from "./upstream-server";
import type {} from "../provided-context";


async function freeClosedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export default async function setup(project: TestProject) {
  const upstream = await startRecordingUpstream();
  project.provide("upstreamPort", upstream.port);
  project.provide("closedPort", await freeClosedPort());
  return () => upstream.close();
}
