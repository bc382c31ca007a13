import { cloudflareTest, readD1Migrations } from "@cloudflare/vitest-pool-workers";
import { defineConfig } from "vitest/config";
import { WorkerdLogReporter } from "./test/support/workerd-logs.ts";

const migrations = await readD1Migrations("./migrations");

export default defineConfig({
  test: {
    // Quiet unless something fails (issue 11). A passing run printed 340 lines: 44 of vitest's file
    // results and summary, 227 slow-test lines, 39 of tests' console output, 28 of workerd, 2 of a
    // Node deprecation (test/e2e/setup.ts). A test's console output (its timings, the gateway's
    // expected "halo-gate: storage unavailable" logs) is printed only when that test fails;
    // `--silent=false` shows it all.
    silent: "passed-only",
    // workerd's own lines from the workers pool, held back per test file (test/support/workerd-logs.ts).
    // After "default": it wraps the stream writes the default reporter wraps on a terminal.
    reporters: ["default", new WorkerdLogReporter({ project: "worker" })],
    // The default 300 ms listed 227 of 661 passing tests by name on every run: an e2e test that runs
    // the CLI or serve spawns node + tsx (~600 ms a CLI call), and desync.test.ts's 110 take ~320 ms
    // each. Over 10 s: 6 (the seat race, two kill -9 restarts, a failing migration, the audit flood,
    // the lease past workerd's eviction).
    slowTestThreshold: 10_000,
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
          setupFiles: ["test/e2e/setup.ts"],
          testTimeout: 90_000,
          hookTimeout: 60_000,
        },
      },
    ],
  },
});
