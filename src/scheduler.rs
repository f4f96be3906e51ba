//! `run`: every enabled resource on its own interval, within the one rate budget
//! (status polls outrank crawls in the pacer). Stops on the shutdown signal:
//! a page being written is committed or rolled back whole, never half-applied.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::commands::sync::summary_line;
use crate::config::Resource;
use crate::error::ApiError;
use crate::sync::Syncer;

/// Runs until `shutdown` turns true, or a rejected key stops everything.
pub async fn run(syncer: Syncer, mut shutdown: watch::Receiver<bool>) -> Result<(), ApiError> {
    let resources = syncer.cfg.scope.resources.clone();
    // Datasets first: the item and sequence listings are built from them.
    if resources.contains(&Resource::Datasets) {
        tokio::select! {
            r = syncer.sync_resource(Resource::Datasets) => log_cycle(r)?,
            _ = stopped(&mut shutdown) => return Ok(()),
        }
    }
    let (fatal_tx, mut fatal_rx) = tokio::sync::mpsc::channel::<ApiError>(1);
    let mut tasks = Vec::new();
    for res in resources {
        let (syncer, mut stop, fatal) = (syncer.clone(), shutdown.clone(), fatal_tx.clone());
        let every = syncer.cfg.schedule[&res];
        tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
            if res == Resource::Datasets {
                ticks.tick().await; // its first cycle ran above
            }
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stopped(&mut stop) => return,
                }
                tokio::select! {
                    r = syncer.sync_resource(res) => {
                        if let Err(e) = log_cycle(r) {
                            let _ = fatal.send(e).await;
                            return;
                        }
                    }
                    _ = stopped(&mut stop) => return,
                }
            }
        }));
    }
    drop(fatal_tx);
    let result = tokio::select! {
        _ = stopped(&mut shutdown) => Ok(()),
        Some(e) = fatal_rx.recv() => Err(e),
    };
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    result
}

/// Resolves once the shutdown flag is set (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn log_cycle(r: Result<crate::sync::CycleReport, ApiError>) -> Result<(), ApiError> {
    let report = r?;
    if report.failures.is_empty() {
        tracing::info!("{}", summary_line(&report));
    } else {
        tracing::warn!(
            "{} ({} scopes failed)",
            summary_line(&report),
            report.failures.len()
        );
    }
    Ok(())
}
