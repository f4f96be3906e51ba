//! What the mirror holds, as `status` and `/metrics` report it: read-only
//! queries over the tables, from any connection.

use super::sqlite::report::*;
use crate::config::Resource;
use serde_json::{Value, json};

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
