-- Retention (SPEC §6): tombstones older than store.keep_deleted are pruned. A
-- partial index finds them without scanning the live rows, and costs nothing
-- when a live row is written.
CREATE INDEX datasets_deleted ON datasets(deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX sequences_deleted ON sequences(deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX items_deleted ON items(deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX slices_deleted ON slices(deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX exports_deleted ON exports(deleted_at) WHERE deleted_at IS NOT NULL;
