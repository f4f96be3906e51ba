//! Download throughput and memory: one archive from the simulator's storage over
//! loopback, fetched by the mirror's downloader and by `curl -o` in the same run.
//!
//!     cargo run --release --example download_bench -- [MIB]      (default 1024)
//!
//! The simulator runs in a child process (this program started again with
//! `--serve`), so the peak RSS printed (VmHWM) is the downloader's alone. The
//! downloader's time includes everything it does before an archive counts as
//! downloaded: SHA-256 while streaming, reading every zip entry through (CRC),
//! fsync and rename. Each side runs three times; the best run counts.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use avala_mirror::config::Config;
use avala_mirror::download::Downloader;
use avala_mirror::sim::{SimConfig, Simulator};
use avala_mirror::store::{Store, downloads, now_rfc3339};

#[path = "common/rss.rs"]
mod rss;
use rss::proc_status;

const RUNS: usize = 3;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        return serve(args[2].parse()?);
    }
    let mib: u64 = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(1024);
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--serve", &(mib << 20).to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (base, uid, link) = match (parts.next(), parts.next(), parts.next()) {
        (Some(b), Some(u), Some(l)) => (b.to_string(), u.to_string(), l.to_string()),
        _ => anyhow::bail!("the simulator did not start: {line:?}"),
    };
    let dir = tempfile::tempdir_in(".")?;
    let size = (mib << 20) as f64;

    let mut curl_best = f64::MAX;
    let mut ours_best = f64::MAX;
    let rt = tokio::runtime::Runtime::new()?;
    let mut cfg = Config::defaults(
        &base.parse()?,
        "bench-key",
        &["bench"],
        &[],
        &dir.path().join("mirror.db"),
    )?;
    cfg.downloads.dir = dir.path().join("exports");
    let store = Store::open(&cfg.store_path)?;
    let client = avala_mirror::api::Client::new(&cfg.api)?;
    let downloader = Downloader::new(&cfg, store.clone(), client)?;
    let before = proc_status("VmHWM:");
    for run in 0..RUNS {
        let out = dir.path().join("curl.zip");
        let t = Instant::now();
        let status = Command::new("curl")
            .args(["-sS", "-o"])
            .arg(&out)
            .arg(&link)
            .status()?;
        anyhow::ensure!(status.success(), "curl failed");
        curl_best = curl_best.min(t.elapsed().as_secs_f64());
        std::fs::remove_file(&out)?;

        let (u, l, n) = (uid.clone(), link.clone(), now_rfc3339());
        let job = rt.block_on(store.call(move |c| {
            downloads::request(c, &u, &l, "bench.zip", &n)?;
            downloads::get(c, &u)
        }))?;
        let _ = std::fs::remove_file(cfg.downloads.dir.join("bench.zip"));
        let t = Instant::now();
        let done = rt
            .block_on(downloader.download(job.expect("queued")))
            .map_err(anyhow::Error::msg)?;
        ours_best = ours_best.min(t.elapsed().as_secs_f64());
        if run == 0 {
            println!("archive: {} bytes, sha256 {}", done.bytes, done.sha256);
        }
    }
    drop(child.stdin.take());
    let _ = child.wait();

    let mbs = |secs: f64| size / secs / (1u64 << 20) as f64;
    println!(
        "curl -o:     {:>7.0} MiB/s  ({curl_best:.2}s, best of {RUNS})",
        mbs(curl_best)
    );
    println!(
        "avala-mirror {:>7.0} MiB/s  ({ours_best:.2}s, best of {RUNS}, checks included)",
        mbs(ours_best)
    );
    println!(
        "ratio:       {:>7.0}% of curl",
        100.0 * curl_best / ours_best
    );
    println!(
        "peak RSS (VmHWM) of the downloading process: {} ({before} before the first download)",
        proc_status("VmHWM:")
    );
    Ok(())
}

/// The child: a simulator with one exported export of `bytes`, its archive made
/// before the line `<api base> <export uid> <link>` is printed; runs until stdin closes.
fn serve(bytes: u64) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let world = SimConfig {
            api_key: "bench-key".into(),
            owners: vec!["bench".into()],
            organizations: vec![],
            datasets_per_owner: 1,
            items_per_dataset: 0,
            sequences_per_dataset: 0,
            slices_per_owner: 0,
            exports: 1,
            archive_bytes: bytes,
            ..Default::default()
        };
        let sim = Simulator::start(world, "127.0.0.1:0".parse()?, None).await?;
        let (uid, json) = sim.world(|w| (w.exports[0].uid.clone(), w.export_json(0)));
        let link = json["download_url"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        sim.state.archives.path(&uid, json).await?;
        println!("{} {uid} {link}", sim.base_url());
        tokio::task::spawn_blocking(|| std::io::stdin().lines().count()).await?;
        Ok(())
    })
}
