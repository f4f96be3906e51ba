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
        if let Some(pg) = self.pg() {
            return pg.status().await;
        }
        Ok(self.read(status).await?)
    }
}

/// What `status` counts, per collection, whichever backend counted it.
#[derive(Debug, Default)]
pub struct Collection {
    pub present: i64,
    pub deleted: i64,
    pub by_status: Vec<(String, i64)>,
    pub scopes: i64,
    pub last_success: Option<String>,
    pub oldest_success: Option<String>,
    pub failing: i64,
    pub skipped: i64,
    /// (scope, error), at most 10.
    pub errors: Vec<(String, String)>,
    /// JSON:API: the last full listing, and scopes on full listings since
    /// (scope, since, error).
    pub last_full: Option<String>,
    pub refused: Vec<(String, String, Option<String>)>,
}

/// Everything `status` reports.
#[derive(Debug, Default)]
pub struct Tally {
    pub database: String,
    pub api_paused_until: Option<String>,
    pub bytes: i64,
    pub free: i64,
    pub wal: u64,
    pub collections: Vec<(Resource, Collection)>,
    pub events: i64,
    pub last_event: Option<String>,
    /// pending (or downloading), failed, downloaded, awaiting_link, waiting_for_space.
    pub downloads: [i64; 5],
    pub deliveries_pending: i64,
    pub deliveries_failed: i64,
    /// (sink, reason).
    pub disabled_sinks: Vec<(String, String)>,
}

/// The download states [`Tally::downloads`] counts, in its order.
pub const DOWNLOAD_STATES: [&str; 5] = [
    "pending', 'downloading",
    "failed",
    "downloaded",
    "awaiting_link",
    "waiting_for_space",
];

/// `status --json`, the same document from either backend.
pub fn shape(t: Tally) -> Value {
    let mut resources = serde_json::Map::new();
    for (res, c) in t.collections {
        let by_status: serde_json::Map<String, Value> = c
            .by_status
            .into_iter()
            .map(|(k, n)| (k, json!(n)))
            .collect();
        let errors: Vec<Value> = c
            .errors
            .into_iter()
            .map(|(scope, error)| json!({"scope": scope, "error": error}))
            .collect();
        let mut entry = json!({
            "present": c.present, "deleted": c.deleted, "by_status": by_status,
            "scopes": c.scopes, "last_success_at": c.last_success, "oldest_scope_success_at": c.oldest_success,
            "failing_scopes": c.failing, "skipped_records": c.skipped, "errors": errors,
        });
        if res.jsonapi().is_some() {
            // incremental listings (SPEC §8): the last full one, and scopes whose
            // server ignored or refused the filter (on full listings for now)
            entry["last_full_listing_at"] = c.last_full.into();
            let refused: Vec<Value> = c
                .refused
                .into_iter()
                .map(
                    |(scope, since, error)| json!({"scope": scope, "since": since, "error": error}),
                )
                .collect();
            entry["filter_not_honoured"] = refused.into();
        }
        resources.insert(res.table().into(), entry);
    }
    let d = t.downloads;
    let disabled: Vec<Value> = t
        .disabled_sinks
        .into_iter()
        .map(|(sink, reason)| json!({"sink": sink, "reason": reason}))
        .collect();
    json!({
        "database": t.database,
        "api_paused_until": t.api_paused_until,
        "database_bytes": t.bytes,
        "database_free_bytes": t.free,
        "wal_bytes": t.wal,
        "resources": resources,
        "events": {"total": t.events, "last_id": t.last_event},
        "downloads": {
            "pending": d[0], "failed": d[1], "downloaded": d[2],
            "awaiting_link": d[3], "waiting_for_space": d[4],
        },
        "deliveries": {
            "pending": t.deliveries_pending,
            "failed": t.deliveries_failed,
            "disabled_sinks": disabled,
        },
    })
}

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
    let (bytes, free) = crate::store::retention::size(c)?;
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
        api_paused_until: crate::store::state::service(c, "api_paused_until")?.filter(|t| *t > now),
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

/// What `/metrics` reads from the database at each scrape.
#[derive(Debug)]
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
