-- Archives uploaded to object storage (SPEC §10): a multipart upload under way
-- is recorded before its first part, so one that a crash left unfinished is
-- aborted at the next start. `path` then holds the object's URL.
ALTER TABLE downloads ADD COLUMN upload_key TEXT;
ALTER TABLE downloads ADD COLUMN upload_id TEXT;
