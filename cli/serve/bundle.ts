/** Bundles the worker for workerd the way wrangler does (ESM, workerd conditions, cloudflare:* external). */
import { join } from "node:path";
import { build, stop } from "esbuild";

export async function bundleWorker(entry: string, outDir: string): Promise<string> {
  const outfile = join(outDir, "worker.mjs");
  await build({
    entryPoints: [entry],
    outfile,
    bundle: true,
    format: "esm",
    platform: "neutral",
    target: "es2022",
    conditions: ["workerd", "worker", "browser"],
    mainFields: ["module", "main"],
    external: ["cloudflare:*"],
    logLevel: "error",
  });
  // esbuild keeps a ~45 MB helper process for later builds; serve builds once (issue 8).
  await stop();
  return outfile;
}
