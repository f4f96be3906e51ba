//! The SQLite side of `store::state`: its SQL.

use crate::config::Resource;
use crate::store::state::*;
use rusqlite::{Connection, OptionalExtension, params};

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

/// The scope's last complete size (records listed), if it had a complete listing.
pub fn last_size(conn: &Connection, scope: &str) -> rusqlite::Result<Option<u64>> {
    let n: Option<i64> = conn
        .query_row(
            "SELECT records FROM sync_state WHERE scope = ?1 AND last_success_at IS NOT NULL",
            [scope],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    Ok(n.map(|n| n as u64))
}

/// A listing cut for running far past its last size: the size it reached is
/// what the next one is measured against (a collection that really grew gets
/// through then; an endless one costs ten times more each cycle, never forever).
pub fn outran(conn: &Connection, scope: &str, received: u64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE sync_state SET records = ?2 WHERE scope = ?1",
        params![scope, received as i64],
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

pub fn incremental(conn: &Connection, scope: &str) -> rusqlite::Result<Incremental> {
    Ok(conn
        .query_row(
            "SELECT watermark, full_at, filter_failed_at FROM sync_state WHERE scope = ?1",
            [scope],
            |r| {
                Ok(Incremental {
                    watermark: r.get(0)?,
                    full_at: r.get(1)?,
                    filter_failed_at: r.get(2)?,
                })
            },
        )
        .optional()?
        .unwrap_or_default())
}

/// After a complete listing (the scope's row exists): its newest `updated_at`
/// becomes the watermark (a full listing sets it, an incremental one only
/// moves it on), and a stable full listing is the scope's `full_at`.
pub fn listed(
    conn: &Connection,
    scope: &str,
    newest: Option<&str>,
    how: Listed,
    now: &str,
) -> rusqlite::Result<()> {
    let old: Option<String> = conn
        .query_row(
            "SELECT watermark FROM sync_state WHERE scope = ?1",
            [scope],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    let watermark = next_watermark(old, newest, how);
    conn.execute(
        "UPDATE sync_state SET watermark = ?2, full_at = CASE WHEN ?3 THEN ?4 ELSE full_at END
         WHERE scope = ?1",
        params![scope, watermark, how == Listed::Full { stable: true }, now],
    )?;
    Ok(())
}

/// The server ignored or refused the filter: the scope stays on full listings
/// for a while (`status` shows why); `None` clears it once the filter works.
pub fn filter_failed(
    conn: &Connection,
    scope: &str,
    failed: Option<(&str, &str)>,
) -> rusqlite::Result<()> {
    let (at, error) = failed.unzip();
    conn.execute(
        "UPDATE sync_state SET filter_failed_at = ?2, filter_error = ?3 WHERE scope = ?1",
        params![scope, at, error],
    )?;
    Ok(())
}

/// Sets one of the running daemon's `service_state` values (what `status`,
/// which reads only the database, should see); `None` removes it.
pub fn set_service(
    c: &Connection,
    key: &str,
    value: Option<&str>,
    now: &str,
) -> rusqlite::Result<()> {
    match value {
        Some(v) => c.execute(
            "INSERT INTO service_state (key, value, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            params![key, v, now],
        ),
        None => c.execute("DELETE FROM service_state WHERE key = ?1", [key]),
    }
    .map(drop)
}

/// One `service_state` value.
pub fn service(c: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    c.query_row(
        "SELECT value FROM service_state WHERE key = ?1",
        [key],
        |r| r.get(0),
    )
    .optional()
}
