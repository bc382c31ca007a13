import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["node_modules/", ".wrangler/", ".halo-gate/", "worker-configuration.d.ts"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      "@typescript-eslint/no-explicit-any": "error",
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "no-console": ["error", { allow: ["error", "warn"] }],
    },
  },
  {
    files: ["cli/**", "bin/**", "bench/**", "test/e2e/**", "test/support/**"],
    rules: { "no-console": "off" },
    languageOptions: { globals: { process: "readonly", console: "readonly", URL: "readonly", setTimeout: "readonly", clearTimeout: "readonly", Buffer: "readonly", fetch: "readonly", AbortController: "readonly", performance: "readonly", TextDecoder: "readonly" } },
  },
  {
    // The admin CLI writes only through cli/output.ts, which escapes control characters in whatever
    // it echoes; serve's own log lines are its business.
    files: ["cli/**"],
    ignores: ["cli/output.ts", "cli/commands/serve.ts", "cli/serve/**"],
    rules: {
      "no-console": "error",
      "no-restricted-properties": [
        "error",
        { object: "process", property: "stdout", message: "write through cli/output.ts (print, printJson, printTable), which escapes control characters" },
        { object: "process", property: "stderr", message: "write through cli/output.ts (printError), which escapes control characters" },
      ],
    },
  },
  // The boundary between worker code and Node code (issue 11): src/shared/ is the only part of the
  // worker the Node side (the CLI, serve's edge, bench, the e2e tests) may import, and it imports
  // nothing outside itself: no Node, no Workers runtime, no worker module.
  {
    files: ["src/shared/**"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            { group: ["../*"], message: "src/shared/ imports only src/shared/ (both the worker and Node run it)" },
            { group: ["node:*", "cloudflare:*", "hono", "hono/*"], message: "src/shared/ runs in Node and in workerd: no runtime-specific imports" },
          ],
        },
      ],
    },
  },
  {
    files: ["src/**"],
    ignores: ["src/shared/**"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            { group: ["node:*"], message: "worker code runs on workerd and Cloudflare: no Node APIs" },
            { regex: "^(\\.\\./)+(cli|bin|bench|test)/", message: "worker code never imports the Node side" },
          ],
        },
      ],
    },
  },
  {
    files: ["cli/**", "bin/**", "bench/**", "test/e2e/**", "test/support/**"],
    rules: {
      "no-restricted-imports": [
        "error",
        { patterns: [{ regex: "(^|/)src/(?!shared/)", message: "the Node side imports worker code only from src/shared/" }] },
      ],
    },
  },
);
