-- Download queue state (SPEC §5). `url` is the latest presigned link (refreshed
-- from GET /exports/{uid}/ when storage says it expired); `file_name` is the
-- sanitised name the archive gets in the downloads directory.
ALTER TABLE downloads ADD COLUMN url TEXT;
ALTER TABLE downloads ADD COLUMN file_name TEXT;
ALTER TABLE downloads ADD COLUMN updated_at TEXT;
CREATE INDEX downloads_by_status ON downloads (status, created_at);
