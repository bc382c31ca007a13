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
);
