/**
 * A copy of this install's wrangler.toml with its HALO_CONFIG edited, for `serve --config`: the e2e
 * harness, the soak and the benches each start serve this way. The copy's `main` points back at this
 * install's worker (serve ignores it, wrangler would not). Node only.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parse, stringify } from "smol-toml";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

export type HaloConfig = Record<string, unknown> & { routes: Array<Record<string, unknown>> };

/** Writes `<dir>/wrangler.toml` after `edit` changed the parsed HALO_CONFIG in place; returns its path. */
export function writeWranglerCopy(dir: string, edit: (halo: HaloConfig) => void): string {
  const toml = parse(readFileSync(join(ROOT, "wrangler.toml"), "utf8")) as Record<string, unknown> & { vars: { HALO_CONFIG: HaloConfig } };
  edit(toml.vars.HALO_CONFIG);
  toml.main = join(ROOT, "src/index.ts");
  const path = join(dir, "wrangler.toml");
  writeFileSync(path, stringify(toml));
  return path;
}
