-- `events redeliver` counts its rewinds of a sink's cursor, so a delivery loop
-- that read the cursor before a rewind cannot move it forward over the rewind.
ALTER TABLE sink_state ADD COLUMN rewinds INTEGER NOT NULL DEFAULT 0;
