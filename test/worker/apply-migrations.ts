import { applyD1Migrations, env } from "cloudflare:test";

// Idempotent: applyD1Migrations skips migrations that were already applied in this file's storage.
await applyD1Migrations(env.DB, env.TEST_MIGRATIONS);
