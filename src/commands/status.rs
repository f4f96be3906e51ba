//! `status`: what the mirror holds, from the local database only.

use serde_json::Value;

use crate::config::Resource;
use crate::error::{EXIT_OK, EXIT_WORK_FAILED};
use crate::store::{Location, ReadOnly};

/// Read-only (see [`ReadOnly`]): no key, no migration, no file written.
pub async fn status(at: &Location, as_json: bool) -> anyhow::Result<u8> {
    let report = ReadOnly::open(at).await?.status().await?;
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

fn print_human(v: &Value) {
    let mib = |k: &str| v[k].as_i64().unwrap_or(0) as f64 / (1 << 20) as f64;
    println!(
        "mirror: {} ({:.1} MiB, of which {:.1} MiB free for reuse; WAL {:.1} MiB)",
        v["database"].as_str().unwrap_or(""),
        mib("database_bytes"),
        mib("database_free_bytes"),
        mib("wal_bytes")
    );
    if let Some(until) = v["api_paused_until"].as_str() {
        println!(
            "the API asked for a pause: requests wait until {until} (at most api.max_wait at a time)"
        );
    }
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
        "downloads: {} pending, {} waiting for disk space, {} failed",
        v["downloads"]["pending"], v["downloads"]["waiting_for_space"], v["downloads"]["failed"]
    );
    println!(
        "deliveries: {} pending, {} failed",
        v["deliveries"]["pending"], v["deliveries"]["failed"]
    );
}
