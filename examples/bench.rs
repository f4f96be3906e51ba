//! Throughput and memory of a full mirror of N items, against the built-in
//! simulator with `page_size` 1000.
//!
//!     cargo run --release --example bench -- [ITEMS] [--datasets D] [--latency MS]
//!                                            [--rps R] [--concurrency C]
//!
//! ITEMS defaults to 1000000, spread over D datasets (default 1). By default the
//! rate limiter is effectively off and the simulator answers at once; `--latency`
//! adds a round trip to every answer and `--rps` sets `api.requests_per_second`
//! (burst 1), which is how the rate floor (requests / rate) is measured against
//! the time a crawl takes. `--concurrency` sets `api.concurrency` (default 8).
//!
//! Prints one core's SHA-256 speed first (the machine's speed swings, and runs
//! at different speeds do not compare), then items/s for the first sync and for
//! an unchanged re-sync, the requests and the CPU time (the mirror's, the writer thread's) each took,
//! the most requests the simulator answered at once, peak RSS (VmHWM) of the
//! mirror, and the database's and the WAL's largest sizes. The simulator runs in
//! a child process (this program again, with `--serve`), as the real API would
//! be elsewhere; `--in-process` keeps it in this process instead.
//!
//! `--postgres CONNINFO` puts the mirror in PostgreSQL instead (SPEC §9): a
//! fresh schema `bench_<pid>` there, dropped at the end; "the writer thread"
//! is then the whole process (the driver runs on the async runtime), and the
//! database's size is the schema's. Then `--follow` also measures how soon
//! `events --follow` (the built binary, `target/release/avala-mirror`) prints
//! an event after its commit, over 20 events.
//!
//! `--empty-listing` then lists the items once more from a server whose listings
//! are empty but complete (every item still answers its GET), and prints the
//! peak RSS of that cycle alone: its deletion pass holds rowids, not records.

use std::sync::Arc;
use std::time::{Duration, Instant};

use avala_mirror::config::{Config, Resource};
use avala_mirror::sim::{SimConfig, Simulator};
use avala_mirror::store::Store;
use avala_mirror::sync::Syncer;

#[path = "common/rss.rs"]
mod rss;
use rss::{proc_status, process_cpu_secs, sha256_speed, thread_cpu_secs};

fn world(n: u64, datasets: u64) -> SimConfig {
    SimConfig {
        owners: vec!["bench".into()],
        organizations: vec![],
        datasets_per_owner: datasets as usize,
        items_per_dataset: n / datasets,
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
    let option = |name: &str| -> anyhow::Result<Option<f64>> {
        match args.iter().position(|a| a == name) {
            Some(i) => Ok(Some(
                args.get(i + 1)
                    .ok_or_else(|| anyhow::anyhow!("{name} needs a value"))?
                    .parse()?,
            )),
            None => Ok(None),
        }
    };
    let datasets = option("--datasets")?.unwrap_or(1.0) as u64;
    let latency = Duration::from_secs_f64(option("--latency")?.unwrap_or(0.0) / 1000.0);
    let rps = option("--rps")?;
    let concurrency = option("--concurrency")?.map(|c| c as u32);
    let postgres = args.iter().position(|a| a == "--postgres").map(|i| {
        args.get(i + 1)
            .cloned()
            .expect("--postgres needs a connection string")
    });
    if args.first().map(String::as_str) == Some("--serve") {
        let sim = Simulator::start(
            world(args[1].parse()?, datasets),
            "127.0.0.1:0".parse()?,
            None,
        )
        .await?;
        sim.faults(|f| f.latency = latency);
        println!("{}", sim.base_url());
        // the most requests answered at once, on a line of its own when asked
        let state = sim.state.clone();
        tokio::task::spawn_blocking(move || {
            for line in std::io::stdin().lines() {
                if line.is_ok_and(|l| l == "empty") {
                    empty_listings(&state);
                    println!("ok");
                    continue;
                }
                println!("{}", state.faults.lock().expect("faults").max_in_flight);
            }
        })
        .await?;
        return Ok(());
    }
    let mut values = args.iter().enumerate().filter(|(i, a)| {
        !a.starts_with("--")
            && (*i == 0
                || !args[*i - 1].starts_with("--")
                || matches!(
                    args[*i - 1].as_str(),
                    "--in-process" | "--follow" | "--empty-listing"
                ))
    });
    let n: u64 = values
        .next()
        .map(|(_, a)| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    // the simulator: here, or in a child process that prints its base URL
    let mut sim = Served::start(n, datasets, latency, in_process).await?;
    let base = sim.base.clone();
    let dir = tempfile::tempdir()?;
    let mut cfg = Config::defaults(
        &base,
        &world(n, datasets).api_key,
        &["bench"],
        &[],
        &dir.path().join("bench.db"),
    )?;
    match rps {
        Some(rps) => (cfg.api.requests_per_second, cfg.api.burst) = (rps, 1),
        None => (cfg.api.requests_per_second, cfg.api.burst) = (1e6, 1_000_000),
    }
    if let Some(c) = concurrency {
        cfg.api.concurrency = c;
    }
    cfg.api.page_size = 1000;
    cfg.scope.resources = vec![Resource::Datasets, Resource::Items];
    let schema = format!("bench_{}", std::process::id());
    if let Some(url) = &postgres {
        let env = std::env::vars().collect();
        let password = avala_mirror::store::postgres::Password {
            file: None,
            env: &env,
        };
        let target = avala_mirror::store::postgres::Target::parse(url, &schema, password)
            .map_err(|e| anyhow::anyhow!(e))?;
        cfg.store_pg = Some(target);
    }
    let store = Store::open_config(&cfg).await?;
    let at = cfg.location();
    let syncer = Syncer::new(Arc::new(cfg), store)?;
    let where_ = if in_process {
        "in this process"
    } else {
        "in a child process"
    };
    let limiter = match rps {
        Some(r) => format!("{r} requests/s"),
        None => "limiter off".into(),
    };
    println!(
        "mirroring {n} items in {datasets} datasets (page_size 1000, {limiter}, concurrency {}, latency {latency:?}, simulator {where_}) into {}",
        syncer.client.concurrency(),
        at.display()
    );
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
            "{label:<18} {:>8.0} items/s  ({secs:.2} s, {requests} requests for {} pages, written: {})",
            n as f64 / secs,
            (n / datasets).div_ceil(1000) * datasets,
            report.created + report.updated + report.status_changed
        );
        if let Some(rps) = rps {
            let floor = requests as f64 / rps;
            println!(
                "  rate floor {floor:.1} s ({requests} requests at {rps}/s): took {:.2}x the floor",
                secs / floor
            );
        }
        println!(
            "  most requests in flight at the simulator: {}",
            sim.max_in_flight()?
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
    if args.iter().any(|a| a == "--empty-listing") {
        sim.empty_listings()?;
        // the high-water mark of this cycle alone
        std::fs::write("/proc/self/clear_refs", "5")?;
        let t = Instant::now();
        let report = syncer.sync_resource(Resource::Items).await?;
        println!(
            "empty complete listing: {:.2} s, listed {}, deleted {} (a sample of checks found the items still there); peak RSS of this cycle {}",
            t.elapsed().as_secs_f64(),
            report.listed,
            report.deleted,
            proc_status("VmHWM:")
        );
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    if let Some(url) = &postgres {
        let status = syncer.store.status().await?;
        println!(
            "schema size {:.1} MiB",
            mib(status["database_bytes"].as_u64().unwrap_or(0))
        );
        if args.iter().any(|a| a == "--follow") {
            follow_latency(&syncer.store, url, &schema).await?;
        }
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await?;
        return Ok(());
    }
    let db = std::fs::metadata(dir.path().join("bench.db"))?.len();
    println!(
        "database size {:.1} MiB; WAL at most {:.1} MiB",
        mib(db),
        mib(wal_peak.load(std::sync::atomic::Ordering::Relaxed))
    );
    Ok(())
}

/// How soon `events --follow` prints an event after the transaction that
/// wrote it commits: 20 tombstones, a quarter second apart.
async fn follow_latency(store: &Store, url: &str, schema: &str) -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("follow.toml");
    std::fs::write(
        &cfg,
        format!("[store]\nurl = \"{url}\"\nschema = \"{schema}\"\n"),
    )?;
    let bin = std::env::current_exe()?
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("avala-mirror"))
        .expect("target/release");
    let mut child = tokio::process::Command::new(bin)
        .args([
            "--config",
            cfg.to_str().expect("utf-8"),
            "events",
            "--follow",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let uids: Vec<String> = store
        .present_uids(Resource::Items)
        .await?
        .into_iter()
        .take(20)
        .collect();
    let mut waits = Vec::new();
    for uid in uids {
        let now = avala_mirror::store::now_rfc3339();
        let committed = Instant::now();
        store.tombstone(Resource::Items, &uid, true, &now).await?;
        lines.next_line().await?.expect("an event line");
        waits.push(committed.elapsed());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    waits.sort();
    println!(
        "events --follow: an event printed {:.1} ms after its commit (median of {}), {:.1} ms at most",
        waits[waits.len() / 2].as_secs_f64() * 1000.0,
        waits.len(),
        waits[waits.len() - 1].as_secs_f64() * 1000.0
    );
    Ok(())
}

/// The simulator, in this process or in a child (which prints its base URL,
/// then the most requests it answered at once for each line it reads).
struct Served {
    base: reqwest::Url,
    sim: Option<Simulator>,
    child: Option<(
        std::process::Child,
        std::io::BufReader<std::process::ChildStdout>,
    )>,
}

impl Served {
    async fn start(
        n: u64,
        datasets: u64,
        latency: Duration,
        in_process: bool,
    ) -> anyhow::Result<Served> {
        if in_process {
            let sim = Simulator::start(world(n, datasets), "127.0.0.1:0".parse()?, None).await?;
            sim.faults(|f| f.latency = latency);
            return Ok(Served {
                base: sim.base_url(),
                sim: Some(sim),
                child: None,
            });
        }
        let latency_ms = (latency.as_secs_f64() * 1000.0).to_string();
        let datasets = datasets.to_string();
        let args = [
            "--serve",
            &n.to_string(),
            "--datasets",
            &datasets,
            "--latency",
            &latency_ms,
        ];
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut out = std::io::BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line)?;
        Ok(Served {
            base: line.trim().parse()?,
            sim: None,
            child: Some((child, out)),
        })
    }

    /// Every item listing answers empty, complete; the items stay.
    fn empty_listings(&mut self) -> anyhow::Result<()> {
        use std::io::{BufRead, Write};
        if let Some(sim) = &self.sim {
            empty_listings(&sim.state);
            return Ok(());
        }
        let (child, out) = self.child.as_mut().expect("a simulator");
        writeln!(child.stdin.as_mut().expect("piped"), "empty")?;
        out.read_line(&mut String::new())?;
        Ok(())
    }

    fn max_in_flight(&mut self) -> anyhow::Result<usize> {
        use std::io::{BufRead, Write};
        if let Some(sim) = &self.sim {
            return Ok(sim.faults(|f| f.max_in_flight));
        }
        let (child, out) = self.child.as_mut().expect("a simulator");
        writeln!(child.stdin.as_mut().expect("piped"))?;
        let mut line = String::new();
        out.read_line(&mut line)?;
        Ok(line.trim().parse()?)
    }
}

fn empty_listings(state: &avala_mirror::sim::SimState) {
    let mut w = state.world.lock().expect("world");
    for ds in 0..w.datasets.len() {
        w.truncate_item_listing(ds, 0);
    }
}
