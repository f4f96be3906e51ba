-- What a running daemon waits for, where `status` (which reads only the
-- database) can see it.
-- A download that failed for lack of disk space waits (status
-- 'waiting_for_space') until `retry_at`, then is tried again by itself, with a
-- growing delay: no person needed when space returns.
ALTER TABLE downloads ADD COLUMN retry_at TEXT;
-- The daemon's own state worth showing, such as `api_paused_until` (a pause the
-- API asked for, of a minute or more).
CREATE TABLE service_state (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL,
  updated_at TEXT NOT NULL
);
