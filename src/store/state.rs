//! `sync_state`: one row per listing scope — baseline done, last attempt and
//! success, the last error, records listed and records skipped.

use rusqlite::{Connection, OptionalExtension, params};

use crate::config::Resource;

/// Whether the scope has had its first complete listing (the silent baseline).
pub fn baseline_done(conn: &Connection, scope: &str) -> rusqlite::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT baseline_done FROM sync_state WHERE scope = ?1",
            [scope],
            |r| r.get::<_, bool>(0),
        )
        .optional()?
        .unwrap_or(false))
}

pub fn attempt(
    conn: &Connection,
    scope: &str,
    resource: Resource,
    now: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO sync_state (scope, resource, last_attempt_at) VALUES (?1, ?2, ?3)
         ON CONFLICT(scope) DO UPDATE SET last_attempt_at = excluded.last_attempt_at",
        params![scope, resource.table(), now],
    )?;
    Ok(())
}

pub fn success(
    conn: &Connection,
    scope: &str,
    now: &str,
    records: u64,
    skipped: u64,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE sync_state SET baseline_done = 1, last_success_at = ?2, last_error = NULL,
         records = ?3, skipped = ?4 WHERE scope = ?1",
        params![scope, now, records as i64, skipped as i64],
    )?;
    Ok(())
}

pub fn failure(conn: &Connection, scope: &str, error: &str, skipped: u64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE sync_state SET last_error = ?2, skipped = ?3 WHERE scope = ?1",
        params![scope, error, skipped as i64],
    )?;
    Ok(())
}
