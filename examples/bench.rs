//! Throughput and memory of a full mirror of N items, against the built-in
//! simulator with the rate limiter effectively off and `page_size` 1000.
//!
//!     cargo run --release --example bench -- [ITEMS]      (default 1000000)
//!
//! Prints one core's SHA-256 speed first (the machine's speed swings, and runs
//! at different speeds do not compare), then items/s for the first sync and for
//! an unchanged re-sync, the requests and the CPU time (the mirror's, the writer thread's) each took,
//! peak RSS (VmHWM) of the mirror, and the database's and the WAL's largest
//! sizes. The simulator runs in a child
//! process (this program again, with `--serve N`), as the real API would be
//! elsewhere; `--in-process` keeps it in this process instead.

use std::sync::Arc;
use std::time::Instant;

use avala_mirror::api::Client;
use avala_mirror::config::{Config, Resource};
use avala_mirror::sim::{SimConfig, Simulator};
use avala_mirror::store::Store;
use avala_mirror::sync::Syncer;

#[path = "common/rss.rs"]
mod rss;
use rss::{proc_status, process_cpu_secs, thread_cpu_secs};

fn world(n: u64) -> SimConfig {
    SimConfig {
        owners: vec!["bench".into()],
        organizations: vec![],
        datasets_per_owner: 1,
        items_per_dataset: n,
        sequences_per_dataset: 0,
        slices_per_owner: 0,
        exports: 0,
        max_page_size: 1000,
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let in_process = args.iter().any(|a| a == "--in-process");
    if args.first().map(String::as_str) == Some("--serve") {
        let sim = Simulator::start(world(args[1].parse()?), "127.0.0.1:0".parse()?, None).await?;
        println!("{}", sim.base_url());
        tokio::task::spawn_blocking(|| std::io::stdin().lines().count()).await?;
        return Ok(());
    }
    let n: u64 = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    // the simulator: here, or in a child process that prints its base URL
    let mut _child = None;
    let mut _sim = None;
    let base: reqwest::Url = if in_process {
        let sim = Simulator::start(world(n), "127.0.0.1:0".parse()?, None).await?;
        let base = sim.base_url();
        _sim = Some(sim);
        base
    } else {
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args(["--serve", &n.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("piped")),
            &mut line,
        )?;
        _child = Some(child);
        line.trim().parse()?
    };
    let dir = tempfile::tempdir()?;
    let mut cfg = Config::defaults(
        &base,
        &world(n).api_key,
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
    let where_ = if in_process {
        "in this process"
    } else {
        "in a child process"
    };
    println!("mirroring {n} items (page_size 1000, limiter off, simulator {where_})");
    println!(
        "  this machine now: {:.0} MiB/s of SHA-256 on one core",
        sha256_speed()
    );
    let requests = || {
        syncer
            .client
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    println!("  RSS before syncing {}", proc_status("VmRSS:"));
    // the WAL's largest size, sampled every 50 ms
    let wal_peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (wal, peak) = (dir.path().join("bench.db-wal"), wal_peak.clone());
    tokio::spawn(async move {
        loop {
            let len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
            peak.fetch_max(len, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    for label in ["first sync", "unchanged re-sync"] {
        let requests_before = requests();
        let (cpu_before, writer_before) = (process_cpu_secs(), thread_cpu_secs("store"));
        let t = Instant::now();
        syncer.sync_resource(Resource::Datasets).await?;
        let report = syncer.sync_resource(Resource::Items).await?;
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(report.listed, n, "{report:?}");
        assert!(report.failures.is_empty(), "{report:?}");
        let requests = requests() - requests_before;
        println!(
            "{label:<18} {:>8.0} items/s  ({secs:.2} s, {requests} requests for ceil({n}/1000) = {} pages, written: {})",
            n as f64 / secs,
            n.div_ceil(1000),
            report.created + report.updated + report.status_changed
        );
        println!(
            "  the {} used {:.2} s of CPU, the writer thread {:.2} s of it",
            if in_process {
                "mirror and simulator"
            } else {
                "mirror"
            },
            process_cpu_secs() - cpu_before,
            thread_cpu_secs("store") - writer_before
        );
        println!(
            "  peak RSS so far {} (anon {}, file {})",
            proc_status("VmHWM:"),
            proc_status("RssAnon:"),
            proc_status("RssFile:")
        );
    }
    println!(
        "peak RSS (VmHWM) {}; RSS now {}",
        proc_status("VmHWM:"),
        proc_status("VmRSS:")
    );
    let db = std::fs::metadata(dir.path().join("bench.db"))?.len();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "database size {:.1} MiB; WAL at most {:.1} MiB",
        mib(db),
        mib(wal_peak.load(std::sync::atomic::Ordering::Relaxed))
    );
    Ok(())
}

/// How fast one core hashes right now: the machine's speed swings from one
/// minute to the next, and figures from runs at different speeds do not compare.
fn sha256_speed() -> f64 {
    use sha2::Digest;
    let block = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut h = sha2::Sha256::new();
    for _ in 0..256 {
        h.update(&block);
    }
    std::hint::black_box(h.finalize());
    256.0 / t.elapsed().as_secs_f64()
}
