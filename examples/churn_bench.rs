//! Months unattended, compressed (issue 15): `avala-mirror run` (the release
//! binary, in a child process) against a simulator whose world changes
//! thousands of times a minute, with short retention, while this program
//! samples the database's size, the WAL's and the daemon's RSS; in the middle,
//! a reader holds one read transaction open for a while.
//!
//!     cargo build --release && cargo run --release --example churn_bench -- \
//!         [--minutes 20] [--reader-at 8] [--reader-minutes 5] [--retention 2m] [--no-exports]
//!
//! `--no-exports` leaves out the exports, which the simulator adds five a
//! second and never deletes: the mirror then grows little with the account.
//!
//! Prints one line per sample (every 30 s): minutes, events written so far,
//! events kept, database MiB, WAL MiB, the daemon's RSS. Flat database and RSS
//! columns after the first retention period, and a WAL under `store.max_wal`
//! while the reader holds its transaction, are what to look for.

use std::path::Path;
use std::time::{Duration, Instant};

use avala_mirror::sim::{SimConfig, Simulator};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// The resident size of process `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let minutes: f64 = arg(&args, "--minutes", "20").parse()?;
    let reader_at: f64 = arg(&args, "--reader-at", "8").parse()?;
    let reader_minutes: f64 = arg(&args, "--reader-minutes", "5").parse()?;
    let retention = arg(&args, "--retention", "2m");
    let resources = match args.iter().any(|a| a == "--no-exports") {
        true => "resources = [\"datasets\", \"sequences\", \"items\", \"slices\"]\n",
        false => "",
    };
    let binary = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("avala-mirror"))
        .filter(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("build the binary first: cargo build --release"))?;

    // ten datasets of 5,000 items; the world steps 20 times a second
    let world = SimConfig {
        datasets_per_owner: 5,
        items_per_dataset: 5_000,
        sequences_per_dataset: 40,
        ..Default::default()
    };
    let sim = Simulator::start(
        world.clone(),
        "127.0.0.1:0".parse()?,
        Some(Duration::from_millis(50)),
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("churn.db");
    let cfg = dir.path().join("churn.toml");
    std::fs::write(
        &cfg,
        format!(
            "[api]\nbase_url = \"{}\"\nrequests_per_second = 200.0\nburst = 50\npage_size = 1000\n\
             [scope]\nowners = [\"johndoe\"]\norganizations = [\"acme-ai\"]\n{resources}\
             [schedule]\ndatasets = \"30s\"\nsequences = \"2s\"\nitems = \"10s\"\nslices = \"30s\"\nexports = \"2s\"\n\
             [store]\npath = \"{}\"\nkeep_deleted = \"{retention}\"\nmax_wal = \"64MiB\"\n\
             [downloads]\nenabled = false\n[events]\nretention = \"{retention}\"\n[http]\nlisten = \"off\"\n\
             [log]\nlevel = \"warn\"\n",
            sim.base_url(),
            db.display()
        ),
    )?;
    let mut daemon = std::process::Command::new(binary)
        .args(["--config", cfg.to_str().unwrap_or_default(), "run"])
        .env("AVALA_API_KEY", &world.api_key)
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let pid = daemon.id();
    println!(
        "churn: `run` against a world stepping 20 times a second, events.retention and store.keep_deleted {retention}, store.max_wal 64MiB; a reader holds a transaction from minute {reader_at} for {reader_minutes} min"
    );
    println!("minute  events-written  events-kept  db-MiB  wal-MiB  rss-MiB  reader");
    let started = Instant::now();
    let wal = dir.path().join("churn.db-wal");
    let mut reader: Option<rusqlite::Connection> = None;
    let (mut peak_wal, mut peak_rss) = (0u64, 0f64);
    loop {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let m = started.elapsed().as_secs_f64() / 60.0;
        let reading = m >= reader_at && m < reader_at + reader_minutes;
        match (reading, reader.is_some()) {
            (true, false) => {
                let c = rusqlite::Connection::open_with_flags(
                    &db,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )?;
                c.execute_batch("BEGIN")?;
                c.query_row("SELECT count(*) FROM items", [], |r| r.get::<_, i64>(0))?;
                reader = Some(c);
            }
            (false, true) => {
                if let Some(c) = reader.take() {
                    c.execute_batch("COMMIT")?;
                }
            }
            _ => {}
        }
        let c =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let (written, kept): (i64, i64) = c.query_row(
            "SELECT COALESCE(max(seq), 0), count(*) FROM events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        drop(c);
        let (w, rss) = (file_len(&wal), rss_mib(pid));
        (peak_wal, peak_rss) = (peak_wal.max(w), peak_rss.max(rss));
        println!(
            "{m:6.1}  {written:14}  {kept:11}  {:6.1}  {:7.1}  {rss:7.1}  {}",
            mib(file_len(&db)),
            mib(w),
            if reader.is_some() { "holding" } else { "" }
        );
        if m >= minutes {
            break;
        }
    }
    println!(
        "peak WAL {:.1} MiB, peak RSS {peak_rss:.1} MiB (sampled every 30 s)",
        mib(peak_wal)
    );
    daemon.kill()?;
    daemon.wait()?;
    Ok(())
}
