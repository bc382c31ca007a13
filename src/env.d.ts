// Bindings set at run time rather than in wrangler.toml (secrets); `wrangler types` generates the rest.
declare namespace Cloudflare {
  interface Env {
    /** Per-boot secret proving a request came through `halo-gate serve`'s edge socket. */
    EDGE_SECRET?: string;
    /** HS256 key for WebSocket tickets (serve: random per boot; Cloudflare: a secret). Tickets are off without it. */
    TICKET_SECRET?: string;
    /** SHA-256 (hex) of the operator token; the admin API is disabled without it. */
    ADMIN_TOKEN_SHA256?: string;
  }
}
