/**
 * The old Caddy `bearers.txt` format, as the invite script wrote it:
 *   sk-halo-<32 hex> # handle # issued <ISO 8601> # expires <ISO 8601>
 * with times often without seconds. Blank lines and `#` comment lines are skipped.
 */
import { HANDLE_PATTERN } from "../shared/config";
import { TOKEN_PATTERN } from "../auth/token";
import type { MalformedLine } from "../shared/admin-wire";

export interface BearerLine {
  line: number;
  token: string;
  handle: string;
  issuedAt: number;
  expiresAt: number;
}


const ISO_UTC_OR_OFFSET = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?(Z|[+-]\d{2}:\d{2})$/;

export function parseBearersFile(text: string): { entries: BearerLine[]; malformed: MalformedLine[] } {
  const entries: BearerLine[] = [];
  const malformed: MalformedLine[] = [];
  text.split(/\r?\n/).forEach((raw, index) => {
    const line = index + 1;
    const content = raw.trim();
    if (content === "" || content.startsWith("#")) return;
    const fields = content.split("#").map((field) => field.trim());
    if (fields.length !== 4) {
      malformed.push({ line, reason: "expected 'sk-halo-… # handle # issued T # expires T'" });
      return;
    }
    const [token, handle, issued, expires] = fields as [string, string, string, string];
    if (!TOKEN_PATTERN.test(token)) return void malformed.push({ line, reason: "the token is not sk-halo- followed by 32 lowercase hex" });
    if (!HANDLE_PATTERN.test(handle)) return void malformed.push({ line, reason: `"${handle}" is not a valid handle` });
    const issuedAt = parseStamp(issued, "issued");
    const expiresAt = parseStamp(expires, "expires");
    if (issuedAt === undefined) return void malformed.push({ line, reason: "the issued time is not 'issued <ISO 8601>'" });
    if (expiresAt === undefined) return void malformed.push({ line, reason: "the expires time is not 'expires <ISO 8601>'" });
    if (expiresAt <= issuedAt) return void malformed.push({ line, reason: "it expires before it was issued" });
    entries.push({ line, token, handle, issuedAt, expiresAt });
  });
  return { entries, malformed };
}

function parseStamp(field: string, keyword: string): number | undefined {
  const match = new RegExp(`^${keyword}\\s+(\\S+)$`).exec(field);
  if (!match || !ISO_UTC_OR_OFFSET.test(match[1]!)) return undefined;
  const time = Date.parse(match[1]!);
  return Number.isNaN(time) ? undefined : time;
}
