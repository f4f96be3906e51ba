-- avala-mirror in PostgreSQL (SPEC §9): the same tables, columns and meaning as
-- the SQLite mirror after its migrations 0001-0008 (migrations/sqlite/), in the
-- schema named by store.schema. Append-only like those: changes go in 0002 on.
-- Differences of type only: `raw` and `payload` are jsonb; the mirror's own
-- times are timestamptz; counts are bigint; flags are boolean; `hash` is bytea.
-- Times the API sent (`exports.created_at`, the JSON:API `updated_at`, the
-- watermark) stay text, as the API wrote them. `id` stands for SQLite's rowid:
-- a row's position, in the order the mirror first saw it.

CREATE TABLE datasets (
  id bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
  uid text PRIMARY KEY,
  owner_name text,
  dataset_slug text,
  status text,
  hash bytea NOT NULL,
  raw jsonb NOT NULL,
  first_seen_at timestamptz NOT NULL,
  last_seen_at timestamptz NOT NULL,
  deleted_at timestamptz,
  slug text,
  is_sequence boolean
);
CREATE INDEX datasets_scope ON datasets (owner_name, deleted_at);
CREATE INDEX datasets_slug ON datasets (owner_name, slug) WHERE deleted_at IS NULL;
CREATE INDEX datasets_deleted ON datasets (deleted_at) WHERE deleted_at IS NOT NULL;

CREATE TABLE sequences (
  id bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
  uid text PRIMARY KEY,
  owner_name text,
  dataset_slug text,
  status text,
  hash bytea NOT NULL,
  raw jsonb NOT NULL,
  first_seen_at timestamptz NOT NULL,
  last_seen_at timestamptz NOT NULL,
  deleted_at timestamptz
);
CREATE INDEX sequences_scope ON sequences (owner_name, dataset_slug, deleted_at, id);
CREATE INDEX sequences_status ON sequences (status);
CREATE INDEX sequences_deleted ON sequences (deleted_at) WHERE deleted_at IS NOT NULL;

CREATE TABLE items (
  id bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
  uid text PRIMARY KEY,
  owner_name text,
  dataset_slug text,
  status text,
  hash bytea NOT NULL,
  raw jsonb NOT NULL,
  first_seen_at timestamptz NOT NULL,
  last_seen_at timestamptz NOT NULL,
  deleted_at timestamptz
);
CREATE INDEX items_scope ON items (owner_name, dataset_slug, deleted_at, id);
CREATE INDEX items_deleted ON items (deleted_at) WHERE deleted_at IS NOT NULL;

CREATE TABLE slices (
  id bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
  uid text PRIMARY KEY,
  owner_name text,
  dataset_slug text,
  status text,
  hash bytea NOT NULL,
  raw jsonb NOT NULL,
  first_seen_at timestamptz NOT NULL,
  last_seen_at timestamptz NOT NULL,
  deleted_at timestamptz,
  slug text
);
CREATE INDEX slices_scope ON slices (owner_name, deleted_at);
CREATE INDEX slices_deleted ON slices (deleted_at) WHERE deleted_at IS NOT NULL;

-- Which items each slice holds, as of the last complete listing of the slice.
CREATE TABLE slice_items (
  slice_uid text NOT NULL,
  item_uid text NOT NULL,
  generation bigint NOT NULL,
  PRIMARY KEY (slice_uid, item_uid)
);

CREATE TABLE exports (
  id bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
  uid text PRIMARY KEY,
  owner_name text,
  dataset_slug text,
  status text,
  hash bytea NOT NULL,
  raw jsonb NOT NULL,
  first_seen_at timestamptz NOT NULL,
  last_seen_at timestamptz NOT NULL,
  deleted_at timestamptz,
  name text,
  format text,
  created_at text
);
CREATE INDEX exports_status ON exports (status);
CREATE INDEX exports_deleted ON exports (deleted_at) WHERE deleted_at IS NOT NULL;

-- The outbox: one row per change, written in the transaction of the change.
-- `seq` is the detection order; `id` is the stable public id (webhook-id).
CREATE TABLE events (
  seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  id text NOT NULL UNIQUE,
  type text NOT NULL,
  resource text NOT NULL,
  uid text NOT NULL,
  owner text,
  dataset_slug text,
  old_status text,
  new_status text,
  created_at timestamptz NOT NULL,
  payload jsonb NOT NULL
);
CREATE INDEX events_type ON events (type);

CREATE TABLE deliveries (
  event_seq bigint NOT NULL REFERENCES events (seq),
  sink text NOT NULL,
  status text NOT NULL,
  attempts bigint NOT NULL DEFAULT 0,
  next_attempt_at timestamptz,
  last_error text,
  delivered_at timestamptz,
  PRIMARY KEY (sink, event_seq)
);

-- Per sink: every event up to `cursor` is delivered, failed for good, or
-- filtered out; `rewinds` counts `events redeliver`.
CREATE TABLE sink_state (
  sink text PRIMARY KEY,
  cursor bigint NOT NULL DEFAULT 0,
  disabled_reason text,
  rewinds bigint NOT NULL DEFAULT 0
);

-- The download queue (SPEC §5, §10): `path` is a file or an object's URL.
CREATE TABLE downloads (
  export_uid text PRIMARY KEY,
  path text,
  bytes bigint,
  sha256 text,
  status text NOT NULL,
  attempts bigint NOT NULL DEFAULT 0,
  error text,
  created_at timestamptz NOT NULL,
  completed_at timestamptz,
  url text,
  file_name text,
  updated_at timestamptz,
  retry_at timestamptz,
  upload_key text,
  upload_id text
);
CREATE INDEX downloads_by_status ON downloads (status, created_at);

-- One row per listing scope (e.g. `items:johndoe/batch-001`).
CREATE TABLE sync_state (
  scope text PRIMARY KEY,
  resource text NOT NULL,
  baseline_done boolean NOT NULL DEFAULT false,
  last_attempt_at timestamptz,
  last_success_at timestamptz,
  last_error text,
  records bigint,
  skipped bigint NOT NULL DEFAULT 0,
  watermark text,
  full_at timestamptz,
  filter_failed_at timestamptz,
  filter_error text
);

-- The daemon's own state worth showing, such as `api_paused_until`.
CREATE TABLE service_state (
  key text PRIMARY KEY,
  value text NOT NULL,
  updated_at timestamptz NOT NULL
);

-- The JSON:API service's collections (SPEC §8): no owner_name/dataset_slug;
-- `updated_at` and the scoping columns are copied from the record.
CREATE TABLE projects (
  id bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
  uid text PRIMARY KEY,
  status text,
  hash bytea NOT NULL,
  raw jsonb NOT NULL,
  first_seen_at timestamptz NOT NULL,
  last_seen_at timestamptz NOT NULL,
  deleted_at timestamptz,
  updated_at text
);
CREATE INDEX projects_deleted ON projects (deleted_at) WHERE deleted_at IS NOT NULL;

CREATE TABLE jsonapi_datasets (
  id bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
  uid text PRIMARY KEY,
  status text,
  hash bytea NOT NULL,
  raw jsonb NOT NULL,
  first_seen_at timestamptz NOT NULL,
  last_seen_at timestamptz NOT NULL,
  deleted_at timestamptz,
  updated_at text,
  project_id text
);
CREATE INDEX jsonapi_datasets_project ON jsonapi_datasets (project_id) WHERE deleted_at IS NULL;
CREATE INDEX jsonapi_datasets_deleted ON jsonapi_datasets (deleted_at) WHERE deleted_at IS NOT NULL;

CREATE TABLE entries (
  id bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
  uid text PRIMARY KEY,
  status text,
  hash bytea NOT NULL,
  raw jsonb NOT NULL,
  first_seen_at timestamptz NOT NULL,
  last_seen_at timestamptz NOT NULL,
  deleted_at timestamptz,
  updated_at text,
  project_id text,
  dataset_id text,
  wf_step text
);
CREATE INDEX entries_project ON entries (project_id) WHERE deleted_at IS NULL;
CREATE INDEX entries_status ON entries (status);
CREATE INDEX entries_deleted ON entries (deleted_at) WHERE deleted_at IS NOT NULL;

CREATE TABLE annotations (
  id bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
  uid text PRIMARY KEY,
  status text,
  hash bytea NOT NULL,
  raw jsonb NOT NULL,
  first_seen_at timestamptz NOT NULL,
  last_seen_at timestamptz NOT NULL,
  deleted_at timestamptz,
  updated_at text,
  project_id text,
  dataset_id text,
  entry_id text
);
CREATE INDEX annotations_project ON annotations (project_id) WHERE deleted_at IS NULL;
CREATE INDEX annotations_deleted ON annotations (deleted_at) WHERE deleted_at IS NOT NULL;

CREATE TABLE note_feeds (
  id bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
  uid text PRIMARY KEY,
  status text,
  hash bytea NOT NULL,
  raw jsonb NOT NULL,
  first_seen_at timestamptz NOT NULL,
  last_seen_at timestamptz NOT NULL,
  deleted_at timestamptz,
  updated_at text,
  project_id text,
  dataset_id text,
  entry_id text,
  annotation_id text,
  anchor_type text
);
CREATE INDEX note_feeds_project ON note_feeds (project_id) WHERE deleted_at IS NULL;
CREATE INDEX note_feeds_status ON note_feeds (status);
CREATE INDEX note_feeds_deleted ON note_feeds (deleted_at) WHERE deleted_at IS NOT NULL;

CREATE TABLE note_comments (
  id bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
  uid text PRIMARY KEY,
  status text,
  hash bytea NOT NULL,
  raw jsonb NOT NULL,
  first_seen_at timestamptz NOT NULL,
  last_seen_at timestamptz NOT NULL,
  deleted_at timestamptz,
  updated_at text,
  note_feed_id text
);
CREATE INDEX note_comments_feed ON note_comments (note_feed_id);
CREATE INDEX note_comments_deleted ON note_comments (deleted_at) WHERE deleted_at IS NOT NULL;

CREATE TABLE project_members (
  id bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
  uid text PRIMARY KEY,
  status text,
  hash bytea NOT NULL,
  raw jsonb NOT NULL,
  first_seen_at timestamptz NOT NULL,
  last_seen_at timestamptz NOT NULL,
  deleted_at timestamptz,
  updated_at text,
  project_id text
);
CREATE INDEX project_members_project ON project_members (project_id) WHERE deleted_at IS NULL;
CREATE INDEX project_members_deleted ON project_members (deleted_at) WHERE deleted_at IS NOT NULL;
