//! `sync`: one complete cycle of every enabled resource, then exit.

use std::sync::Arc;

use std::io::IsTerminal;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::{Config, Resource};
use crate::download::Downloader;
use crate::error::{ApiError, ConfigError, EXIT_OK, EXIT_WORK_FAILED};
use crate::events::deliver::{Deliverer, standard_schedule};
use crate::events::sinks::Sink;
use crate::store::Store;
use crate::store::lock::WriterLock;
use crate::sync::{CycleReport, ProgressFn, Syncer};

/// Opens the store and the client for a command that syncs.
pub async fn syncer(cfg: Arc<Config>, progress: Option<ProgressFn>) -> anyhow::Result<Syncer> {
    let store = Store::open_config(&cfg).await?;
    let syncer = Syncer::new(cfg, store).context("building the HTTP client")?;
    Ok(Syncer { progress, ..syncer })
}

/// The configured sinks' delivery queues (none when no sink is configured), each
/// sink registered in the outbox before anything is synced (a new one starts
/// after the newest event).
pub async fn deliverer(cfg: &Config, store: &Store) -> anyhow::Result<Option<Deliverer>> {
    if cfg.sinks.is_empty() {
        return Ok(None);
    }
    let sinks = cfg
        .sinks
        .iter()
        .map(Sink::from_config)
        .collect::<Result<Vec<_>, _>>()?;
    let d = Deliverer::new(store.clone(), sinks, standard_schedule());
    d.register().await.context("registering the sinks")?;
    Ok(Some(d))
}

/// The export downloader, when `[downloads] enabled`.
pub fn downloader(syncer: &Syncer) -> anyhow::Result<Option<Downloader>> {
    if !syncer.cfg.downloads.enabled {
        return Ok(None);
    }
    let d = Downloader::new(&syncer.cfg, syncer.store.clone(), syncer.client.clone())
        .context("building the download client")?;
    Ok(Some(d))
}

/// Datasets first (the other listings are built from them), then the rest side
/// by side, note comments after note feeds (they follow the feeds in the mirror).
pub async fn cycle(syncer: &Syncer, resources: &[Resource]) -> Result<Vec<CycleReport>, ApiError> {
    let mut reports = Vec::new();
    if resources.contains(&Resource::Datasets) {
        reports.push(syncer.sync_resource(Resource::Datasets).await?);
    }
    let comments = resources.contains(&Resource::NoteComments);
    let rest = resources
        .iter()
        .filter(|r| !matches!(r, Resource::Datasets | Resource::NoteComments))
        .map(|r| syncer.sync_resource(*r));
    for r in futures_util::future::join_all(rest).await {
        reports.push(r?);
    }
    if comments {
        reports.push(syncer.sync_resource(Resource::NoteComments).await?);
    }
    Ok(reports)
}

/// A bar of the records written (with the scope at hand) for `ProgressFn`: with
/// a `total`, a bar to it; without, a counter with the rate (a first sync does
/// not know how many records there are until it has listed them).
pub fn progress(total: Option<u64>) -> (ProgressBar, ProgressFn) {
    let (bar, template) = match total {
        Some(t) => (
            ProgressBar::new(t),
            "first sync {bar:40} {pos}/{len} records  {msg}",
        ),
        None => (
            ProgressBar::new_spinner(),
            "sync {spinner} {pos} records ({per_sec})  {msg}",
        ),
    };
    bar.set_style(ProgressStyle::with_template(template).expect("static template"));
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let b = bar.clone();
    let f: ProgressFn = Arc::new(move |scope: &str, n: u64| {
        b.inc(n);
        b.set_message(scope.to_string());
    });
    (bar, f)
}

/// Prunes settled events past `events.retention` and tombstones past `store.keep_deleted`.
pub async fn prune(store: &Store, cfg: &Config) -> crate::store::Result<(usize, usize)> {
    let sinks = cfg.sinks.iter().map(|s| s.name.clone()).collect();
    store
        .prune(cfg.events_retention, cfg.keep_deleted, sinks)
        .await
}

/// How long `sync` keeps delivering pending events before it exits.
const DELIVERY_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn sync(cfg: Arc<Config>, only: Option<Resource>) -> anyhow::Result<u8> {
    let resources = match only {
        Some(r) if r.jsonapi().is_some() && cfg.jsonapi.is_none() => {
            return Err(ConfigError(vec![format!(
                "sync --only {r}: a JSON:API collection, and the JSON:API service is off; set jsonapi.base_url"
            )])
            .into());
        }
        Some(r) => vec![r],
        None => cfg.resources(),
    };
    let _writer = WriterLock::acquire_at(&cfg.location(), "sync").await?;
    // a counter on a terminal (SPEC §1: long work shows progress)
    let bar = std::io::stderr().is_terminal().then(|| progress(None));
    let syncer = syncer(cfg, bar.as_ref().map(|(_, f)| f.clone())).await?;
    let deliverer = deliverer(&syncer.cfg, &syncer.store).await?;
    let reports = cycle(&syncer, &resources).await;
    if let Some((bar, _)) = &bar {
        bar.finish_and_clear();
    }
    let reports = reports.context("sync stopped")?;
    let mut failed = false;
    for r in &reports {
        println!("{}", summary_line(r));
        for (scope, why) in &r.failures {
            failed = true;
            println!("  failed {scope}: {why}");
        }
    }
    let requests =
        |c: &crate::api::Client| c.stats.requests.load(std::sync::atomic::Ordering::Relaxed);
    println!("{} API requests", requests(&syncer.client));
    if let Some(c) = &syncer.jsonapi {
        println!("{} JSON:API requests", requests(c));
    }
    if let Some(mut d) = downloader(&syncer)? {
        if let Some(bars) = super::exports::bars() {
            d = d.with_progress(bars);
        }
        for f in d.drain().await {
            match f.result {
                Ok(done) => println!(
                    "downloaded export {} to {} ({} bytes, sha256 {})",
                    f.export_uid,
                    done.path.display(),
                    done.bytes,
                    done.sha256
                ),
                Err(e) => {
                    failed = true;
                    println!("  failed download of export {}: {e}", f.export_uid);
                }
            }
        }
    }
    if let Some(d) = deliverer {
        for sink in d.flush(DELIVERY_LIMIT).await {
            failed = true;
            println!(
                "  events held for sink {sink}: its receiver is failing; they will be retried"
            );
        }
    }
    if let Err(e) = prune(&syncer.store, &syncer.cfg).await {
        failed = true;
        println!("  pruning what retention no longer keeps: {e}");
    }
    Ok(if failed { EXIT_WORK_FAILED } else { EXIT_OK })
}

pub fn summary_line(r: &CycleReport) -> String {
    format!(
        "{:<16} listed {} (created {}, updated {}, status changed {}, deleted {}), skipped {}, events {}",
        r.resource.map(|r| r.table()).unwrap_or("?"),
        r.listed,
        r.created,
        r.updated,
        r.status_changed,
        r.deleted,
        r.skipped,
        r.events
    )
}
