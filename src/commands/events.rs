//! `events`: the change log from the database, optionally followed.

use std::time::Duration;

use crate::config::Config;
use crate::error::EXIT_OK;
use crate::store::{Store, events};

pub async fn events(
    cfg: &Config,
    since: Option<&str>,
    glob: &str,
    follow: bool,
    json: bool,
) -> anyhow::Result<u8> {
    let store = Store::open_existing(&cfg.store_path)?;
    let mut after = match since {
        None => 0,
        Some(s) => store
            .with(|c| events::seq_of(c, s))?
            .ok_or_else(|| anyhow::anyhow!("--since {s}: no such event"))?,
    };
    loop {
        let batch = store.with(|c| events::list(c, after, glob, 1000))?;
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
    }
}
