//! Throughput and memory of a full mirror of N items, against the in-process
//! simulator with the rate limiter effectively off and `page_size` 1000.
//!
//!     cargo run --release --example bench -- [ITEMS]      (default 1000000)
//!
//! Prints items/s for the first sync and for an unchanged re-sync, the requests
//! it took, and peak RSS (VmHWM) of the whole process (simulator included).

use std::sync::Arc;
use std::time::Instant;

use avala_mirror::api::Client;
use avala_mirror::config::{Config, Resource};
use avala_mirror::sim::{SimConfig, Simulator};
use avala_mirror::store::Store;
use avala_mirror::sync::Syncer;

#[path = "common/rss.rs"]
mod rss;
use rss::proc_status;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let world = SimConfig {
        owners: vec!["bench".into()],
        organizations: vec![],
        datasets_per_owner: 1,
        items_per_dataset: n,
        sequences_per_dataset: 0,
        slices_per_owner: 0,
        exports: 0,
        max_page_size: 1000,
        ..Default::default()
    };
    let sim = Simulator::start(world.clone(), "127.0.0.1:0".parse()?, None).await?;
    let dir = tempfile::tempdir()?;
    let mut cfg = Config::defaults(
        &sim.base_url(),
        &world.api_key,
        &["bench"],
        &[],
        &dir.path().join("bench.db"),
    )?;
    cfg.api.requests_per_second = 1e6;
    cfg.api.burst = 1_000_000;
    cfg.api.page_size = 1000;
    cfg.scope.resources = vec![Resource::Datasets, Resource::Items];
    let syncer = Syncer {
        client: Client::new(&cfg.api)?,
        store: Store::open(&cfg.store_path)?,
        cfg: Arc::new(cfg),
        progress: None,
    };
    println!("mirroring {n} items (page_size 1000, limiter off)");
    for label in ["first sync", "unchanged re-sync"] {
        let requests_before = sim.faults(|f| f.log.len());
        let t = Instant::now();
        syncer.sync_resource(Resource::Datasets).await?;
        let report = syncer.sync_resource(Resource::Items).await?;
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(report.listed, n, "{report:?}");
        assert!(report.failures.is_empty(), "{report:?}");
        let requests = sim.faults(|f| f.log.len()) - requests_before;
        println!(
            "{label:<18} {:>8.0} items/s  ({secs:.2} s, {requests} requests for ceil({n}/1000) = {} pages, written: {})",
            n as f64 / secs,
            n.div_ceil(1000),
            report.created + report.updated + report.status_changed
        );
    }
    println!(
        "peak RSS (VmHWM) {}; RSS now {}",
        proc_status("VmHWM:"),
        proc_status("VmRSS:")
    );
    let db = std::fs::metadata(dir.path().join("bench.db"))?.len();
    println!("database size {:.1} MiB", db as f64 / (1 << 20) as f64);
    Ok(())
}
