-- /healthz proves the gateway can still write (a full disk must show as unhealthy) by upserting
-- this one row, at most once a second per isolate (src/storage/health.ts).

CREATE TABLE health (
  id  INTEGER PRIMARY KEY CHECK (id = 1),
  at  INTEGER NOT NULL             -- time of the last probe, ms since the Unix epoch
);
