//! `events`: the change log from the database, optionally followed.

use crate::config::Config;
use crate::error::EXIT_OK;
use crate::store::{Location, ReadOnly, Store, events};

/// `--since`, as a sequence number (0: from the start).
fn since_seq(since: Option<&str>, seq: Option<i64>) -> anyhow::Result<i64> {
    match since {
        None => Ok(0),
        Some(s) => seq.ok_or_else(|| anyhow::anyhow!("--since {s}: no such event")),
    }
}

pub async fn redeliver(
    cfg: &Config,
    sink: Option<&str>,
    since: Option<&str>,
) -> anyhow::Result<u8> {
    if let Some(name) = sink
        && !cfg.sinks.iter().any(|s| s.name == name)
    {
        let names: Vec<&str> = cfg.sinks.iter().map(|s| s.name.as_str()).collect();
        anyhow::bail!(
            "--sink {name}: no such sink (configured: {})",
            names.join(", ")
        );
    }
    let store = match &cfg.store_pg {
        None => Store::open_existing(&cfg.store_path)?,
        Some(_) => Store::open_config(cfg).await?,
    };
    let seq = match since {
        Some(s) => store.seq_of(s).await?,
        None => None,
    };
    let after = since_seq(since, seq)?;
    let n = store.redeliver(sink, after).await?;
    println!("{n} failed deliveries will be sent again by the next `sync` or the running daemon");
    Ok(EXIT_OK)
}

/// The change log, read-only (see [`ReadOnly`]); `--follow` waits for new
/// events ([`ReadOnly::changed`]) and reads on.
pub async fn events(
    at: &Location,
    since: Option<&str>,
    glob: &str,
    follow: bool,
    json: bool,
) -> anyhow::Result<u8> {
    let mut mirror = ReadOnly::open(at).await?;
    let seq = match since {
        Some(s) => mirror.seq_of(s).await?,
        None => None,
    };
    let mut after = since_seq(since, seq)?;
    loop {
        let batch = mirror.events(after, glob, 1000).await?;
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
            changed = mirror.changed() => changed?,
            _ = tokio::signal::ctrl_c() => return Ok(EXIT_OK),
        }
    }
}
