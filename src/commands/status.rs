//! `status`: what the mirror holds, from the local database only.

use rusqlite::Connection;
use serde_json::{Value, json};

use std::path::Path;

use crate::config::Resource;
use crate::error::{EXIT_OK, EXIT_WORK_FAILED};
use crate::store::open_read_only;

/// Read-only (see [`open_read_only`]): no key, no migration, no file written.
pub fn status(db: &Path, as_json: bool) -> anyhow::Result<u8> {
    let report = collect(&open_read_only(db)?)?;
    let failing = report["resources"].as_object().is_some_and(|m| {
        m.values()
            .any(|r| r["failing_scopes"].as_u64().unwrap_or(0) > 0)
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report);
    }
    Ok(if failing { EXIT_WORK_FAILED } else { EXIT_OK })
}

pub fn collect(c: &Connection) -> rusqlite::Result<Value> {
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
    Ok(json!({
        "database": c.path().unwrap_or(""),
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

fn print_human(v: &Value) {
    let mib = |k: &str| v[k].as_i64().unwrap_or(0) as f64 / (1 << 20) as f64;
    println!(
        "mirror: {} ({:.1} MiB, of which {:.1} MiB free for reuse; WAL {:.1} MiB)",
        v["database"].as_str().unwrap_or(""),
        mib("database_bytes"),
        mib("database_free_bytes"),
        mib("wal_bytes")
    );
    println!(
        "{:<16} {:>9} {:>8}  {:<22} statuses",
        "collection", "present", "deleted", "last success"
    );
    if let Some(m) = v["resources"].as_object() {
        for (name, r) in m {
            let jsonapi = Resource::parse(name).is_some_and(|r| r.jsonapi().is_some());
            if jsonapi && r["scopes"].as_i64() == Some(0) && r["present"].as_i64() == Some(0) {
                // the JSON:API service was never on: nothing to say
                continue;
            }
            let statuses: Vec<String> = r["by_status"]
                .as_object()
                .map(|s| s.iter().map(|(k, n)| format!("{k}={n}")).collect())
                .unwrap_or_default();
            println!(
                "{:<16} {:>9} {:>8}  {:<22} {}",
                name,
                r["present"].as_i64().unwrap_or(0),
                r["deleted"].as_i64().unwrap_or(0),
                r["last_success_at"].as_str().unwrap_or("never"),
                statuses.join(" ")
            );
            if r["skipped_records"].as_i64().unwrap_or(0) > 0 {
                println!(
                    "           skipped malformed records: {}",
                    r["skipped_records"]
                );
            }
            for e in r["errors"].as_array().into_iter().flatten() {
                println!(
                    "           failing {}: {}",
                    e["scope"].as_str().unwrap_or(""),
                    e["error"].as_str().unwrap_or("")
                );
            }
            for e in r["filter_not_honoured"].as_array().into_iter().flatten() {
                println!(
                    "           on full listings since {} (retried daily), {}: {}",
                    e["since"].as_str().unwrap_or(""),
                    e["scope"].as_str().unwrap_or(""),
                    e["error"].as_str().unwrap_or("")
                );
            }
        }
    }
    println!(
        "events: {} (last {})",
        v["events"]["total"],
        v["events"]["last_id"].as_str().unwrap_or("-")
    );
    println!(
        "downloads: {} pending, {} failed",
        v["downloads"]["pending"], v["downloads"]["failed"]
    );
    println!(
        "deliveries: {} pending, {} failed",
        v["deliveries"]["pending"], v["deliveries"]["failed"]
    );
}
