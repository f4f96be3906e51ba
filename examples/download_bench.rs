//! Download throughput and memory: one archive from the simulator's storage over
//! loopback, fetched by the mirror's downloader and by `curl -o` in the same run.
//!
//!     cargo run --release --example download_bench -- [MIB] [--s3]      (default 1024)
//!
//! The simulator runs in a child process (this program started again with
//! `--serve`), so the peak RSS printed (VmHWM) is the downloader's alone. The
//! downloader's time includes everything it does before an archive counts as
//! downloaded: SHA-256 while streaming, reading every zip entry through (CRC),
//! fsync and rename. Each side runs three times; the best run counts.
//!
//! `--s3` then measures `downloads.target` (SPEC §10) against a local
//! `moto_server` (PyPI `moto[server]`) that it starts: the mirror's upload of
//! the verified archive alone, a plain multipart upload of the same file with
//! the server's own client (boto3's `upload_file`), and a whole download with
//! the target set (fetch, checks, upload, local copy removed). The peak RSS
//! printed last covers all of it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use avala_mirror::config::Config;
use avala_mirror::download::Downloader;
use avala_mirror::sim::{SimConfig, Simulator};
use avala_mirror::store::sqlite::downloads;
use avala_mirror::store::{Store, now_rfc3339};

#[path = "common/rss.rs"]
mod rss;
use rss::proc_status;

const RUNS: usize = 3;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--s3") {
        // the credentials object_store reads, as a user's environment has them;
        // set before any thread starts
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", "bench");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "bench");
        }
    }
    if args.get(1).map(String::as_str) == Some("--serve") {
        return serve(args[2].parse()?);
    }
    let s3 = args.iter().any(|a| a == "--s3");
    let moto = if s3 { Some(Moto::start()?) } else { None };
    let mib: u64 = args
        .iter()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1024);
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
    let mut sha = String::new();
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
        sha = done.sha256;
    }
    let uploads = match &moto {
        Some(moto) => Some(rt.block_on(moto.measure(&cfg, &store, &uid, &link, &sha))?),
        None => None,
    };
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
    if let Some((ours, boto, whole)) = uploads {
        println!("upload to the local S3 server (moto_server), one run each:");
        println!(
            "  avala-mirror upload      {:>7.0} MiB/s  ({ours:.2}s)",
            mbs(ours)
        );
        println!(
            "  boto3 upload_file        {:>7.0} MiB/s  ({boto:.2}s, the server's own client)",
            mbs(boto)
        );
        println!(
            "  download with a target   {:>7.0} MiB/s  ({whole:.2}s: fetch, checks, upload, local copy removed)",
            mbs(whole)
        );
    }
    println!(
        "peak RSS (VmHWM) of the downloading process: {} ({before} before the first download)",
        proc_status("VmHWM:")
    );
    Ok(())
}

/// A throwaway `moto_server` on loopback, with a bucket `bench`.
struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

impl Moto {
    fn start() -> anyhow::Result<Moto> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("moto_server (pip install 'moto[server]'): {e}"))?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let moto = Moto { child, endpoint };
        for _ in 0..200 {
            let made = Command::new("curl")
                .args(["-sf", "-X", "PUT", &format!("{}/bench", moto.endpoint)])
                .stdout(Stdio::null())
                .status()?;
            if made.success() {
                return Ok(moto);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        anyhow::bail!("moto_server did not start")
    }

    /// (the mirror's upload, boto3's upload, a whole download with the target), in seconds.
    async fn measure(
        &self,
        cfg: &Config,
        store: &Store,
        uid: &str,
        link: &str,
        sha: &str,
    ) -> anyhow::Result<(f64, f64, f64)> {
        use avala_mirror::download::bucket::Bucket;
        let file = cfg.downloads.dir.join("bench.zip");
        let target = avala_mirror::config::StorageTarget {
            url: "s3://bench/archives".parse()?,
            region: Some("us-east-1".into()),
            endpoint: Some(self.endpoint.parse()?),
            allow_http: true,
        };
        let bucket = Bucket::open(&target).map_err(anyhow::Error::msg)?;
        let t = Instant::now();
        bucket.upload(&file, "ours.zip", sha, |_| async {}).await?;
        let ours = t.elapsed().as_secs_f64();

        let script = format!(
            "import boto3,time\ns3=boto3.client('s3',endpoint_url='{}',region_name='us-east-1',aws_access_key_id='bench',aws_secret_access_key='bench')\nt=time.time()\ns3.upload_file('{}','bench','boto.zip')\nprint(time.time()-t)",
            self.endpoint,
            file.display()
        );
        let out = Command::new("python3").args(["-c", &script]).output()?;
        anyhow::ensure!(
            out.status.success(),
            "boto3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let boto: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;

        let mut with_target = cfg.clone();
        with_target.downloads.target = Some(target);
        let client = avala_mirror::api::Client::new(&with_target.api)?;
        let d = Downloader::new(&with_target, store.clone(), client)?;
        let (u, l, n) = (uid.to_string(), link.to_string(), now_rfc3339());
        let job = store
            .call(move |c| {
                downloads::request(c, &u, &l, "whole.zip", &n)?;
                downloads::get(c, &u)
            })
            .await?;
        let t = Instant::now();
        let done = d
            .download(job.expect("queued"))
            .await
            .map_err(anyhow::Error::msg)?;
        let whole = t.elapsed().as_secs_f64();
        anyhow::ensure!(
            done.path
                .to_string_lossy()
                .starts_with("s3://bench/archives/"),
            "{}",
            done.path.display()
        );
        Ok((ours, boto, whole))
    }
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
