//! `serve` against the API it stands in for (SPEC §11), measured:
//!
//!     cargo build --release && cargo run --release --example serve_bench -- [ITEMS] [--limit L]
//!
//! Mirrors a world of ITEMS items (default 100000, in 10 datasets, with
//! sequences and exports) from the simulator, then runs the official SDK script
//! `tests/sdk/list_everything.py` (needs `pip install avala`) once against the
//! simulator with 20 ms latency per request and once against `avala-mirror
//! serve` (the release binary, in a child process), and checks both printed the
//! same records. `--limit` is the script's page size (default: the API's, 100).
//! Then, from this process: the time `serve` takes to answer one page of 1,000
//! items (200 in a row: median and 99th percentile), the pages per second it
//! holds with 8 clients at once for 5 s, and the peak RSS (VmHWM) of the `serve`
//! process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use avala_mirror::config::{Config, Resource};
use avala_mirror::sim::{SimConfig, Simulator};
use avala_mirror::store::Store;
use avala_mirror::sync::Syncer;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/list_everything.py");

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let items: u64 = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .filter(|_| args.first().is_some_and(|a| !a.starts_with("--")))
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let limit: u32 = match args.iter().position(|a| a == "--limit") {
        Some(i) => args.get(i + 1).expect("--limit N").parse()?,
        None => 100,
    };
    let binary = std::env::current_exe()?
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("avala-mirror"))
        .filter(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("build the binary first: cargo build --release"))?;

    let world = SimConfig {
        owners: vec!["bench".into()],
        organizations: vec![],
        datasets_per_owner: 10,
        items_per_dataset: items / 10,
        sequences_per_dataset: 50,
        slices_per_owner: 0,
        exports: 20,
        max_page_size: 1000,
        ..Default::default()
    };
    let sim = Simulator::start(world.clone(), "127.0.0.1:0".parse()?, None).await?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("bench.db");
    let mut cfg = Config::defaults(&sim.base_url(), &world.api_key, &["bench"], &[], &db)?;
    (cfg.api.requests_per_second, cfg.api.burst) = (1e6, 1_000_000);
    cfg.api.page_size = 1000;
    cfg.scope.resources = vec![
        Resource::Datasets,
        Resource::Items,
        Resource::Sequences,
        Resource::Exports,
    ];
    let syncer = Syncer::new(Arc::new(cfg.clone()), Store::open(&db)?)?;
    avala_mirror::commands::sync::cycle(&syncer, &cfg.resources()).await?;
    drop(syncer);
    println!("mirrored {items} items in 10 datasets (with 500 sequences and 20 exports)");

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let listen = format!("127.0.0.1:{port}");
    let mut serve = tokio::process::Command::new(&binary)
        .args(["--db", db.to_str().unwrap(), "serve", "--listen", &listen])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let http = reqwest::Client::new();
    let page_url = format!("http://{listen}/api/v1/datasets/bench/batch-001/items/?limit=1000");
    for _ in 0..200 {
        if http.get(&page_url).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    sim.faults(|f| f.latency = Duration::from_millis(20));
    let sim_base = sim.base_url().to_string();
    let (upstream, sim_secs) =
        script(sim_base.trim_end_matches('/'), &world.api_key, limit).await?;
    let serve_base = format!("http://{listen}/api/v1");
    let (served, serve_secs) = script(&serve_base, "any", limit).await?;
    anyhow::ensure!(upstream == served, "the script saw different records");
    let seen: Vec<String> = ["datasets", "items", "sequences", "exports"]
        .iter()
        .map(|k| format!("{} {k}", upstream[k].as_array().map_or(0, Vec::len)))
        .collect();
    println!(
        "the SDK script (page size {limit}) listed {}:\n  against the simulator at 20 ms per request: {sim_secs:.2} s\n  against serve:                               {serve_secs:.2} s ({:.1}x faster, the same records)",
        seen.join(", "),
        sim_secs / serve_secs
    );

    let mut one = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let body = http.get(&page_url).send().await?.bytes().await?;
        one.push(t.elapsed());
        anyhow::ensure!(body.len() > 100_000, "a short page");
    }
    one.sort();
    println!(
        "one page of 1,000 items from serve: median {:.2} ms, p99 {:.2} ms",
        one[100].as_secs_f64() * 1e3,
        one[197].as_secs_f64() * 1e3
    );
    let until = Instant::now() + Duration::from_secs(5);
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let http = http.clone();
            let url = format!(
                "http://{listen}/api/v1/datasets/bench/batch-{:03}/items/?limit=1000",
                c % 10 + 1
            );
            tokio::spawn(async move {
                let mut pages = 0u64;
                while Instant::now() < until {
                    let body = http.get(&url).send().await?.bytes().await?;
                    anyhow::ensure!(body.len() > 100_000, "a short page");
                    pages += 1;
                }
                Ok(pages)
            })
        })
        .collect();
    let mut pages = 0;
    for c in clients {
        pages += c.await??;
    }
    println!(
        "8 clients at once for 5 s: {:.0} pages of 1,000 items/s",
        pages as f64 / 5.0
    );
    let pid = serve.id().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?");
    println!(
        "serve's peak RSS: {}",
        hwm.trim_start_matches("VmHWM:").trim()
    );
    serve.start_kill()?;
    Ok(())
}

/// Runs the SDK script at `base`; its output and the seconds it took.
async fn script(base: &str, key: &str, limit: u32) -> anyhow::Result<(serde_json::Value, f64)> {
    let t = Instant::now();
    let out = tokio::process::Command::new("python3")
        .args([SCRIPT, &limit.to_string()])
        .env("AVALA_BASE_URL", base)
        .env("AVALA_API_KEY", key)
        .env("AVALA_ALLOW_INSECURE_BASE_URL", "true")
        .output()
        .await?;
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        out.status.success(),
        "the SDK script failed against {base}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((serde_json::from_slice(&out.stdout)?, secs))
}
