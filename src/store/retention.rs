//! Retention (SPEC §6 "Bounds"): events every sink has settled are pruned after
//! `events.retention`, with their `deliveries` rows, and tombstoned rows after
//! `store.keep_deleted`, so months unattended end in a database of steady size
//! (SQLite reuses the pages freed). Each call prunes a bounded chunk, so the
//! writer is never held long.

use super::sqlite::retention::*;

/// Rows pruned per statement: a few milliseconds of the writer at a time.
pub const CHUNK: usize = 5_000;

impl super::Store {
    /// Prunes what is due now, in chunks (each its own short transaction):
    /// settled events older than `retention` (every one of `sinks` done with
    /// them) and tombstones older than `keep_deleted`. `run` calls this once a
    /// minute and `sync` once at its end. Returns (events, tombstoned rows) pruned.
    pub async fn prune(
        &self,
        retention: std::time::Duration,
        keep_deleted: std::time::Duration,
        sinks: Vec<String>,
    ) -> super::Result<(usize, usize)> {
        let ago = |d: std::time::Duration| {
            let at = std::time::SystemTime::now()
                .checked_sub(d)
                .unwrap_or(std::time::UNIX_EPOCH);
            humantime::format_rfc3339_seconds(at).to_string()
        };
        let (events_before, rows_before) = (ago(retention), ago(keep_deleted));
        let sinks = std::sync::Arc::new(sinks);
        let (mut events, mut rows) = (0, 0);
        loop {
            let n = match self.pg() {
                Some(pg) => pg.prune_events(&events_before, &sinks).await?,
                None => {
                    let (b, s) = (events_before.clone(), sinks.clone());
                    self.call(move |c| prune_events(c, &b, &s)).await?
                }
            };
            events += n;
            if n < CHUNK {
                break;
            }
        }
        loop {
            let n = match self.pg() {
                Some(pg) => pg.prune_tombstones(&rows_before).await?,
                None => {
                    let b = rows_before.clone();
                    self.call(move |c| prune_tombstones(c, &b)).await?
                }
            };
            rows += n;
            if n < CHUNK {
                break;
            }
        }
        if events + rows > 0 {
            tracing::info!(events, rows, "pruned what retention no longer keeps");
        }
        Ok((events, rows))
    }
}
