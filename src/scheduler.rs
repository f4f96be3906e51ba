//! `run`: every enabled resource on its own interval, within the one rate budget
//! (status polls outrank crawls in the pacer). Stops on the shutdown signal:
//! a page being written is committed or rolled back whole, never half-applied.
//! Ends by itself only when the key is rejected, the store is unusable or a
//! resource's task died, so that `run` exits and systemd restarts it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::commands::sync::summary_line;
use crate::config::Resource;
use crate::error::ApiError;
use crate::service::Health;
use crate::sync::{CycleReport, Syncer};

/// Runs until `shutdown` turns true, or a rejected key stops everything. Each
/// finished cycle goes to `health` (when given) and to systemd as a STATUS line.
pub async fn run(
    syncer: Syncer,
    mut shutdown: watch::Receiver<bool>,
    health: Option<Arc<Health>>,
) -> Result<(), ApiError> {
    let resources = syncer.cfg.resources();
    // The one place that decides whether a failure ends `run` (SPEC §6): only
    // what [`ApiError::is_fatal`] says; a resource's cycle reports the rest.
    let done = move |r: Result<CycleReport, ApiError>| -> Result<(), ApiError> {
        let report = match r {
            Ok(report) => report,
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                tracing::error!("a cycle failed; it is tried again at the next interval: {e}");
                return Ok(());
            }
        };
        if let Some(h) = &health {
            h.cycle_done(&report);
        }
        log_cycle(&report);
        Ok(())
    };
    // Datasets first: the item and sequence listings are built from them, so the
    // other v1 resources start once the first dataset cycle is over; likewise
    // note comments (narrowed to the note feeds in the mirror) after note feeds.
    let (datasets_done, first) = watch::channel(!resources.contains(&Resource::Datasets));
    let (feeds_done, first_feeds) = watch::channel(!resources.contains(&Resource::NoteFeeds));
    let (fatal_tx, mut fatal_rx) = tokio::sync::mpsc::channel::<ApiError>(1);
    let mut tasks = tokio::task::JoinSet::new();
    for res in resources {
        let (syncer, mut stop, fatal) = (syncer.clone(), shutdown.clone(), fatal_tx.clone());
        let (done, datasets_done, feeds_done) =
            (done.clone(), datasets_done.clone(), feeds_done.clone());
        let mut first = match res {
            Resource::NoteComments => Some(first_feeds.clone()),
            Resource::Datasets => None,
            _ if res.jsonapi().is_some() => None,
            _ => Some(first.clone()),
        };
        let every = syncer.cfg.schedule[&res];
        tasks.spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
            if let Some(first) = first.as_mut() {
                tokio::select! {
                    _ = first.wait_for(|done| *done) => {}
                    _ = stopped(&mut stop) => return,
                }
            }
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stopped(&mut stop) => return,
                }
                tokio::select! {
                    r = syncer.sync_resource(res) => {
                        if let Err(e) = done(r) {
                            let _ = fatal.send(e).await;
                            return;
                        }
                        match res {
                            Resource::Datasets => datasets_done.send_replace(true),
                            Resource::NoteFeeds => feeds_done.send_replace(true),
                            _ => false,
                        };
                    }
                    _ = stopped(&mut stop) => return,
                }
            }
        });
    }
    drop((fatal_tx, datasets_done, feeds_done));
    let result = tokio::select! {
        _ = stopped(&mut shutdown) => Ok(()),
        Some(e) = fatal_rx.recv() => Err(e),
        Some(ended) = tasks.join_next() => match fatal_rx.try_recv() {
            // it ended to report a rejected key, or because we are stopping
            Ok(e) => Err(e),
            Err(_) if *shutdown.borrow() => Ok(()),
            Err(_) => {
                tracing::error!("a resource task ended unexpectedly ({ended:?}); stopping");
                Err(ApiError::Internal("a resource task ended unexpectedly".into()))
            }
        },
    };
    tasks.abort_all();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    result
}

/// Resolves once the shutdown flag is set (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn log_cycle(report: &CycleReport) {
    let line = summary_line(report);
    if report.failures.is_empty() {
        tracing::info!("{line}");
    } else {
        tracing::warn!("{line} ({} scopes failed)", report.failures.len());
    }
    crate::service::notify(&[sd_notify::NotifyState::Status(&line)]);
}
