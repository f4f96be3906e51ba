-- A download that failed for lack of disk space waits (status
-- 'waiting_for_space') until `retry_at`, then is tried again by itself, with a
-- growing delay: no person needed when space returns.
ALTER TABLE downloads ADD COLUMN retry_at TEXT;
