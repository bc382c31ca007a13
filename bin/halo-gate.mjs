#!/usr/bin/env node
// The halo-gate CLI. TypeScript sources run through tsx, so `npx halo-gate` never runs a stale build.
import { register } from "tsx/esm/api";

register();
const { main } = await import("../cli/main.ts");
const code = await main(process.argv.slice(2));
// A failed serve may leave the runtime's handles behind: exit rather than linger with nothing listening.
if (code !== 0) process.exit(code);
process.exitCode = code;
