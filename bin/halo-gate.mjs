#!/usr/bin/env node
// The halo-gate CLI. TypeScript sources run through tsx, so `npx halo-gate` never runs a stale build.
import { register } from "tsx/esm/api";

register();
const { main } = await import("../cli/main.ts");
process.exitCode = await main(process.argv.slice(2));
