/** vitest globalSetup: one recording upstream and one closed port for the whole run. */
import type { TestProject } from "vitest/node";
import { freeLoopbackPort } from "./ports";
import { startRecordingUpstream } from "./upstream-server";
import type {} from "../provided-context";

export default async function setup(project: TestProject) {
  const upstream = await startRecordingUpstream();
  project.provide("upstreamPort", upstream.port);
  project.provide("closedPort", await freeLoopbackPort());
  return () => upstream.close();
}
