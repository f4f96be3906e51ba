//! The SQLite side of `store::report`: its SQL.

use crate::config::Resource;
use crate::store::report::*;
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;
use std::path::Path;

pub fn status(c: &Connection) -> rusqlite::Result<Value> {
    let mut collections = Vec::new();
    for res in Resource::ALL {
        let t = res.table();
        let mut stmt = c.prepare(&format!(
            "SELECT COALESCE(status, '(none)'), count(*) FROM {t} WHERE deleted_at IS NULL GROUP BY 1 ORDER BY 1"
        ))?;
        let by_status = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let count = |cond: &str| {
            c.query_row(&format!("SELECT count(*) FROM {t} WHERE {cond}"), [], |r| {
                r.get(0)
            })
        };
        let mut col = Collection {
            present: count("deleted_at IS NULL")?,
            deleted: count("deleted_at IS NOT NULL")?,
            by_status,
            ..Collection::default()
        };
        (
            col.scopes,
            col.last_success,
            col.oldest_success,
            col.failing,
            col.skipped,
        ) = c.query_row(
            "SELECT count(*), max(last_success_at), min(last_success_at),
                        sum(last_error IS NOT NULL), COALESCE(sum(skipped), 0)
                 FROM sync_state WHERE resource = ?1",
            [t],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get::<_, Option<i64>>(3)?.unwrap_or(0),
                    r.get(4)?,
                ))
            },
        )?;
        let mut errs = c.prepare("SELECT scope, last_error FROM sync_state WHERE resource = ?1 AND last_error IS NOT NULL ORDER BY scope LIMIT 10")?;
        col.errors = errs
            .query_map([t], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        if res.jsonapi().is_some() {
            col.last_full = c.query_row(
                "SELECT max(full_at) FROM sync_state WHERE resource = ?1",
                [t],
                |r| r.get(0),
            )?;
            let mut st = c.prepare(
                "SELECT scope, filter_failed_at, filter_error FROM sync_state
                 WHERE resource = ?1 AND filter_failed_at IS NOT NULL ORDER BY scope LIMIT 10",
            )?;
            col.refused = st
                .query_map([t], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
        }
        collections.push((res, col));
    }
    let count = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0));
    let (bytes, free) = super::retention::size(c)?;
    let mut downloads = [0; 5];
    for (n, states) in downloads.iter_mut().zip(DOWNLOAD_STATES) {
        *n = count(&format!(
            "SELECT count(*) FROM downloads WHERE status IN ('{states}')"
        ))?;
    }
    let now = crate::store::now_rfc3339();
    Ok(shape(Tally {
        database: c.path().unwrap_or("").to_string(),
        // a pause the API asked for, as the running daemon wrote it down
        api_paused_until: super::state::service(c, "api_paused_until")?.filter(|t| *t > now),
        bytes,
        free,
        // a WAL far past its usual size: a reader holds a transaction (store.max_wal)
        wal: c
            .path()
            .and_then(|p| std::fs::metadata(format!("{p}-wal")).ok())
            .map_or(0, |m| m.len()),
        collections,
        events: count("SELECT count(*) FROM events")?,
        last_event: c.query_row("SELECT max(id) FROM events", [], |r| r.get(0))?,
        downloads,
        deliveries_pending: count("SELECT count(*) FROM deliveries WHERE status = 'pending'")?,
        deliveries_failed: count("SELECT count(*) FROM deliveries WHERE status = 'failed'")?,
        disabled_sinks: {
            let mut st = c.prepare(
                "SELECT sink, disabled_reason FROM sink_state WHERE disabled_reason IS NOT NULL",
            )?;
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?
        },
    }))
}

/// Reads a [`Snapshot`] through a read-only connection of its own, so a
/// scrape never waits on the writer.
pub fn metrics(db: &Path) -> rusqlite::Result<Snapshot> {
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    c.busy_timeout(std::time::Duration::from_secs(2))?;
    fn pairs<T: rusqlite::types::FromSql>(
        c: &Connection,
        sql: &str,
    ) -> rusqlite::Result<Vec<(String, T)>> {
        let mut st = c.prepare(sql)?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }
    Ok(Snapshot {
        last_success: pairs(
            &c,
            "SELECT resource, unixepoch(max(last_success_at), 'subsec') FROM sync_state
             WHERE last_success_at IS NOT NULL AND resource IS NOT NULL GROUP BY resource",
        )?,
        delivered: pairs(
            &c,
            "SELECT sink, count(*) FROM deliveries WHERE status = 'delivered' GROUP BY sink",
        )?,
        failed: pairs(
            &c,
            "SELECT sink, count(*) FROM deliveries WHERE status = 'failed' GROUP BY sink",
        )?,
        pending: pairs(
            &c,
            "SELECT s.sink, (SELECT count(*) FROM events e WHERE e.seq > s.cursor) FROM sink_state s",
        )?,
        downloads: pairs(&c, "SELECT status, count(*) FROM downloads GROUP BY status")?,
        database: {
            let (bytes, free) = super::retention::size(&c)?;
            vec![("used".into(), bytes - free), ("free".into(), free)]
        },
    })
}
