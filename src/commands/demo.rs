//! `demo`: the simulator and the mirror together in a local folder — a first sync
//! with a progress bar, then events as they happen, then a summary and queries.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::config::{Config, Resource};
use crate::sim::{SimConfig, Simulator};
use crate::store::events;

pub async fn demo(dir: &Path, duration: Duration, seed: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let db = dir.join("mirror.db");
    let _writer = crate::store::lock::WriterLock::acquire(&db, "demo")?;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let sim_cfg = SimConfig {
        seed,
        items_per_dataset: 2_000,
        sequences_per_dataset: 12,
        archive_bytes: 4 << 20,
        ..Default::default()
    };
    let sim = Simulator::start(
        sim_cfg.clone(),
        "127.0.0.1:0".parse()?,
        Some(Duration::from_millis(700)),
    )
    .await?;
    let owners: Vec<&str> = sim_cfg.owners.iter().map(String::as_str).collect();
    let orgs: Vec<&str> = sim_cfg.organizations.iter().map(String::as_str).collect();
    let mut cfg = Config::defaults(&sim.base_url(), &sim_cfg.api_key, &owners, &orgs, &db)?;
    cfg.downloads.dir = dir.join("exports");
    cfg.api.requests_per_second = 40.0;
    cfg.api.burst = 20;
    cfg.enable_jsonapi(&sim.jsonapi_url())?;
    if let Some(j) = cfg.jsonapi.as_mut() {
        // every collection, annotations too
        j.resources = Resource::jsonapi_all();
        j.api.requests_per_second = 20.0;
        j.api.burst = 10;
        j.full_every = Duration::from_secs(30);
    }
    for (res, secs) in [
        (Resource::Datasets, 10),
        (Resource::Sequences, 2),
        (Resource::Items, 15),
        (Resource::Slices, 10),
        (Resource::Exports, 2),
        (Resource::Projects, 10),
        (Resource::JsonapiDatasets, 10),
        (Resource::Entries, 3),
        (Resource::Annotations, 15),
        (Resource::NoteFeeds, 2),
        (Resource::NoteComments, 2),
        (Resource::ProjectMembers, 5),
    ] {
        cfg.schedule.insert(res, Duration::from_secs(secs));
    }
    let cfg = Arc::new(cfg);

    println!("avala-mirror demo");
    println!(
        "  simulated Avala API: {}  (owners {}, organizations {})",
        sim.base_url(),
        owners.join(", "),
        orgs.join(", ")
    );
    println!(
        "  simulated JSON:API:  {}  (projects, entries, annotations, note feeds and comments, members)",
        sim.jsonapi_url()
    );
    println!("  mirror database:     {}", db.display());
    println!(
        "  export archives:     {}  (exports that become `exported` from now on)",
        cfg.downloads.dir.display()
    );
    println!(
        "  rate limit:          {} requests/s, burst {}",
        cfg.api.requests_per_second, cfg.api.burst
    );
    println!();

    let total = sim.world(|w| {
        let items: u64 = (0..w.datasets.len()).map(|d| w.item_count(d)).sum();
        let jsonapi: u64 = w
            .jsonapi
            .colls
            .iter()
            .map(|c| c.count - c.deleted.len() as u64)
            .sum();
        items
            + jsonapi
            + (w.datasets.len() + w.sequences.len() + w.slices.len() + w.exports.len()) as u64
    });
    let (bar, progress) = super::sync::progress(Some(total));
    let syncer = super::sync::syncer(cfg.clone(), Some(progress)).await?;
    let started = std::time::Instant::now();
    let reports = super::sync::cycle(&syncer, &cfg.resources()).await?;
    bar.finish_and_clear();
    let listed: u64 = reports.iter().map(|r| r.listed).sum();
    println!(
        "first sync: {listed} records mirrored in {:.1}s with {} API requests (a silent baseline: no events yet)",
        started.elapsed().as_secs_f64(),
        [Some(&syncer.client), syncer.jsonapi.as_ref()]
            .into_iter()
            .flatten()
            .map(|c| c.stats.requests.load(std::sync::atomic::Ordering::Relaxed))
            .sum::<u64>()
    );
    // the mirror as the API, for scripts on the official SDK (SPEC §11)
    let settings = crate::serve::Settings {
        listen: "127.0.0.1:0".parse()?,
        keys: None,
        max_connections: 64,
        organizations: cfg.scope.organizations.clone(),
    };
    let (served, serving) = crate::serve::start(settings, &cfg.store_path).await?;
    println!(
        "the mirror answers the API's read paths too: curl http://{served}/api/v1/exports/  (scripts on the SDK: AVALA_BASE_URL=http://{served}/api/v1 AVALA_ALLOW_INSECURE_BASE_URL=true)"
    );
    println!(
        "watching for changes for {}s (Ctrl-C to stop early)...",
        duration.as_secs()
    );
    println!();

    let (stop_tx, stop_rx) = watch::channel(false);
    let downloads = super::sync::downloader(&syncer)?.map(|d| {
        let rx = stop_rx.clone();
        tokio::spawn(async move { d.serve(rx).await })
    });
    let daemon = tokio::spawn(crate::scheduler::run(syncer.clone(), stop_rx, None));
    let deadline = tokio::time::Instant::now() + duration;
    let mut after = 0i64;
    let mut shown = 0u64;
    loop {
        let batch = syncer.store.events_after(after, "*", 500).await?;
        for e in &batch {
            after = e.seq;
            shown += 1;
            let time = e.created_at.get(11..19).unwrap_or(&e.created_at);
            println!("  {time}  {:<24} {}", e.kind, events::describe(e));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let _ = stop_tx.send(true);
    let _ = daemon.await;
    serving.abort();
    if let Some(d) = downloads {
        let _ = d.await;
    }

    println!();
    println!("summary: {shown} events");
    let status = syncer.store.status().await?;
    for res in Resource::ALL {
        let r = &status["resources"][res.table()];
        println!(
            "  {:<16} {:>6} present, {:>3} deleted",
            res.table(),
            r["present"],
            r["deleted"]
        );
    }
    println!(
        "  downloads        {:>6} archives in {}, {} pending, {} failed",
        status["downloads"]["downloaded"],
        cfg.downloads.dir.display(),
        status["downloads"]["pending"],
        status["downloads"]["failed"]
    );
    let path = db.display();
    println!();
    println!(
        "query the mirror (sqlite3 or any SQLite client; it stays readable while a daemon writes):"
    );
    println!(
        "  sqlite3 {path} \"SELECT dataset_slug, raw->>'key', status FROM sequences WHERE status = 'customer_review' AND deleted_at IS NULL;\""
    );
    println!(
        "  sqlite3 {path} \"SELECT type, uid, old_status, new_status, created_at FROM events ORDER BY seq DESC LIMIT 20;\""
    );
    println!(
        "  sqlite3 {path} \"SELECT uid, entry_id, anchor_type, status, raw->>'$.attributes.content_md' FROM note_feeds WHERE status = 'pending' AND deleted_at IS NULL;\""
    );
    println!(
        "  sqlite3 {path} \"SELECT wf_step, status, count(*) FROM entries WHERE deleted_at IS NULL GROUP BY 1, 2;\""
    );
    println!(
        "  sqlite3 {path} \"SELECT e.raw->>'name', e.status, d.status, d.path, d.sha256 FROM exports e LEFT JOIN downloads d ON d.export_uid = e.uid ORDER BY e.raw->>'created_at' DESC;\""
    );
    println!();
    println!(
        "next: copy config/avala-mirror.toml, set AVALA_API_KEY, and run `avala-mirror sync`."
    );
    Ok(())
}
