//! `run`: the daemon, until SIGTERM or SIGINT. SIGHUP re-reads the configuration:
//! an unchanged one changes nothing; a changed one is built first (its listener,
//! lock, database, sinks) and replaces the running one only once all of it works,
//! the page in hand finished first; an invalid one, or one that cannot be built,
//! is reported and the running one kept. The systemd watchdog is fed from a task
//! of its own, across reloads, after a round trip through the database's writer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::Client;
use crate::config::Config;
use crate::download::Downloader;
use crate::error::{ApiError, EXIT_OK};
use crate::events::deliver::Deliverer;
use crate::service::{self, Health};
use crate::store::Store;
use crate::store::lock::WriterLock;
use crate::sync::Syncer;

/// How often `run` prunes what retention no longer keeps (SPEC §6: at least once a minute).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// How often `run` looks whether the API paused it (written for `status`).
const PAUSE_LOOK: Duration = Duration::from_secs(2);

/// How long a stopping generation gets to finish the page in hand.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// A configuration made ready to run: everything that can fail (the database,
/// the clients, the sinks' registration) is done, nothing is running yet.
struct Prepared {
    syncer: Syncer,
    deliverer: Option<Deliverer>,
    downloader: Option<Downloader>,
}

impl Prepared {
    async fn new(cfg: Arc<Config>) -> anyhow::Result<Prepared> {
        let syncer = super::sync::syncer(cfg, None).await?;
        let deliverer = super::sync::deliverer(&syncer.cfg, &syncer.store).await?;
        let downloader = super::sync::downloader(&syncer)?;
        Ok(Prepared {
            syncer,
            deliverer,
            downloader,
        })
    }

    fn start(self, health: &Arc<Health>) -> Generation {
        let Prepared {
            syncer,
            deliverer,
            downloader,
        } = self;
        let (stop, rx) = watch::channel(false);
        let mut workers = Vec::new();
        if let Some(d) = deliverer {
            let d = Arc::new(d);
            let mut rx = rx.clone();
            workers.push(tokio::spawn(async move {
                tokio::select! {
                    _ = d.serve() => {}
                    _ = rx.wait_for(|s| *s) => {}
                }
            }));
        }
        if let Some(d) = downloader {
            let rx = rx.clone();
            workers.push(tokio::spawn(async move { d.serve(rx).await }));
        }
        let (store, cfg, mut stopping) = (syncer.store.clone(), syncer.cfg.clone(), rx.clone());
        workers.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(PRUNE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = stopping.wait_for(|s| *s) => return,
                }
                if let Err(e) = super::sync::prune(&store, &cfg).await {
                    tracing::error!("pruning what retention no longer keeps: {e}");
                }
            }
        }));
        let (store, mut stopping) = (syncer.store.clone(), rx.clone());
        workers.push(tokio::spawn(async move {
            // a pause the API asked for, where `status` sees it
            let mut shown = 0;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(PAUSE_LOOK) => {}
                    _ = stopping.wait_for(|s| *s) => return,
                }
                let until =
                    crate::api::pace::PAUSED_UNTIL.load(std::sync::atomic::Ordering::Relaxed);
                if until == shown {
                    continue;
                }
                let at = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_secs(until),
                )
                .to_string();
                let written = store.set_service_state("api_paused_until", Some(at)).await;
                if written.is_ok() {
                    shown = until;
                }
            }
        }));
        health.configure(&syncer.cfg);
        health.watch(&syncer.store);
        tracing::info!(db = %syncer.store.location().display(), "mirror running");
        let store = syncer.store.clone();
        let clients = (syncer.client.clone(), syncer.jsonapi.clone());
        let scheduler = tokio::spawn(crate::scheduler::run(syncer, rx, Some(health.clone())));
        Generation {
            stop,
            scheduler,
            workers,
            store,
            clients,
        }
    }

    /// Keeps the pauses the API asked the running generation's clients for.
    fn keep_pauses_of(&self, running: &Generation) {
        let (v1, jsonapi) = &running.clients;
        self.syncer.client.keep_pause_of(v1);
        if let (Some(new), Some(old)) = (&self.syncer.jsonapi, jsonapi) {
            new.keep_pause_of(old);
        }
    }
}

/// Everything one configuration runs: the scheduler, downloads and deliveries.
struct Generation {
    stop: watch::Sender<bool>,
    scheduler: JoinHandle<Result<(), ApiError>>,
    workers: Vec<JoinHandle<()>>,
    store: Store,
    /// Its clients of both services, whose pauses a reload keeps.
    clients: (Arc<Client>, Option<Arc<Client>>),
}

impl Generation {
    /// Stops and waits (bounded): a page being written is committed or rolled back whole.
    async fn stop(&mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let workers = std::mem::take(&mut self.workers);
        let all = async {
            for w in workers {
                let _ = w.await;
            }
            (&mut self.scheduler).await
        };
        match tokio::time::timeout(STOP_GRACE, all).await {
            Ok(Ok(r)) => r.context("mirror stopped"),
            Ok(Err(e)) => Err(anyhow::anyhow!("the scheduler task failed: {e}")),
            Err(_) => {
                tracing::warn!(
                    "stopping took longer than {STOP_GRACE:?}; leaving the rest to the database's rollback"
                );
                self.scheduler.abort();
                Ok(())
            }
        }
    }
}

/// What a running configuration holds beside its generation.
struct Running {
    cfg: Arc<Config>,
    generation: Generation,
    http: Option<(SocketAddr, JoinHandle<()>)>,
    /// `[serve]`: the API answered from the mirror.
    serve: Option<(SocketAddr, JoinHandle<()>)>,
    writer: WriterLock,
}

pub async fn run(
    cfg: Arc<Config>,
    reload: impl Fn() -> anyhow::Result<Arc<Config>>,
) -> anyhow::Result<u8> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let writer = WriterLock::acquire_at(&cfg.location(), "run").await?;
    let health = Health::new(&cfg);
    let http = start_http(cfg.http_listen, &health).await?;
    let generation = Prepared::new(cfg.clone()).await?.start(&health);
    let serve = start_serve(&cfg).await?;
    let mut running = Running {
        cfg,
        generation,
        http,
        serve,
        writer,
    };
    let (store_tx, store_rx) = watch::channel(running.generation.store.clone());
    let _watchdog = AbortOnDrop(tokio::spawn(watchdog(store_rx)));
    service::notify(&[NotifyState::Ready, NotifyState::Status("running")]);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            r = &mut running.generation.scheduler => {
                // only a rejected key (or a task that died) ends the scheduler by itself
                service::notify(&[NotifyState::Stopping]);
                return match r {
                    Ok(r) => r.context("mirror stopped").map(|_| EXIT_OK),
                    Err(e) => Err(anyhow::anyhow!("the scheduler task failed: {e}")),
                };
            }
            _ = hup.recv() => {
                let kept = match reload() {
                    Ok(new) => running.replace(new, &health).await?,
                    Err(e) => Some(format!("the configuration is invalid: {e:#}")),
                };
                match kept {
                    Some(why) => {
                        tracing::error!("SIGHUP: keeping the running configuration: {why}");
                        service::notify(&[NotifyState::Ready, NotifyState::Status("configuration reload failed; running the previous one")]);
                    }
                    None => {
                        let _ = store_tx.send(running.generation.store.clone());
                        service::notify(&[NotifyState::Ready, NotifyState::Status("running")]);
                    }
                }
            }
        }
    }
    tracing::info!("stopping");
    service::notify(&[NotifyState::Stopping]);
    let Running {
        mut generation,
        http,
        serve,
        writer,
        ..
    } = running;
    let result = generation.stop().await;
    for (_, task) in http.into_iter().chain(serve) {
        task.abort();
    }
    drop(writer);
    result.map(|_| EXIT_OK)
}

impl Running {
    /// Replaces the running configuration with `new`, building all of it before
    /// the running one stops. `Some(why)` when `new` was not taken (the running
    /// one goes on); an error only if the old generation failed while stopping.
    async fn replace(
        &mut self,
        new: Arc<Config>,
        health: &Arc<Health>,
    ) -> anyhow::Result<Option<String>> {
        if new == self.cfg {
            tracing::info!("SIGHUP: the configuration is unchanged; nothing to do");
            return Ok(None);
        }
        service::notify(&[NotifyState::Reloading, monotonic_now()]);
        let writer = if new.location() != self.cfg.location() {
            match WriterLock::acquire_at(&new.location(), "run").await {
                Ok(lock) => Some(lock),
                Err(e) => return Ok(Some(e.to_string())),
            }
        } else {
            None
        };
        let http = if new.http_listen != self.cfg.http_listen {
            match start_http(new.http_listen, health).await {
                Ok(h) => Some(h),
                Err(e) => return Ok(Some(format!("{e:#}"))),
            }
        } else {
            None
        };
        let prepared = match Prepared::new(new.clone()).await {
            Ok(p) => p,
            Err(e) => {
                if let Some(Some((_, task))) = http {
                    task.abort();
                }
                return Ok(Some(format!("{e:#}")));
            }
        };
        prepared.keep_pauses_of(&self.generation);
        tracing::info!("SIGHUP: configuration re-read; restarting with it");
        // nothing can fail past here: the old one stops, then the new one starts
        self.generation.stop().await?;
        self.generation = prepared.start(health);
        if let Some(http) = http
            && let Some((_, task)) = std::mem::replace(&mut self.http, http)
        {
            task.abort();
        }
        if let Some(lock) = writer {
            self.writer = lock;
        }
        if new.serve != self.cfg.serve || new.store_path != self.cfg.store_path {
            // the same address may be asked for again: the old one closes first
            if let Some((_, task)) = self.serve.take() {
                task.abort();
                let _ = task.await;
            }
            self.serve = start_serve(&new).await.unwrap_or_else(|e| {
                tracing::error!("SIGHUP: not serving the mirror as an API: {e:#}");
                None
            });
        }
        self.cfg = new;
        Ok(None)
    }
}

/// Feeds the systemd watchdog (when there is one) at half its period, each time
/// after a round trip through the running database's writer thread, so a stuck
/// writer or a dead runtime is restarted; unaffected by reloads.
async fn watchdog(store: watch::Receiver<Store>) {
    let Some(period) = sd_notify::watchdog_enabled().map(|d| d / 2) else {
        return;
    };
    let mut ticks = tokio::time::interval(period);
    loop {
        ticks.tick().await;
        let s = store.borrow().clone();
        let ping = s.ping();
        match tokio::time::timeout(period, ping).await {
            Ok(Ok(_)) => service::notify(&[NotifyState::Watchdog]),
            // waiting out store.max_wal for a reader, and looking each second
            Err(_) if s.waiting_alive(period) => service::notify(&[NotifyState::Watchdog]),
            Ok(Err(e)) => {
                tracing::error!("watchdog: the database failed a round trip ({e}); no ping")
            }
            Err(_) => {
                tracing::error!("watchdog: the database did not answer within {period:?}; no ping")
            }
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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

async fn start_serve(cfg: &Config) -> anyhow::Result<Option<(SocketAddr, JoinHandle<()>)>> {
    match &cfg.serve {
        Some(settings) => Ok(Some(
            crate::serve::start(settings.clone(), &cfg.store_path).await?,
        )),
        None => Ok(None),
    }
}

/// MONOTONIC_USEC, which systemd wants with RELOADING=1.
fn monotonic_now() -> NotifyState<'static> {
    NotifyState::monotonic_usec_now().unwrap_or(NotifyState::Custom(""))
}
