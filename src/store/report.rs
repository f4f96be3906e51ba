//! What the mirror holds, as `status` and `/metrics` report it: read-only
//! queries over the tables, from any connection.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use serde_json::{Value, json};

use crate::config::Resource;

/// `status --json`: per collection its counts by status, scopes, last success,
/// failures and (JSON:API) listing state; the database's size; events,
/// downloads and deliveries.
impl super::Store {
    /// What `status` reports, read beside the writer.
    pub async fn status(&self) -> super::Result<Value> {
        Ok(self.read(status).await?)
    }
}

pub fn status(c: &Connection) -> rusqlite::Result<Value> {
    let mut resources = serde_json::Map::new();
    for res in Resource::ALL {
        let t = res.table();
        let mut stmt = c.prepare(&format!(
            "SELECT COALESCE(status, '(none)'), count(*) FROM {t} WHERE deleted_at IS NULL GROUP BY 1 ORDER BY 1"
        ))?;
        let by_status: serde_json::Map<String, Value> = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, json!(r.get::<_, i64>(1)?)))
            })?
            .collect::<Result<_, _>>()?;
        let total: i64 = c.query_row(
            &format!("SELECT count(*) FROM {t} WHERE deleted_at IS NULL"),
            [],
            |r| r.get(0),
        )?;
        let deleted: i64 = c.query_row(
            &format!("SELECT count(*) FROM {t} WHERE deleted_at IS NOT NULL"),
            [],
            |r| r.get(0),
        )?;
        let (scopes, last_success, oldest_success, failing, skipped): (
            i64,
            Option<String>,
            Option<String>,
            i64,
            i64,
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
        let errors: Vec<Value> = errs
            .query_map([t], |r| {
                Ok(json!({"scope": r.get::<_, String>(0)?, "error": r.get::<_, String>(1)?}))
            })?
            .collect::<Result<_, _>>()?;
        let mut entry = json!({
            "present": total, "deleted": deleted, "by_status": by_status,
            "scopes": scopes, "last_success_at": last_success, "oldest_scope_success_at": oldest_success,
            "failing_scopes": failing, "skipped_records": skipped, "errors": errors,
        });
        if res.jsonapi().is_some() {
            // incremental listings (SPEC §8): the last full one, and scopes whose
            // server ignored or refused the filter (on full listings for now)
            entry["last_full_listing_at"] = c
                .query_row(
                    "SELECT max(full_at) FROM sync_state WHERE resource = ?1",
                    [t],
                    |r| r.get::<_, Option<String>>(0),
                )?
                .into();
            let mut st = c.prepare(
                "SELECT scope, filter_failed_at, filter_error FROM sync_state
                 WHERE resource = ?1 AND filter_failed_at IS NOT NULL ORDER BY scope LIMIT 10",
            )?;
            let refused: Vec<Value> = st
                .query_map([t], |r| {
                    Ok(
                        json!({"scope": r.get::<_, String>(0)?, "since": r.get::<_, String>(1)?,
                              "error": r.get::<_, Option<String>>(2)?}),
                    )
                })?
                .collect::<Result<_, _>>()?;
            entry["filter_not_honoured"] = refused.into();
        }
        resources.insert(t.into(), entry);
    }
    let count = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0));
    let (bytes, free) = crate::store::retention::size(c)?;
    // a WAL far past its usual size: a reader holds a transaction (store.max_wal)
    let wal = c
        .path()
        .and_then(|p| std::fs::metadata(format!("{p}-wal")).ok())
        .map_or(0, |m| m.len());
    // a pause the API asked for, as the running daemon wrote it down
    let now = crate::store::now_rfc3339();
    let paused = crate::store::state::service(c, "api_paused_until")?.filter(|t| *t > now);
    Ok(json!({
        "database": c.path().unwrap_or(""),
        "api_paused_until": paused,
        "database_bytes": bytes,
        "database_free_bytes": free,
        "wal_bytes": wal,
        "resources": resources,
        "events": {
            "total": count("SELECT count(*) FROM events")?,
            "last_id": c.query_row("SELECT max(id) FROM events", [], |r| r.get::<_, Option<String>>(0))?,
        },
        "downloads": {
            "pending": count("SELECT count(*) FROM downloads WHERE status IN ('pending', 'downloading')")?,
            "failed": count("SELECT count(*) FROM downloads WHERE status = 'failed'")?,
            "downloaded": count("SELECT count(*) FROM downloads WHERE status = 'downloaded'")?,
            "awaiting_link": count("SELECT count(*) FROM downloads WHERE status = 'awaiting_link'")?,
            "waiting_for_space": count("SELECT count(*) FROM downloads WHERE status = 'waiting_for_space'")?,
        },
        "deliveries": {
            "pending": count("SELECT count(*) FROM deliveries WHERE status = 'pending'")?,
            "failed": count("SELECT count(*) FROM deliveries WHERE status = 'failed'")?,
            "disabled_sinks": disabled_sinks(c)?,
        },
    }))
}

fn disabled_sinks(c: &Connection) -> rusqlite::Result<Vec<Value>> {
    let mut st = c.prepare(
        "SELECT sink, disabled_reason FROM sink_state WHERE disabled_reason IS NOT NULL",
    )?;
    let rows = st.query_map([], |r| {
        Ok(json!({"sink": r.get::<_, String>(0)?, "reason": r.get::<_, String>(1)?}))
    })?;
    rows.collect()
}

/// What `/metrics` reads from the database at each scrape.
pub struct Snapshot {
    pub last_success: Vec<(String, f64)>,
    pub delivered: Vec<(String, i64)>,
    pub failed: Vec<(String, i64)>,
    pub pending: Vec<(String, i64)>,
    pub downloads: Vec<(String, i64)>,
    /// ("used" | "free", bytes) of the database file.
    pub database: Vec<(String, i64)>,
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
            let (bytes, free) = crate::store::retention::size(&c)?;
            vec![("used".into(), bytes - free), ("free".into(), free)]
        },
    })
}
