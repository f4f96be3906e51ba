//! `events`: the change log from the database, optionally followed.

use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::error::EXIT_OK;
use crate::store::{ReadOnly, Store, events};

/// `--since`, as a sequence number (0: from the start).
fn since_seq(
    since: Option<&str>,
    seq_of: impl FnOnce(&str) -> crate::store::Result<Option<i64>>,
) -> anyhow::Result<i64> {
    match since {
        None => Ok(0),
        Some(s) => seq_of(s)?.ok_or_else(|| anyhow::anyhow!("--since {s}: no such event")),
    }
}

pub fn redeliver(cfg: &Config, sink: Option<&str>, since: Option<&str>) -> anyhow::Result<u8> {
    if let Some(name) = sink
        && !cfg.sinks.iter().any(|s| s.name == name)
    {
        let names: Vec<&str> = cfg.sinks.iter().map(|s| s.name.as_str()).collect();
        anyhow::bail!(
            "--sink {name}: no such sink (configured: {})",
            names.join(", ")
        );
    }
    let store = Store::open_existing(&cfg.store_path)?;
    let after = since_seq(since, |s| store.seq_of(s))?;
    let n = store.redeliver(sink, after)?;
    println!("{n} failed deliveries will be sent again by the next `sync` or the running daemon");
    Ok(EXIT_OK)
}

/// The change log, read-only (see [`ReadOnly`]); `--follow` opens the
/// database again for every look, so it reads through a daemon started meanwhile.
pub async fn events(
    db: &Path,
    since: Option<&str>,
    glob: &str,
    follow: bool,
    json: bool,
) -> anyhow::Result<u8> {
    let mut mirror = ReadOnly::open(db)?;
    let mut after = since_seq(since, |s| mirror.seq_of(s))?;
    loop {
        let batch = mirror.events(after, glob, 1000)?;
        for e in &batch {
            if json {
                println!("{}", e.payload);
            } else {
                println!(
                    "{:>6} {} {} {}",
                    e.seq,
                    e.created_at,
                    e.id,
                    events::describe(e)
                );
            }
            after = e.seq;
        }
        if batch.len() == 1000 {
            continue;
        }
        if !follow {
            return Ok(EXIT_OK);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(EXIT_OK),
        }
        mirror.reopen()?;
    }
}
