//! The JSON:API service's figures (issue 12): a full listing of the entries, an
//! unchanged incremental cycle, and the mirror's peak memory, against the
//! built-in simulator in a child process, `page_size` 1000, limiter off.
//!
//!     cargo run --release --example jsonapi_bench -- [ENTRIES] [--comments C]
//!
//! ENTRIES defaults to 1000000 and C (note comments) to 200000. Prints one
//! core's SHA-256 speed first (the machine's speed swings), then for each
//! collection its first (full) listing and an unchanged second cycle: records/s,
//! requests, and the CPU time used; then peak RSS (VmHWM) of the mirror and the
//! database's size.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use avala_mirror::config::{Config, Resource};
use avala_mirror::sim::jsonapi::JsonApiSizes;
use avala_mirror::sim::{SimConfig, Simulator};
use avala_mirror::store::Store;
use avala_mirror::sync::Syncer;

#[path = "common/rss.rs"]
mod rss;
use rss::{proc_status, process_cpu_secs, sha256_speed, thread_cpu_secs};

fn world(entries: u64, comments: u64) -> SimConfig {
    SimConfig {
        owners: vec![],
        organizations: vec![],
        datasets_per_owner: 0,
        exports: 0,
        jsonapi: JsonApiSizes {
            projects: 20,
            datasets: 200,
            entries,
            annotations: 0,
            note_feeds: comments / 10,
            note_comments: comments,
            project_members: 200,
        },
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let comments = match args.iter().position(|a| a == "--comments") {
        Some(i) => args.get(i + 1).map(|c| c.parse()).transpose()?,
        None => None,
    }
    .unwrap_or(200_000);
    if args.first().map(String::as_str) == Some("--serve") {
        let sim = Simulator::start(
            world(args[1].parse()?, comments),
            "127.0.0.1:0".parse()?,
            None,
        )
        .await?;
        println!("{} {}", sim.base_url(), sim.jsonapi_url());
        // serve until the parent closes stdin
        tokio::task::spawn_blocking(|| for _ in std::io::stdin().lines() {}).await?;
        return Ok(());
    }
    // the first value that follows no option
    let entries: u64 = (0..args.len())
        .find(|&i| !args[i].starts_with("--") && (i == 0 || !args[i - 1].starts_with("--")))
        .map(|i| args[i].parse())
        .transpose()?
        .unwrap_or(1_000_000);

    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--serve",
            &entries.to_string(),
            "--comments",
            &comments.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut out = std::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line)?;
    let mut urls = line.split_whitespace();
    let (v1, jsonapi): (reqwest::Url, reqwest::Url) = (
        urls.next().unwrap_or_default().parse()?,
        urls.next().unwrap_or_default().parse()?,
    );

    let dir = tempfile::tempdir()?;
    let mut cfg = Config::defaults(
        &v1,
        &world(0, 0).api_key,
        &["bench"],
        &[],
        &dir.path().join("bench.db"),
    )?;
    cfg.scope.resources = vec![];
    cfg.enable_jsonapi(&jsonapi)?;
    let j = cfg.jsonapi.as_mut().expect("enabled");
    (j.api.requests_per_second, j.api.burst) = (1e6, 1_000_000);
    let collections = j.resources.clone();
    let store = Store::open(&cfg.store_path)?;
    let syncer = Syncer::new(Arc::new(cfg), store)?;
    let client = syncer.jsonapi.clone().expect("enabled");
    let requests = || client.stats.requests.load(Ordering::Relaxed);

    println!(
        "mirroring the JSON:API service: {entries} entries, {comments} note comments, {} note feeds (page_size 1000, limiter off, simulator in a child process)",
        comments / 10
    );
    println!(
        "  this machine now: {:.0} MiB/s of SHA-256 on one core",
        sha256_speed()
    );
    // the largest anonymous and file-backed resident sizes, sampled every 10 ms
    let peaks = Arc::new(std::sync::Mutex::new((0u64, 0u64, 0u64)));
    let p = peaks.clone();
    std::thread::spawn(move || {
        let kb = |f: &str| -> u64 {
            proc_status(f)
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        loop {
            let mut m = p.lock().expect("peaks");
            m.0 = m.0.max(kb("RssAnon:"));
            m.1 = m.1.max(kb("RssFile:"));
            m.2 = m.2.max(kb("RssShmem:"));
            drop(m);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    });
    for label in ["first cycle (full listings)", "unchanged cycle"] {
        println!("{label}:");
        for &res in &collections {
            let (r0, cpu0, w0) = (requests(), process_cpu_secs(), thread_cpu_secs("store"));
            let t = Instant::now();
            let report = syncer.sync_resource(res).await?;
            let secs = t.elapsed().as_secs_f64();
            assert!(report.failures.is_empty(), "{report:?}");
            let incremental = res.jsonapi().is_some_and(|j| j.incremental);
            println!(
                "  {:<16} {:>9} listed in {secs:>6.2} s = {:>8.0} records/s, {:>4} requests{}; CPU {:.2} s (writer {:.2} s); peak RSS {}",
                res.table(),
                report.listed,
                report.listed as f64 / secs,
                requests() - r0,
                if incremental { " (incremental)" } else { "" },
                process_cpu_secs() - cpu0,
                thread_cpu_secs("store") - w0,
                proc_status("VmHWM:"),
            );
            if label == "unchanged cycle" && incremental {
                assert!(
                    requests() - r0 <= 2,
                    "{res}: an unchanged incremental cycle took {} requests",
                    requests() - r0
                );
            }
        }
        println!(
            "  peak RSS so far {} (now: anon {}, file {})",
            proc_status("VmHWM:"),
            proc_status("RssAnon:"),
            proc_status("RssFile:")
        );
    }
    assert!(collections.contains(&Resource::Entries));
    let db = std::fs::metadata(dir.path().join("bench.db"))?.len();
    let (anon, file, shmem) = *peaks.lock().expect("peaks");
    println!(
        "peak RSS (VmHWM) {} (sampled peaks: anon {anon} kB, file {file} kB, shmem {shmem} kB); database {:.1} MiB",
        proc_status("VmHWM:"),
        db as f64 / (1 << 20) as f64
    );
    drop(child.stdin.take());
    let _ = child.wait();
    Ok(())
}
