/** The methods halo-gate forwards; everything else is refused with 405 (never a 5xx, docs/contract.md §1). */
export const ALLOWED_METHODS: ReadonlySet<string> = new Set(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]);

/** The `Allow` header value for those refusals. */
export const ALLOW_HEADER = [...ALLOWED_METHODS].join(", ");
