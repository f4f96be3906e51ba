-- avala-mirror schema v1. Append-only: later changes go in 0002_*.sql and on.
-- Every resource table has the same core columns, so one upsert serves them all;
-- `raw` keeps every field received: query them as raw->>'key', raw->>'name', ...

CREATE TABLE datasets (
  uid TEXT PRIMARY KEY,
  owner_name TEXT,
  dataset_slug TEXT,
  status TEXT,
  hash BLOB NOT NULL,
  raw TEXT NOT NULL,
  first_seen_at TEXT NOT NULL,
  last_seen_at TEXT NOT NULL,
  deleted_at TEXT
);
CREATE INDEX datasets_scope ON datasets(owner_name, deleted_at);

CREATE TABLE sequences (
  uid TEXT PRIMARY KEY,
  owner_name TEXT,
  dataset_slug TEXT,
  status TEXT,
  hash BLOB NOT NULL,
  raw TEXT NOT NULL,
  first_seen_at TEXT NOT NULL,
  last_seen_at TEXT NOT NULL,
  deleted_at TEXT
);
CREATE INDEX sequences_scope ON sequences(owner_name, dataset_slug, deleted_at);
CREATE INDEX sequences_status ON sequences(status);

CREATE TABLE items (
  uid TEXT PRIMARY KEY,
  owner_name TEXT,
  dataset_slug TEXT,
  status TEXT,
  hash BLOB NOT NULL,
  raw TEXT NOT NULL,
  first_seen_at TEXT NOT NULL,
  last_seen_at TEXT NOT NULL,
  deleted_at TEXT
);
CREATE INDEX items_scope ON items(owner_name, dataset_slug, deleted_at);

CREATE TABLE slices (
  uid TEXT PRIMARY KEY,
  owner_name TEXT,
  dataset_slug TEXT,
  status TEXT,
  hash BLOB NOT NULL,
  raw TEXT NOT NULL,
  first_seen_at TEXT NOT NULL,
  last_seen_at TEXT NOT NULL,
  deleted_at TEXT
);
CREATE INDEX slices_scope ON slices(owner_name, deleted_at);

-- Which items each slice holds, as of the last complete listing of the slice.
CREATE TABLE slice_items (
  slice_uid TEXT NOT NULL,
  item_uid TEXT NOT NULL,
  generation INTEGER NOT NULL,
  PRIMARY KEY (slice_uid, item_uid)
) WITHOUT ROWID;

CREATE TABLE exports (
  uid TEXT PRIMARY KEY,
  owner_name TEXT,
  dataset_slug TEXT,
  status TEXT,
  hash BLOB NOT NULL,
  raw TEXT NOT NULL,
  first_seen_at TEXT NOT NULL,
  last_seen_at TEXT NOT NULL,
  deleted_at TEXT
);
CREATE INDEX exports_status ON exports(status);

-- The outbox: one row per change, written in the transaction of the change.
-- `seq` is the detection order; `id` is the stable public id (webhook-id).
CREATE TABLE events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  type TEXT NOT NULL,
  resource TEXT NOT NULL,
  uid TEXT NOT NULL,
  owner TEXT,
  dataset_slug TEXT,
  old_status TEXT,
  new_status TEXT,
  created_at TEXT NOT NULL,
  payload TEXT NOT NULL
);
CREATE INDEX events_type ON events(type);

CREATE TABLE deliveries (
  event_seq INTEGER NOT NULL REFERENCES events(seq),
  sink TEXT NOT NULL,
  status TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_at TEXT,
  last_error TEXT,
  delivered_at TEXT,
  PRIMARY KEY (sink, event_seq)
);

-- Per sink: every event up to `cursor` is delivered, failed for good, or filtered out.
CREATE TABLE sink_state (
  sink TEXT PRIMARY KEY,
  cursor INTEGER NOT NULL DEFAULT 0,
  disabled_reason TEXT
);

CREATE TABLE downloads (
  export_uid TEXT PRIMARY KEY,
  path TEXT,
  bytes INTEGER,
  sha256 TEXT,
  status TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  error TEXT,
  created_at TEXT NOT NULL,
  completed_at TEXT
);

-- One row per listing scope (e.g. `items:johndoe/batch-001`).
CREATE TABLE sync_state (
  scope TEXT PRIMARY KEY,
  resource TEXT NOT NULL,
  baseline_done INTEGER NOT NULL DEFAULT 0,
  last_attempt_at TEXT,
  last_success_at TEXT,
  last_error TEXT,
  records INTEGER,
  skipped INTEGER NOT NULL DEFAULT 0
);
