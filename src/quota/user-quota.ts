/**
 * One Durable Object per user for quotas (SPEC §6). The binding and its SQLite migration are
 * declared now so deployments never need a class rename; admission logic lands with the quota work.
 */
import { DurableObject } from "cloudflare:workers";

export class UserQuota extends DurableObject<Env> {}
