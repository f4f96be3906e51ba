-- The JSON:API service's collections (SPEC §8). Core columns as in 0001, but no
-- owner_name/dataset_slug: these records name their own scope. `uid` is the
-- resource's `id`, `raw` the whole resource object, `status` its
-- attributes.status. `updated_at` and the scoping columns are copied from the
-- record (its attributes, else for an `…_id` its relationship's id) when it is
-- written. Plain columns rather than generated ones: a generated column made
-- every insert keep a statement journal (twice the writer's time on a first
-- sync), and a query on it parsed each row's JSON.

CREATE TABLE projects (
  uid TEXT PRIMARY KEY,
  status TEXT,
  hash BLOB NOT NULL,
  raw TEXT NOT NULL,
  first_seen_at TEXT NOT NULL,
  last_seen_at TEXT NOT NULL,
  deleted_at TEXT,
  updated_at TEXT
);
CREATE INDEX projects_deleted ON projects(deleted_at) WHERE deleted_at IS NOT NULL;

CREATE TABLE jsonapi_datasets (
  uid TEXT PRIMARY KEY,
  status TEXT,
  hash BLOB NOT NULL,
  raw TEXT NOT NULL,
  first_seen_at TEXT NOT NULL,
  last_seen_at TEXT NOT NULL,
  deleted_at TEXT,
  updated_at TEXT,
  project_id TEXT
);
CREATE INDEX jsonapi_datasets_project ON jsonapi_datasets(project_id) WHERE deleted_at IS NULL;
CREATE INDEX jsonapi_datasets_deleted ON jsonapi_datasets(deleted_at) WHERE deleted_at IS NOT NULL;

CREATE TABLE entries (
  uid TEXT PRIMARY KEY,
  status TEXT,
  hash BLOB NOT NULL,
  raw TEXT NOT NULL,
  first_seen_at TEXT NOT NULL,
  last_seen_at TEXT NOT NULL,
  deleted_at TEXT,
  updated_at TEXT,
  project_id TEXT,
  dataset_id TEXT,
  wf_step TEXT
);
CREATE INDEX entries_project ON entries(project_id) WHERE deleted_at IS NULL;
CREATE INDEX entries_status ON entries(status);
CREATE INDEX entries_deleted ON entries(deleted_at) WHERE deleted_at IS NOT NULL;

CREATE TABLE annotations (
  uid TEXT PRIMARY KEY,
  status TEXT,
  hash BLOB NOT NULL,
  raw TEXT NOT NULL,
  first_seen_at TEXT NOT NULL,
  last_seen_at TEXT NOT NULL,
  deleted_at TEXT,
  updated_at TEXT,
  project_id TEXT,
  dataset_id TEXT,
  entry_id TEXT
);
CREATE INDEX annotations_project ON annotations(project_id) WHERE deleted_at IS NULL;
CREATE INDEX annotations_deleted ON annotations(deleted_at) WHERE deleted_at IS NOT NULL;

CREATE TABLE note_feeds (
  uid TEXT PRIMARY KEY,
  status TEXT,
  hash BLOB NOT NULL,
  raw TEXT NOT NULL,
  first_seen_at TEXT NOT NULL,
  last_seen_at TEXT NOT NULL,
  deleted_at TEXT,
  updated_at TEXT,
  project_id TEXT,
  dataset_id TEXT,
  entry_id TEXT,
  annotation_id TEXT,
  anchor_type TEXT
);
CREATE INDEX note_feeds_project ON note_feeds(project_id) WHERE deleted_at IS NULL;
CREATE INDEX note_feeds_status ON note_feeds(status);
CREATE INDEX note_feeds_deleted ON note_feeds(deleted_at) WHERE deleted_at IS NOT NULL;

CREATE TABLE note_comments (
  uid TEXT PRIMARY KEY,
  status TEXT,
  hash BLOB NOT NULL,
  raw TEXT NOT NULL,
  first_seen_at TEXT NOT NULL,
  last_seen_at TEXT NOT NULL,
  deleted_at TEXT,
  updated_at TEXT,
  note_feed_id TEXT
);
CREATE INDEX note_comments_feed ON note_comments(note_feed_id);
CREATE INDEX note_comments_deleted ON note_comments(deleted_at) WHERE deleted_at IS NOT NULL;

CREATE TABLE project_members (
  uid TEXT PRIMARY KEY,
  status TEXT,
  hash BLOB NOT NULL,
  raw TEXT NOT NULL,
  first_seen_at TEXT NOT NULL,
  last_seen_at TEXT NOT NULL,
  deleted_at TEXT,
  updated_at TEXT,
  project_id TEXT
);
CREATE INDEX project_members_project ON project_members(project_id) WHERE deleted_at IS NULL;
CREATE INDEX project_members_deleted ON project_members(deleted_at) WHERE deleted_at IS NOT NULL;
-- Incremental listings (SPEC §8), per scope: the watermark of the last complete
-- listing, the last complete full listing, and when the server last ignored or
-- refused `filter[updated_at__gte]` (the scope then stays on full listings, and
-- tries the filter again a day later).
ALTER TABLE sync_state ADD COLUMN watermark TEXT;
ALTER TABLE sync_state ADD COLUMN full_at TEXT;
ALTER TABLE sync_state ADD COLUMN filter_failed_at TEXT;
ALTER TABLE sync_state ADD COLUMN filter_error TEXT;
