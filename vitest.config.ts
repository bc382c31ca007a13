import { cloudflareTest, readD1Migrations } from "@cloudflare/vitest-pool-workers";
import { defineConfig } from "vitest/config";

const migrations = await readD1Migrations("./migrations");

export default defineConfig({
  test: {
    projects: [
      {
        // Unit and integration tests inside workerd, against real D1 and Durable Objects.
        plugins: [
          cloudflareTest({
            wrangler: { configPath: "./wrangler.toml" },
            miniflare: { bindings: { TEST_MIGRATIONS: migrations, EDGE_SECRET: "test-edge-secret", TICKET_SECRET: "test-ticket-secret-0123456789abcdef" } },
          }),
        ],
        test: {
          name: "worker",
          include: ["test/worker/**/*.test.ts"],
          globalSetup: ["test/support/global-upstream.ts"],
          setupFiles: ["test/worker/apply-migrations.ts"],
        },
      },
      {
        // The real CLI and the real `halo-gate serve` as subprocesses, real upstreams on loopback.
        test: {
          name: "e2e",
          include: ["test/e2e/**/*.test.ts"],
          environment: "node",
          testTimeout: 90_000,
          hookTimeout: 60_000,
        },
      },
    ],
  },
});
