-- Bounded audit growth (issue 9, item 7). A row may stand for several identical auth denials of one
-- aggregation window (src/audit/auth-audit.ts): `count` says how many. Every other row counts 1.
ALTER TABLE audit ADD COLUMN count INTEGER NOT NULL DEFAULT 1;

-- The window and what the aggregated denials share (client address, route, reason, status, token),
-- as one text key; NULL on every row that is a single event. Unique, so every isolate and process
-- adds to the same row with one upsert.
ALTER TABLE audit ADD COLUMN aggregate_key TEXT;
CREATE UNIQUE INDEX audit_aggregate_key ON audit(aggregate_key) WHERE aggregate_key IS NOT NULL;
