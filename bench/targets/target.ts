/** What every measured thing offers the bench: where to send load, with which bearers, and its processes. */
import { createHash, randomBytes } from "node:crypto";

export interface Target {
  /** Short name used in tables ("direct", "caddy", "floor", "serve", "serve-noquota"). */
  name: string;
  /** One line for the report: what this target is. */
  description: string;
  /** Full URL the load goes to. */
  url: string;
  /** Bearer tokens to spread the requests over (the direct upstream ignores them). */
  tokens: string[];
  /** Root PIDs of the target's own processes (RSS is read for them and their descendants). */
  pids(): number[];
  stop(): Promise<void>;
}

/** The JSON body every target answers `/v1/models` with (nginx serves it; the others pass it through). */
export const MODELS_BODY = '{"object":"list","data":[{"id":"bench-model"}]}';

/** `sk-halo-<32 hex>`, the format of the box's bearers (see ../shared/fixtures/bearers.sample.txt). */
export const randomBearer = () => `sk-halo-${randomBytes(16).toString("hex")}`;

export const sha256Hex = (text: string) => createHash("sha256").update(text).digest("hex");
