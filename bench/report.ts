/**
 * Turns the bench's samples into the report: medians over the rounds, ratios to `direct` and to
 * `floor`, the streaming, start-up and memory numbers, and the machine they were measured on.
 * The same markdown is printed and written to bench/RESULTS.md.
 */
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import type { ProcessRss } from "./lib/processes.ts";
import { median } from "./lib/stats.ts";
import type { SseRun } from "./sse.ts";
import type { WrkResult } from "./wrk.ts";

export interface BenchData {
  settings: { durationS: number; rounds: number; connections: number[]; short: boolean };
  targets: Array<{ name: string; description: string }>;
  load: Array<{ target: string; connections: number; round: number; result: WrkResult }>;
  sse: Array<{ direct: SseRun; serve: SseRun }>;
  startupMs: number[];
  rss: Array<{ target: string; processes: ProcessRss[] }>;
}

interface Cell {
  rps: number;
  p50: number;
  p99: number;
  errors: number;
  requests: number;
}

const grouped = (value: number) => (Number.isFinite(value) ? String(Math.round(value)).replace(/\B(?=(\d{3})+(?!\d))/g, " ") : "–");
const ms = (value: number) => (!Number.isFinite(value) ? "–" : value < 10 ? value.toFixed(2) : value < 100 ? value.toFixed(1) : value.toFixed(0));
const ratio = (value: number, base: number | undefined) => {
  if (base === undefined || !Number.isFinite(value) || !Number.isFinite(base) || base === 0) return "–";
  const r = value / base;
  return r < 0.1 ? r.toFixed(3) : r < 10 ? r.toFixed(2) : r.toFixed(1);
};
const table = (header: string[], rows: string[][]) =>
  [`| ${header.join(" | ")} |`, `|${header.map((title, index) => (index === 0 ? "---" : "--:")).join("|")}|`, ...rows.map((row) => `| ${row.join(" | ")} |`)].join("\n");

function firstLine(command: string, args: string[]): string {
  const result = spawnSync(command, args, { encoding: "utf8" });
  return `${result.stdout ?? ""}${result.stderr ?? ""}`.split("\n")[0]?.trim() ?? "?";
}

/** nproc, CPU model, node version, date, and the versions of the measured programs. */
export function machineLine(date: Date, workerd: string): string {
  const cpu = /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1]?.trim() ?? "unknown CPU";
  const tools = [
    firstLine("nginx", ["-v"]).replace("nginx version: ", ""),
    `caddy ${firstLine("caddy", ["version"])}`,
    firstLine("wrk", ["-v"]).replace(/ Copyright.*/, ""),
    firstLine(workerd, ["--version"]),
  ];
  return `nproc ${availableParallelism()} · ${cpu} · node ${process.version} · ${date.toISOString()} · ${tools.join(" · ")}`;
}

export function renderReport(data: BenchData, machine: string): string {
  const { settings } = data;
  const cells = new Map<string, Cell>();
  for (const target of data.targets) {
    for (const connections of settings.connections) {
      const samples = data.load.filter((sample) => sample.target === target.name && sample.connections === connections).map((sample) => sample.result);
      cells.set(`${target.name}@${connections}`, {
        rps: median(samples.map((sample) => sample.rps)),
        p50: median(samples.map((sample) => sample.p50Ms)),
        p99: median(samples.map((sample) => sample.p99Ms)),
        errors: samples.reduce((sum, sample) => sum + sample.non2xx + sample.socketErrors, 0),
        requests: samples.reduce((sum, sample) => sum + sample.requests, 0),
      });
    }
  }

  const loadRows: string[][] = [];
  for (const connections of settings.connections) {
    const direct = cells.get(`direct@${connections}`);
    const floor = cells.get(`floor@${connections}`);
    for (const target of data.targets) {
      const cell = cells.get(`${target.name}@${connections}`)!;
      loadRows.push([
        target.name === "serve" ? `**${target.name}**` : target.name,
        String(connections),
        grouped(cell.rps),
        ratio(cell.rps, direct?.rps),
        ratio(cell.rps, floor?.rps),
        ms(cell.p50),
        ratio(cell.p50, direct?.p50),
        ratio(cell.p50, floor?.p50),
        ms(cell.p99),
        ratio(cell.p99, direct?.p99),
        ratio(cell.p99, floor?.p99),
        cell.errors === 0 ? "0" : `${cell.errors} of ${grouped(cell.requests)}`,
      ]);
    }
  }

  const sse = (pick: (run: SseRun) => number) => {
    const direct = median(data.sse.map((pair) => pick(pair.direct)));
    const serve = median(data.sse.map((pair) => pick(pair.serve)));
    const added = median(data.sse.map((pair) => pick(pair.serve) - pick(pair.direct)));
    return [ms(direct), ms(serve), ms(added)];
  };

  const rssRows = data.rss.map(({ target, processes }) => [
    target,
    processes.map((entry) => `${entry.name} ${Math.round(entry.rssMb)}`).join(" + ") || "–",
    String(Math.round(processes.reduce((sum, entry) => sum + entry.rssMb, 0))),
  ]);

  const startup = data.startupMs.map((value) => grouped(value)).join(", ");
  const lines = [
    "# `npm run bench` — results",
    "",
    ...(settings.short
      ? [
          `> **Short development run** (${settings.durationS} s per load, ${settings.rounds} round(s); the defaults are 5 s × 3 rounds) on a machine shared with other work:`,
          "> the numbers show that every part runs, not what the gateway costs. Replace this file with a full run before quoting it.",
          "",
        ]
      : []),
    `Machine: ${machine}`,
    "",
    `Settings: ${settings.durationS} s per load, ${settings.rounds} round(s), connections ${settings.connections.join(", ")} (wrk \`-t1 -c1\`; \`-t2 -cN\` above),`,
    "targets interleaved in every round in the order below; each cell is the median over the rounds. All on loopback;",
    "wrk runs on the same cores as the target, so the fastest targets are partly limited by wrk itself.",
    "",
    ...data.targets.map((target) => `- **${target.name}**: ${target.description}`),
    "",
    "## Requests: bearer `GET` of the models list, spread over 10 tokens",
    "",
    "×direct and ×floor are this target's value divided by direct's and by floor's at the same connection count",
    "(req/s: below 1 is slower; latency: above 1 is slower). Errors: non-2xx answers + socket errors, summed over the rounds.",
    "",
    table(["target", "conns", "req/s", "×direct", "×floor", "p50 ms", "×direct", "×floor", "p99 ms", "×direct", "×floor", "errors"], loadRows),
    "",
    `## Streaming: SSE, ${data.sse.length} stream(s) each way, 50 events 20 ms apart`,
    "",
    table(["ms (median over the streams)", "direct", "serve", "added by serve"], [
      ["request → first event", ...sse((run) => run.firstEventMs)],
      ["per event: sent → arrived (median of the 50)", ...sse((run) => run.perEventMs)],
    ]),
    "",
    "## Start-up and memory",
    "",
    `\`serve\` start-up to "listening": median ${grouped(median(data.startupMs))} ms of ${data.startupMs.length} starts (${startup} ms; the first on a fresh state dir,`,
    "the others restarts on it; each start bundles the worker with esbuild; nothing else of the bench running).",
    "",
    "RSS (VmRSS) after the load, MB, per process (the serve rows: the Node edge/launcher and every descendant):",
    "",
    table(["target", "processes (MB)", "total MB"], rssRows),
    "",
  ];
  return lines.join("\n");
}
