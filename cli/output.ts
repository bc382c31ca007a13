/**
 * Everything the admin CLI writes goes through here, so nothing it echoes (a handle argument, a line
 * of a bearers file, an error message quoting input, headscale's stderr) can drive the terminal:
 * control characters are shown escaped (`\x1b`, `\u202e`), never written raw. Colour only on a
 * terminal and never with `NO_COLOR` (https://no-color.org) or `TERM=dumb`. eslint keeps the other
 * admin modules off `console` and `process.stdout`.
 */

/**
 * C0 controls but newline, DEL and C1 controls (CSI is U+009B on some terminals), line/paragraph
 * separators and the bidirectional overrides and isolates that reorder what is shown.
 */
// eslint-disable-next-line no-control-regex -- finding control characters is the point
const UNSAFE = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

const hex = (code: number, digits: number) => code.toString(16).padStart(digits, "0");

/** `text` with every unsafe character shown as an escape (`\x1b`, `\u202e`); newlines are kept. */
export function escapeControl(text: string): string {
  return text.replace(UNSAFE, (char) => {
    const code = char.charCodeAt(0);
    return code <= 0xff ? `\\x${hex(code, 2)}` : `\\u${hex(code, 4)}`;
  });
}

/** JSON text with the same characters as `\u` escapes: the same JSON value, safe on a terminal. */
export function escapeJson(text: string): string {
  return text.replace(UNSAFE, (char) => (char === "\t" ? char : `\\u${hex(char.charCodeAt(0), 4)}`));
}

/** ISO times (alone or in a message) to the second: `2026-12-05T10:00:00.123Z` → `2026-12-05T10:00:00Z`. */
export const toSecond = (text: string) => text.replace(/(T\d{2}:\d{2}:\d{2})\.\d+Z/g, "$1Z");

/** A line (or lines) on stdout, escaped. */
export function print(text = ""): void {
  process.stdout.write(`${escapeControl(text)}\n`);
}

/** A line (or lines) on stderr, escaped. */
export function printError(text: string): void {
  process.stderr.write(`${escapeControl(text)}\n`);
}

/** A value as JSON on stdout (`--json`): exactly JSON.stringify's value. */
export function printJson(value: unknown, indent?: number): void {
  process.stdout.write(`${escapeJson(JSON.stringify(value, null, indent))}\n`);
}

/** NDJSON (or any JSON text) passed through from the admin API. */
export function printJsonText(text: string): void {
  process.stdout.write(escapeJson(text));
}

/** Colour on stdout: only a terminal, and neither NO_COLOR (any non-empty value) nor TERM=dumb. */
export function colorEnabled(stream: NodeJS.WriteStream = process.stdout): boolean {
  return stream.isTTY === true && !process.env.NO_COLOR && process.env.TERM !== "dumb";
}

export type Style = "bold" | "dim" | "green" | "yellow" | "red";
const SGR: Record<Style, [number, number]> = { bold: [1, 22], dim: [2, 22], green: [32, 39], yellow: [33, 39], red: [31, 39] };

/** The width tables fit by default: 100 columns, or a narrower terminal's own. */
export function defaultWidth(stream: NodeJS.WriteStream = process.stdout): number {
  return stream.isTTY && stream.columns > 0 ? Math.min(100, stream.columns) : 100;
}

export interface Column<Row> {
  header: string;
  cell: (row: Row) => string | number;
  align?: "left" | "right";
  /** Shown only with --wide. */
  wide?: boolean;
  /** Dropped to fit the width, highest first; columns without it are always shown. */
  drop?: number;
  style?: (row: Row) => Style | undefined;
  /** Cut with "…" first when the table is still too wide (e.g. a 32-character handle on a narrow terminal). */
  shrink?: boolean;
}

export interface TableOptions {
  wide: boolean;
  /** Every line fits this many columns (ignored with --wide). */
  width: number;
  color: boolean;
}

const GAP = "  ";
const ELLIPSIS = "…";

/**
 * A plain aligned table (a header row, two spaces between columns, no box). Without --wide it fits
 * `width`: columns marked `drop` go first, then the widest cells are cut with "…". Cells are
 * escaped before they are measured, and every cell is ASCII or one-column characters, so the
 * string length is the width on screen.
 */
export function renderTable<Row>(columns: Column<Row>[], rows: Row[], options: TableOptions): string {
  let shown = columns.filter((column) => options.wide || !column.wide);
  const cells = (column: Column<Row>) => rows.map((row) => escapeControl(String(column.cell(row))));
  const natural = (column: Column<Row>) => Math.max(column.header.length, ...cells(column).map((cell) => cell.length));
  const total = (widths: number[]) => widths.reduce((sum, width) => sum + width, 0) + GAP.length * (widths.length - 1);
  if (!options.wide) {
    while (total(shown.map(natural)) > options.width) {
      const droppable = shown.filter((column) => column.drop !== undefined).sort((a, b) => b.drop! - a.drop!)[0];
      if (!droppable) break;
      shown = shown.filter((column) => column !== droppable);
    }
  }
  const widths = shown.map(natural);
  if (!options.wide) {
    // Still too wide: cut the widest column, the shrinkable ones first, one character at a time.
    const widest = (candidates: number[], floor: number) => {
      const index = candidates.filter((candidate) => widths[candidate]! > floor).sort((a, b) => widths[b]! - widths[a]!)[0];
      return index;
    };
    const all = shown.map((_, index) => index);
    while (total(widths) > options.width) {
      const index = widest(all.filter((candidate) => shown[candidate]!.shrink), 8) ?? widest(all, 4);
      if (index === undefined) break;
      widths[index]!--;
    }
  }
  const fit = (text: string, width: number) => (text.length > width ? `${text.slice(0, width - 1)}${ELLIPSIS}` : text);
  const paint = (text: string, style: Style | undefined) => (options.color && style ? `\x1b[${SGR[style][0]}m${text}\x1b[${SGR[style][1]}m` : text);
  // Padding outside the colour, so a line's trailing spaces can be trimmed.
  const cell = (text: string, index: number, style: Style | undefined) => {
    const fitted = fit(text, widths[index]!);
    const padding = " ".repeat(widths[index]! - fitted.length);
    return shown[index]!.align === "right" ? `${padding}${paint(fitted, style)}` : `${paint(fitted, style)}${padding}`;
  };
  const line = (parts: string[]) => parts.join(GAP).trimEnd();
  const header = line(shown.map((column, index) => cell(column.header, index, "bold")));
  const body = rows.map((row) => line(shown.map((column, index) => cell(escapeControl(String(column.cell(row))), index, column.style?.(row)))));
  // The last resort that keeps the promise whatever the data: no line is wider than asked.
  const lines = [header, ...body].map((text) => (options.wide || options.color || text.length <= options.width ? text : fit(text, options.width)));
  return lines.join("\n");
}

/** A table on stdout (its cells are escaped by renderTable; the only raw bytes are its own colours). */
export function printTable<Row>(columns: Column<Row>[], rows: Row[], wide: boolean): void {
  process.stdout.write(`${renderTable(columns, rows, { wide, width: defaultWidth(), color: colorEnabled() })}\n`);
}
