//! `exports list | download | create`: the export flow users script by hand today.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::api::{Client, Priority, json_value, v1};
use crate::config::Config;
use crate::download::{self, Downloader, ProgressFn};
use crate::error::{EXIT_OK, EXIT_WORK_FAILED};
use crate::store::lock::{LockError, Locked, WriterLock};
use crate::store::{Store, downloads, now_rfc3339};

/// Byte progress bars, one per download, when stderr is a terminal.
pub fn bars() -> Option<ProgressFn> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let multi = MultiProgress::new();
    let bars: Mutex<HashMap<String, ProgressBar>> = Mutex::new(HashMap::new());
    let style = ProgressStyle::with_template(
        "{msg:.bold} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .expect("static template");
    Some(Arc::new(move |uid: &str, got: u64, total: Option<u64>| {
        let mut bars = bars.lock().expect("bars lock");
        let bar = bars.entry(uid.to_string()).or_insert_with(|| {
            let b = multi.add(ProgressBar::new(total.unwrap_or(0)).with_style(style.clone()));
            b.set_message(uid.chars().take(8).collect::<String>());
            b
        });
        if let Some(t) = total {
            bar.set_length(t);
        }
        bar.set_position(got);
        if total == Some(got) {
            bar.finish_and_clear();
        }
    }))
}

/// Read-only (see [`crate::store::ReadOnly`]): no key, no migration, no file written.
pub async fn list(at: &crate::store::Location, as_json: bool) -> anyhow::Result<u8> {
    let rows = crate::store::ReadOnly::open(at).await?.exports().await?;
    if as_json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(EXIT_OK);
    }
    if rows.is_empty() {
        println!("no exports in the mirror (run `avala-mirror sync`)");
        return Ok(EXIT_OK);
    }
    println!(
        "{:<36}  {:<10}  {:<11}  {:>12}  {:<24}  path",
        "uid", "status", "download", "bytes", "name"
    );
    for r in rows {
        let name: String = r.name.unwrap_or_default().chars().take(24).collect();
        let place = match (&r.path, &r.error) {
            (Some(p), _) => p.clone(),
            (None, Some(e)) => format!("({e})"),
            _ => String::new(),
        };
        println!(
            "{:<36}  {:<10}  {:<11}  {:>12}  {:<24}  {place}",
            r.uid,
            r.status.as_deref().unwrap_or("-"),
            r.download_status.as_deref().unwrap_or("-"),
            r.bytes.map(|b| b.to_string()).unwrap_or_default(),
            name,
        )
    }
    Ok(EXIT_OK)
}

/// `exports download UID`: a fresh link from the API, then the same download path
/// the daemon uses (resume, checks, rename, row and event). Beside a running
/// daemon, the daemon does the download and this follows it.
pub async fn download(cfg: &Config, uid: &str) -> anyhow::Result<u8> {
    let who = Downloads::take(cfg).await?;
    let (store, client) = open(cfg).await?;
    let export = get_export(&client, uid).await?;
    fetch_archive(cfg, &store, &client, &export, who).await
}

/// Who downloads: this process (holding the mirror's writer lock), or the
/// daemon that holds it, through its queue.
enum Downloads {
    /// The lock is held until the download has ended.
    Here {
        _lock: WriterLock,
    },
    Daemon(Locked),
}

impl Downloads {
    async fn take(cfg: &Config) -> anyhow::Result<Downloads> {
        match WriterLock::acquire_at(&cfg.location(), "exports download").await {
            Ok(lock) => Ok(Downloads::Here { _lock: lock }),
            Err(LockError::Locked(l)) if l.is_daemon => Ok(Downloads::Daemon(l)),
            Err(e) => Err(e.into()),
        }
    }
}

/// How long a download handed to the daemon may wait for it to start before
/// this command stops following (it stays queued).
const PICKUP_WAIT: Duration = Duration::from_secs(60);

/// Follows a download the daemon does, until it ends (or has not started after
/// [`PICKUP_WAIT`]).
async fn follow(store: &Store, uid: &str, daemon: &Locked) -> anyhow::Result<u8> {
    println!(
        "the running daemon ({}) downloads export {uid}; following it",
        daemon.holder
    );
    let queued = tokio::time::Instant::now();
    let mut last = String::new();
    loop {
        let u = uid.to_string();
        let Some((status, path, bytes, sha256, error)) = store.download_outcome(&u).await? else {
            bail!("the download of export {uid} is no longer queued");
        };
        if status != last {
            println!("  {status}");
            last.clone_from(&status);
        }
        match status.as_str() {
            downloads::DOWNLOADED => {
                println!(
                    "downloaded {} ({} bytes, sha256 {})",
                    path.unwrap_or_default(),
                    bytes.unwrap_or_default(),
                    sha256.unwrap_or_default()
                );
                return Ok(EXIT_OK);
            }
            downloads::FAILED => {
                eprintln!(
                    "error: downloading export {uid}: {}",
                    error.unwrap_or_default()
                );
                return Ok(EXIT_WORK_FAILED);
            }
            downloads::PENDING if queued.elapsed() > PICKUP_WAIT => {
                println!(
                    "still queued behind other downloads after {}s; the daemon will download it (see `avala-mirror exports list`)",
                    PICKUP_WAIT.as_secs()
                );
                return Ok(EXIT_OK);
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

pub struct CreateArgs {
    pub name: Option<String>,
    pub format: String,
    pub datasets: Vec<String>,
    pub projects: Vec<String>,
    pub slices: Vec<String>,
    pub wait: bool,
    pub download: bool,
    pub poll: Duration,
}

/// `exports create`: POST, then (with --wait or --download) follow its status.
pub async fn create(cfg: &Config, a: CreateArgs) -> anyhow::Result<u8> {
    if a.datasets.is_empty() && a.projects.is_empty() && a.slices.is_empty() {
        bail!("nothing to export: give at least one --dataset, --project or --slice");
    }
    let who = if a.download {
        Some(Downloads::take(cfg).await?)
    } else {
        None
    };
    let (store, client) = open(cfg).await?;
    let name = a
        .name
        .unwrap_or_else(|| format!("avala-mirror {}", now_rfc3339()));
    let body = json!({
        "name": name, "format": a.format, "datasets": a.datasets,
        "projects": a.projects, "slices": a.slices,
    });
    let created = client
        .post(&v1::exports(&client), &body, json_value)
        .await
        .context("creating the export")?;
    let uid = created
        .get("uid")
        .and_then(Value::as_str)
        .context("the API answered without an export uid")?
        .to_string();
    println!("created export {uid} ({name}, {})", a.format);
    if !(a.wait || a.download) {
        return Ok(EXIT_OK);
    }
    let mut last = String::new();
    let export = loop {
        let export = get_export(&client, &uid).await?;
        let status = export["status"].as_str().unwrap_or("?").to_string();
        let progress = match (
            export["exported_task_count"].as_u64(),
            export["total_task_count"].as_u64(),
        ) {
            (Some(done), Some(total)) => format!(" ({done}/{total} tasks)"),
            _ => String::new(),
        };
        let line = format!("{status}{progress}");
        if line != last {
            println!("  {line}");
            last = line;
        }
        match status.as_str() {
            "exported" => break export,
            "failed" | "aborted" => {
                eprintln!("error: export {uid} ended {status}");
                return Ok(EXIT_WORK_FAILED);
            }
            _ => tokio::time::sleep(a.poll).await,
        }
    };
    if let Some(who) = who {
        return fetch_archive(cfg, &store, &client, &export, who).await;
    }
    if let Some(link) = export["download_url"].as_str() {
        println!("download link: {link}");
    }
    Ok(EXIT_OK)
}

async fn open(cfg: &Config) -> anyhow::Result<(Store, Arc<Client>)> {
    let store = Store::open_config(cfg).await?;
    let client = Client::new(&cfg.api).context("building the HTTP client")?;
    Ok((store, client))
}

async fn get_export(client: &Client, uid: &str) -> anyhow::Result<Value> {
    client
        .fetch(&v1::export(client, uid), Priority::High, json_value)
        .await
        .map(|f| f.value)
        .with_context(|| format!("reading export {uid}"))
}

async fn fetch_archive(
    cfg: &Config,
    store: &Store,
    client: &Arc<Client>,
    export: &Value,
    who: Downloads,
) -> anyhow::Result<u8> {
    let uid = export["uid"]
        .as_str()
        .context("the export has no uid")?
        .to_string();
    let Some(link) = export["download_url"].as_str().map(str::to_owned) else {
        bail!(
            "export {uid} is {} and has no download link yet",
            export["status"].as_str().unwrap_or("without a status")
        );
    };
    let name = download::file_name(&uid, export["name"].as_str(), &link);
    let job = store.request_download(&uid, &link, &name).await?;
    let job = match job {
        Ok(job) => job,
        Err(path) => {
            println!("already downloaded: {path}");
            return Ok(EXIT_OK);
        }
    };
    if let Downloads::Daemon(daemon) = &who {
        return follow(store, &uid, daemon).await;
    }
    let mut d = Downloader::new(cfg, store.clone(), client.clone())?;
    if let Some(p) = bars() {
        d = d.with_progress(p);
    }
    match d.download(job).await {
        Ok(done) => {
            println!(
                "downloaded {} ({} bytes, sha256 {})",
                done.path.display(),
                done.bytes,
                done.sha256
            );
            Ok(EXIT_OK)
        }
        Err(e) => {
            eprintln!("error: downloading export {uid}: {e}");
            Ok(EXIT_WORK_FAILED)
        }
    }
}
