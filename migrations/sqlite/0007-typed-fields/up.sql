-- Fields the mirror reads as a type get columns of their own, filled when a
-- record arrives (a record whose field has another type is skipped there), so
-- nothing reads them from `raw` expecting a type (SPEC §6). Rows stored before
-- keep a value only where it has the right type.
ALTER TABLE datasets ADD COLUMN slug TEXT;
ALTER TABLE datasets ADD COLUMN is_sequence INTEGER;
UPDATE datasets SET
  slug = CASE WHEN json_valid(raw) AND json_type(raw, '$.slug') = 'text' THEN raw->>'slug' END,
  is_sequence = CASE WHEN json_valid(raw) THEN
    CASE json_type(raw, '$.is_sequence') WHEN 'true' THEN 1 WHEN 'false' THEN 0 END END;
CREATE INDEX datasets_slug ON datasets(owner_name, slug) WHERE deleted_at IS NULL;

ALTER TABLE slices ADD COLUMN slug TEXT;
UPDATE slices SET
  slug = CASE WHEN json_valid(raw) AND json_type(raw, '$.slug') = 'text' THEN raw->>'slug' END;

ALTER TABLE exports ADD COLUMN name TEXT;
ALTER TABLE exports ADD COLUMN format TEXT;
ALTER TABLE exports ADD COLUMN created_at TEXT;
UPDATE exports SET
  name = CASE WHEN json_valid(raw) AND json_type(raw, '$.name') = 'text' THEN raw->>'name' END,
  format = CASE WHEN json_valid(raw) AND json_type(raw, '$.format') = 'text' THEN raw->>'format' END,
  created_at = CASE WHEN json_valid(raw) AND json_type(raw, '$.created_at') = 'text' THEN raw->>'created_at' END;
