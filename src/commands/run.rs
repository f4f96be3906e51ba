//! `run`: the daemon, until SIGTERM or SIGINT.

use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::config::Config;
use crate::error::EXIT_OK;

pub async fn run(cfg: Arc<Config>) -> anyhow::Result<u8> {
    let syncer = super::sync::syncer(cfg, None)?;
    let deliveries = super::sync::deliverer(&syncer.cfg, &syncer.store)?
        .map(|d| tokio::spawn(std::sync::Arc::new(d).serve()));
    let (tx, rx) = watch::channel(false);
    let downloads = super::sync::downloader(&syncer)?.map(|d| {
        let rx = rx.clone();
        tokio::spawn(async move { d.serve(rx).await })
    });
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    // SIGHUP must not kill the daemon (logrotate sends it); file sinks reopen on every write.
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::warn!(
                "SIGHUP: file sinks need no reopening; configuration reload is not supported yet (restart to apply changes)"
            );
        }
    });
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping");
        let _ = tx.send(true);
    });
    tracing::info!(db = %syncer.store.path().display(), "mirror running");
    let result = crate::scheduler::run(syncer, rx)
        .await
        .context("mirror stopped");
    if let Some(d) = deliveries {
        d.abort();
    }
    if let Some(d) = downloads {
        let _ = d.await;
    }
    result.map(|_| EXIT_OK)
}
