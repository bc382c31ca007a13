-- halo-gate token store. Times are milliseconds since the Unix epoch (UTC).
-- Only SHA-256 hashes of tokens are stored, never the plaintext.

CREATE TABLE users (
  handle        TEXT PRIMARY KEY,
  created_at    INTEGER NOT NULL,
  -- Per-user limits; NULL means "the configured default".
  rps           REAL,
  burst         INTEGER,
  streams       INTEGER,
  daily_tokens  INTEGER
);

CREATE TABLE tokens (
  token_id            TEXT PRIMARY KEY,
  token_hash          TEXT NOT NULL UNIQUE,
  hint                TEXT NOT NULL,
  handle              TEXT NOT NULL REFERENCES users(handle),
  scopes              TEXT NOT NULL,          -- JSON array of scope names
  issued_at           INTEGER NOT NULL,
  expires_at          INTEGER NOT NULL,       -- valid while now < expires_at
  revoked_at          INTEGER,                -- final once set
  revoke_reason       TEXT,                   -- revoked | rotated
  expired_recorded_at INTEGER,                -- set once by the cron sweep
  last_used_at        INTEGER,                -- written lazily, at most about once a minute
  source              TEXT NOT NULL           -- invite | rotate | import
);

-- "One active token per user" and the seat cap depend on the clock, so they are enforced by the
-- conditional INSERTs in src/admin/users.ts (one statement each, atomic in SQLite), not by an index.
CREATE INDEX tokens_handle ON tokens(handle, issued_at);
CREATE INDEX tokens_live ON tokens(expires_at) WHERE revoked_at IS NULL;

CREATE TABLE audit (
  id        INTEGER PRIMARY KEY AUTOINCREMENT,
  at        INTEGER NOT NULL,
  kind      TEXT NOT NULL,       -- admin | auth | cron
  action    TEXT NOT NULL,       -- invite, revoke, rotate, update, import, allow, deny, expire, prune
  handle    TEXT,
  token_id  TEXT,
  route     TEXT,
  status    INTEGER,
  client    TEXT,
  reason    TEXT,
  detail    TEXT                 -- JSON, never a token or its hash
);
CREATE INDEX audit_at ON audit(at);
