//! `run`: the daemon, until SIGTERM or SIGINT. SIGHUP re-reads the configuration:
//! a valid one replaces the running one (the page in hand is finished first), an
//! invalid one is reported and the old one kept.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::error::{ApiError, EXIT_OK};
use crate::service::{self, Health};
use crate::store::lock::WriterLock;

/// How long a stopping generation gets to finish the page in hand.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// Everything one configuration runs: the scheduler, downloads and deliveries.
struct Generation {
    stop: watch::Sender<bool>,
    scheduler: JoinHandle<Result<(), ApiError>>,
    workers: Vec<JoinHandle<()>>,
}

impl Generation {
    fn start(cfg: Arc<Config>, health: &Arc<Health>) -> anyhow::Result<Generation> {
        let syncer = super::sync::syncer(cfg, None)?;
        let (stop, rx) = watch::channel(false);
        let mut workers = Vec::new();
        if let Some(d) = super::sync::deliverer(&syncer.cfg, &syncer.store)? {
            let d = Arc::new(d);
            let mut rx = rx.clone();
            workers.push(tokio::spawn(async move {
                tokio::select! {
                    _ = d.serve() => {}
                    _ = rx.wait_for(|s| *s) => {}
                }
            }));
        }
        if let Some(d) = super::sync::downloader(&syncer)? {
            let rx = rx.clone();
            workers.push(tokio::spawn(async move { d.serve(rx).await }));
        }
        health.configure(&syncer.cfg);
        tracing::info!(db = %syncer.store.path().display(), "mirror running");
        let scheduler = tokio::spawn(crate::scheduler::run(syncer, rx, Some(health.clone())));
        Ok(Generation {
            stop,
            scheduler,
            workers,
        })
    }

    /// Stops and waits (bounded): a page being written is committed or rolled back whole.
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let all = async {
            for w in self.workers {
                let _ = w.await;
            }
            self.scheduler.await
        };
        match tokio::time::timeout(STOP_GRACE, all).await {
            Ok(Ok(r)) => r.context("mirror stopped"),
            Ok(Err(e)) => Err(anyhow::anyhow!("the scheduler task failed: {e}")),
            Err(_) => {
                tracing::warn!(
                    "stopping took longer than {STOP_GRACE:?}; leaving the rest to the database's rollback"
                );
                Ok(())
            }
        }
    }
}

pub async fn run(
    mut cfg: Arc<Config>,
    reload: impl Fn() -> anyhow::Result<Arc<Config>>,
) -> anyhow::Result<u8> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut writer = WriterLock::acquire(&cfg.store_path, "run")?;
    let health = Health::new(&cfg);
    let mut http = start_http(cfg.http_listen, &health).await?;
    let mut generation = Generation::start(cfg.clone(), &health)?;
    service::notify(&[NotifyState::Ready, NotifyState::Status("running")]);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            r = &mut generation.scheduler => {
                // only a rejected key (or a panic) ends the scheduler by itself
                service::notify(&[NotifyState::Stopping]);
                return match r {
                    Ok(r) => r.context("mirror stopped").map(|_| EXIT_OK),
                    Err(e) => Err(anyhow::anyhow!("the scheduler task failed: {e}")),
                };
            }
            _ = hup.recv() => {
                let new = match reload() {
                    Ok(new) => new,
                    Err(e) => {
                        tracing::error!("SIGHUP: the configuration is invalid, keeping the running one: {e:#}");
                        service::notify(&[NotifyState::Status("configuration reload failed; running the previous one")]);
                        continue;
                    }
                };
                if new.store_path != cfg.store_path {
                    match WriterLock::acquire(&new.store_path, "run") {
                        Ok(lock) => writer = lock,
                        Err(e) => {
                            tracing::error!("SIGHUP: keeping the running configuration: {e}");
                            continue;
                        }
                    }
                }
                tracing::info!("SIGHUP: configuration re-read; restarting with it");
                service::notify(&[NotifyState::Reloading, monotonic_now()]);
                generation.stop().await?;
                if new.http_listen != cfg.http_listen {
                    if let Some((_, task)) = http.take() {
                        task.abort();
                    }
                    http = start_http(new.http_listen, &health).await?;
                }
                cfg = new;
                generation = Generation::start(cfg.clone(), &health)?;
                service::notify(&[NotifyState::Ready, NotifyState::Status("running (configuration reloaded)")]);
            }
        }
    }
    tracing::info!("stopping");
    service::notify(&[NotifyState::Stopping]);
    let result = generation.stop().await;
    if let Some((_, task)) = http {
        task.abort();
    }
    drop(writer);
    result.map(|_| EXIT_OK)
}

async fn start_http(
    listen: Option<SocketAddr>,
    health: &Arc<Health>,
) -> anyhow::Result<Option<(SocketAddr, JoinHandle<()>)>> {
    match listen {
        Some(addr) => Ok(Some(service::serve_http(addr, health.clone()).await?)),
        None => Ok(None),
    }
}

/// MONOTONIC_USEC, which systemd wants with RELOADING=1.
fn monotonic_now() -> NotifyState<'static> {
    NotifyState::monotonic_usec_now().unwrap_or(NotifyState::Custom(""))
}
