/**
 * Bearer token format, generation and hashing. The plaintext exists only in what `invite`/`rotate`
 * print: everything stored or logged is the SHA-256 hash, the non-secret `token_id`, or the hint.
 */
export const TOKEN_PREFIX = "sk-halo-";
export const TOKEN_PATTERN = /^sk-halo-[0-9a-f]{32}$/;

const hex = (bytes: Uint8Array) => Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");

/** `sk-halo-` + 32 lowercase hex: 128 bits from the platform CSPRNG. */
export function generateToken(): string {
  return TOKEN_PREFIX + hex(crypto.getRandomValues(new Uint8Array(16)));
}

/** A non-secret identifier for a token, safe for audit rows, metrics and upstream headers. */
export function generateTokenId(): string {
  return `tok_${hex(crypto.getRandomValues(new Uint8Array(8)))}`;
}

/** SHA-256 of the whole token, lowercase hex. */
export async function hashToken(token: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(token));
  return hex(new Uint8Array(digest));
}

/** What an operator may see of a token: `sk-halo-3f1c…` (16 of 128 bits). */
export function tokenHint(token: string): string {
  return `${token.slice(0, TOKEN_PREFIX.length + 4)}…`;
}
