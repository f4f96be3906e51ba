//! Export archives to disk (SPEC §5): a queue in the `downloads` table worked
//! `downloads.concurrency` at a time; each download streams to `<dir>/.partial/`,
//! resumes with `Range`, refreshes an expired link through the API, checks length,
//! archive and SHA-256, then is fsynced and renamed into `<dir>`. Storage links are
//! presigned: the storage client never carries the API key.

pub mod bucket;
mod fetch;
pub mod guard;

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::api::{Client, Priority, json_value, v1};
use crate::config::Config;
use crate::error::ApiError;
use crate::store::Store;
use crate::store::downloads::Job;

pub use fetch::{Done, PARTIAL_DIR};

/// Attempts in a row without progress before a download is marked `failed` (one
/// that ends in a link refresh counts).
pub const MAX_ATTEMPTS: u32 = 5;
/// How often `run` looks for newly queued downloads.
const POLL: Duration = Duration::from_secs(1);

/// Called as bytes arrive: (export uid, bytes on disk, total when known).
pub type ProgressFn = Arc<dyn Fn(&str, u64, Option<u64>) + Send + Sync>;

/// Why a download did not end with the archive in place; each says whether
/// it comes again by itself.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// Given up (refused, past the limits, or no progress in [`MAX_ATTEMPTS`]):
    /// `failed` until `exports download UID` tries again.
    #[error("{error}")]
    Failed {
        error: String,
        #[source]
        cause: fetch::Failure,
    },
    /// The disk lacks space: tried again by itself, later.
    #[error("{0}")]
    WaitingForSpace(String),
    /// The queue could not be read or written: tried again next time.
    #[error("local database error: {0}")]
    Store(#[from] crate::store::Error),
}

/// How one download ended.
#[derive(Debug)]
pub struct Finished {
    pub export_uid: String,
    pub result: Result<Done, DownloadError>,
}

#[derive(Clone)]
pub struct Downloader {
    store: Store,
    api: Arc<Client>,
    /// For storage only: follows redirects, never carries the API key.
    http: reqwest::Client,
    dir: PathBuf,
    allow_private: bool,
    /// Requests go through `downloads.proxy`: the connected address is the
    /// proxy's, so the link's host is checked by its own resolution instead.
    proxied: bool,
    limits: fetch::Limits,
    concurrency: usize,
    backoff: (Duration, Duration),
    /// After a failure for lack of disk space: the first wait, and the longest.
    space_wait: (Duration, Duration),
    progress: Option<ProgressFn>,
    /// `downloads.target`: archives are uploaded there, not kept in `dir`.
    bucket: Option<bucket::Bucket>,
}

/// A download that met a full disk is tried again after a minute, then after
/// twice as long each time, at most an hour apart: without a person, and
/// without hammering a disk that stays full.
const SPACE_WAIT: (Duration, Duration) = (Duration::from_secs(60), Duration::from_secs(3600));

impl Downloader {
    pub fn new(cfg: &Config, store: Store, api: Arc<Client>) -> anyhow::Result<Downloader> {
        let allow_private = cfg.downloads.allow_private;
        // no proxy from the environment: the guard must see where requests go
        let builder = match &cfg.downloads.proxy {
            Some(p) => reqwest::Client::builder().proxy(reqwest::Proxy::all(p.as_str())?),
            None => reqwest::Client::builder().no_proxy(),
        };
        let http = builder
            .redirect(guard::redirect_policy(allow_private))
            .dns_resolver(guard::resolver(allow_private))
            .connect_timeout(cfg.api.timeout.min(Duration::from_secs(10)))
            .read_timeout(cfg.api.timeout)
            .user_agent(concat!("avala-mirror/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Downloader {
            store,
            api,
            http,
            dir: cfg.downloads.dir.clone(),
            allow_private,
            proxied: cfg.downloads.proxy.is_some(),
            limits: fetch::Limits {
                max_bytes: cfg.downloads.max_archive_bytes,
                min_free: cfg.downloads.min_free,
            },
            concurrency: cfg.downloads.concurrency.max(1) as usize,
            backoff: (cfg.api.backoff_min, cfg.api.backoff_max),
            space_wait: SPACE_WAIT,
            progress: None,
            bucket: match &cfg.downloads.target {
                Some(t) => Some(bucket::Bucket::open(t).map_err(anyhow::Error::msg)?),
                None => None,
            },
        })
    }

    /// Other waits after a full disk than [`SPACE_WAIT`] (the tests').
    pub fn with_space_wait(mut self, first: Duration, longest: Duration) -> Downloader {
        self.space_wait = (first, longest);
        self
    }

    pub fn with_progress(mut self, progress: ProgressFn) -> Downloader {
        self.progress = Some(progress);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every queued download to its end (`sync`): downloaded or failed.
    pub async fn drain(&self) -> Vec<Finished> {
        self.dispatch(None).await
    }

    /// Picks up queued downloads as they appear until `shutdown` (`run`). A download
    /// in flight is dropped at shutdown; its partial file resumes on the next start.
    pub async fn serve(&self, shutdown: watch::Receiver<bool>) {
        self.dispatch(Some(shutdown)).await;
    }

    async fn dispatch(&self, mut shutdown: Option<watch::Receiver<bool>>) -> Vec<Finished> {
        self.abort_unfinished().await;
        let mut running: JoinSet<Finished> = JoinSet::new();
        let mut active: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut finished = Vec::new();
        loop {
            if shutdown.as_ref().is_some_and(|s| *s.borrow()) {
                running.shutdown().await;
                break;
            }
            if running.len() < self.concurrency {
                match self.store.downloads_due().await {
                    Ok(due) => {
                        let busy: HashSet<&String> = active.values().collect();
                        let free = self.concurrency - running.len();
                        let new: Vec<Job> = due
                            .into_iter()
                            .filter(|j| !busy.contains(&j.export_uid))
                            .take(free)
                            .collect();
                        for job in new {
                            let uid = job.export_uid.clone();
                            let this = self.clone();
                            let handle = running.spawn(async move {
                                let export_uid = job.export_uid.clone();
                                let result = this.download(job).await;
                                Finished { export_uid, result }
                            });
                            active.insert(handle.id(), uid);
                        }
                    }
                    Err(e) => tracing::error!("reading the download queue: {e}"),
                }
            }
            if running.is_empty() && shutdown.is_none() {
                break;
            }
            let poll = async {
                match shutdown.as_mut() {
                    Some(s) => {
                        let _ = tokio::time::timeout(POLL, s.changed()).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(done) = running.join_next_with_id() => match done {
                    Ok((id, f)) => {
                        active.remove(&id);
                        finished.push(f);
                    }
                    Err(e) => {
                        let uid = active.remove(&e.id()).unwrap_or_default();
                        tracing::error!(export = %uid, "download task ended abnormally: {e}");
                    }
                },
                _ = poll => {}
            }
        }
        finished
    }

    /// One download to its end, attempts and link refreshes included. The outcome
    /// (row and event) is in the database when this returns.
    pub async fn download(&self, job: Job) -> Result<Done, DownloadError> {
        let uid = job.export_uid.clone();
        let name = safe_stored_name(&job);
        let target = fetch::Target {
            final_path: self.dir.join(&name),
            partial_path: self.dir.join(PARTIAL_DIR).join(format!("{name}.partial")),
        };
        let mut url = job.url.clone();
        // Attempts in a row that added nothing to the partial file: an attempt that
        // made progress (a long download over a flaky link) does not count against it.
        let mut stalled = 0u32;
        let partial_len = || std::fs::metadata(&target.partial_path).map_or(0, |m| m.len());
        loop {
            let before = partial_len();
            let attempts = self.store.download_attempt(&uid).await?;
            let progress = self.progress.clone();
            let on_bytes = |got: u64, total: Option<u64>| {
                if let Some(p) = &progress {
                    p(&uid, got, total)
                }
            };
            let result = match self.check_link(&url).await {
                Ok(()) => {
                    let guard = (!self.proxied).then_some(self.allow_private);
                    fetch::attempt(&self.http, &url, &target, self.limits, guard, &on_bytes).await
                }
                Err(f) => Err(f),
            };
            let result = match (result, &self.bucket) {
                (Ok(done), Some(b)) => self.upload(b, &uid, done).await,
                (result, _) => result,
            };
            let failure = match result {
                Ok(done) => {
                    let path = done.path.to_string_lossy();
                    self.store
                        .download_complete(&uid, &path, done.bytes, &done.sha256)
                        .await?;
                    tracing::info!(export = %uid, path = %done.path.display(), bytes = done.bytes, "export downloaded");
                    export_event_counted();
                    return Ok(done);
                }
                Err(f) => f,
            };
            if let fetch::Failure::Space(why) = &failure {
                // a download never holds the disk full while it waits for space
                let _ = std::fs::remove_file(&target.partial_path);
                return self.wait_for_space(&uid, why, attempts).await;
            }
            let mut error = failure.to_string();
            stalled = if partial_len() > before {
                0
            } else {
                stalled + 1
            };
            // a link that may not be fetched from, or an archive past the
            // limits, is not fetched again
            let mut give_up = stalled >= MAX_ATTEMPTS
                || matches!(
                    failure,
                    fetch::Failure::Refused(_) | fetch::Failure::Limit(_)
                );
            let mut link_changed = false;
            if matches!(failure, fetch::Failure::Link(_)) && !give_up {
                match self.refresh(&uid).await {
                    Ok(fresh) => {
                        link_changed = fresh != url;
                        url = fresh;
                        let _ = self.store.download_set_url(&uid, &url).await;
                    }
                    Err(Refresh::Gone(why)) => {
                        error = format!("{error}; {why}");
                        give_up = true;
                    }
                    Err(Refresh::Failed(why)) => {
                        error = format!("{error}; refreshing the link: {why}")
                    }
                }
            }
            if give_up {
                tracing::error!(export = %uid, attempts, "download failed: {error}");
                crate::metrics::METRICS.download_failures.inc();
                export_event_counted();
                self.store.download_fail(&uid, &error).await?;
                return Err(DownloadError::Failed {
                    error,
                    cause: failure,
                });
            }
            tracing::warn!(export = %uid, attempts, "download attempt failed, will retry: {error}");
            let _ = self.store.download_attempt_failed(&uid, &error).await;
            if !link_changed {
                tokio::time::sleep(self.delay(stalled.max(1))).await;
            }
        }
    }

    /// Publishes a verified archive to `downloads.target`, then removes the
    /// local copy; the multipart upload's id is in the row while it goes.
    async fn upload(
        &self,
        b: &bucket::Bucket,
        uid: &str,
        done: Done,
    ) -> Result<Done, fetch::Failure> {
        let name = done
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let started = |u: Option<bucket::Unfinished>| async move {
            let r = self
                .store
                .download_set_upload(uid, u.map(|u| (u.key, u.id)))
                .await;
            if let Err(e) = r {
                tracing::warn!(export = %uid, "recording the upload: {e}");
            }
        };
        match b.upload(&done.path, &name, &done.sha256, started).await {
            Ok(url) => {
                if let Err(e) = tokio::fs::remove_file(&done.path).await {
                    tracing::warn!(path = %done.path.display(), "removing the uploaded archive's local copy: {e}");
                }
                Ok(Done {
                    path: PathBuf::from(url),
                    ..done
                })
            }
            Err(bucket::UploadError::Refused(e)) => Err(fetch::Failure::Refused(e)),
            Err(bucket::UploadError::Retry(e)) => Err(fetch::Failure::Retry(e)),
        }
    }

    /// Aborts the multipart uploads a crash or stop left unfinished: nothing of
    /// them was ever visible, and they cost storage until aborted.
    async fn abort_unfinished(&self) {
        let Some(b) = &self.bucket else {
            return;
        };
        let left = match self.store.unfinished_uploads().await {
            Ok(left) => left,
            Err(e) => return tracing::warn!("reading unfinished uploads: {e}"),
        };
        for (uid, key, id) in left {
            tracing::info!(export = %uid, %key, "aborting an upload left unfinished");
            b.abort(&bucket::Unfinished { key, id }).await;
            let _ = self.store.download_set_upload(&uid, None).await;
        }
    }

    /// Whether the mirror may fetch from `url` (SPEC §6): an address in it is
    /// checked as it is; behind a proxy, its host's addresses too, since the
    /// proxy, not the guarded resolver, resolves it then.
    async fn check_link(&self, url: &str) -> Result<(), fetch::Failure> {
        let u = reqwest::Url::parse(url)
            .map_err(|e| fetch::Failure::Retry(format!("the download link is not a URL: {e}")))?;
        guard::check_url(&u, self.allow_private)
            .map_err(|refused| fetch::Failure::Refused(refused.to_string()))?;
        if let (true, Some(url::Host::Domain(host))) = (self.proxied, u.host()) {
            let name = host.parse().map_err(|_| {
                fetch::Failure::Refused(format!(
                    "refusing the storage host {host}: not a host name"
                ))
            })?;
            let resolving =
                reqwest::dns::Resolve::resolve(&*guard::resolver(self.allow_private), name);
            drop(
                resolving
                    .await
                    .map_err(|e| fetch::Failure::Refused(e.to_string()))?,
            );
        }
        Ok(())
    }

    /// The disk lacks space for the archive: it waits, longer each time (see
    /// [`SPACE_WAIT`]), and is then due again by itself. Not a failed download.
    async fn wait_for_space(
        &self,
        uid: &str,
        why: &str,
        attempts: u32,
    ) -> Result<Done, DownloadError> {
        let (first, longest) = self.space_wait;
        let wait = first
            .saturating_mul(1 << attempts.saturating_sub(1).min(16))
            .min(longest);
        let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now() + wait).to_string();
        let error = format!("{why}; waiting for space, next attempt at {at}");
        tracing::warn!(export = %uid, attempts, "download waits for disk space: {why}");
        self.store.download_wait_for_space(uid, &error, &at).await?;
        Err(DownloadError::WaitingForSpace(error))
    }

    /// Jittered exponential backoff between attempts.
    fn delay(&self, attempts: u32) -> Duration {
        let (min, max) = self.backoff;
        let exp = min
            .saturating_mul(1 << attempts.saturating_sub(1).min(16))
            .min(max);
        exp.mul_f64(rand::random_range(0.5..=1.0))
    }

    /// A fresh presigned link from `GET /exports/{uid}/` (the one call here that carries the key).
    async fn refresh(&self, uid: &str) -> Result<String, Refresh> {
        let url = v1::export(&self.api, uid);
        match self.api.fetch(&url, Priority::High, json_value).await {
            Ok(f) => match (
                f.value.get("download_url").and_then(Value::as_str),
                f.value.get("status"),
            ) {
                (Some(link), _) => Ok(link.to_string()),
                (None, status) => Err(Refresh::Gone(format!(
                    "the export is now {} and has no download link",
                    status.and_then(Value::as_str).unwrap_or("without a status")
                ))),
            },
            Err(ApiError::NotFound(_)) => {
                Err(Refresh::Gone("the export no longer exists (404)".into()))
            }
            Err(e) => Err(Refresh::Failed(e.to_string())),
        }
    }
}

/// `export.downloaded` / `export.download_failed` in the events metric.
fn export_event_counted() {
    let m = &crate::metrics::METRICS;
    m.events_emitted
        .get_or_create(&crate::metrics::label("resource", "exports"))
        .inc();
}

enum Refresh {
    /// No link will come: the export is gone or not exported any more.
    Gone(String),
    Failed(String),
}

/// The name an export's archive gets in the downloads directory:
/// `<name>_<uid>.<ext>`, from `[A-Za-z0-9._-]` only, never starting with a dot,
/// so no name from the API can leave the directory or hide in it.
pub fn file_name(uid: &str, name: Option<&str>, url: &str) -> String {
    fn clean(s: &str, max: usize) -> String {
        let mut out: String = s
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        out.truncate(max);
        let out = out.trim_matches(|c| c == '.' || c == '_');
        out.replace("..", "_")
    }
    let ext = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            let last = u.path_segments()?.next_back()?.to_string();
            let (_, ext) = last.rsplit_once('.')?;
            (!ext.is_empty() && ext.len() <= 8 && ext.chars().all(|c| c.is_ascii_alphanumeric()))
                .then(|| ext.to_ascii_lowercase())
        })
        .unwrap_or_else(|| "zip".into());
    // two uids that clean to the same text (`a/b`, `a?b`) keep apart by a hash
    let uid = match clean(uid, 64) {
        u if u == uid => u,
        u => {
            use sha2::Digest;
            let hash = hex::encode(&sha2::Sha256::digest(uid.as_bytes())[..4]);
            match u.is_empty() {
                true => format!("export-{hash}"),
                false => format!("{u}-{hash}"),
            }
        }
    };
    let stem = match name.map(|n| clean(n, 80)) {
        Some(n) if !n.is_empty() => format!("{n}_{uid}"),
        _ => uid,
    };
    format!("{stem}.{ext}")
}

/// The stored name, checked again: one plain path component or it is rebuilt.
fn safe_stored_name(job: &Job) -> String {
    let mut parts = Path::new(&job.file_name).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(_)), None) if !job.file_name.starts_with('.') => {
            job.file_name.clone()
        }
        _ => file_name(&job.export_uid, None, &job.url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_api_stay_inside_the_directory() {
        let url = "https://storage.example/exports/x.zip?sig=1";
        assert_eq!(
            file_name("880b-07", Some("Training Data Export"), url),
            "Training_Data_Export_880b-07.zip"
        );
        for hostile in [
            "../../etc/passwd",
            "/etc/cron.d/x",
            "..",
            ".hidden",
            "a/../../b",
            "C:\\x",
            "",
        ] {
            let n = file_name("u1", Some(hostile), "https://s/e.tar.gz");
            assert!(
                !n.contains('/') && !n.contains('\\') && !n.starts_with('.') && !n.contains(".."),
                "{hostile:?} gave {n:?}"
            );
            assert!(n.ends_with("u1.gz"), "{n}");
        }
        let n = file_name("../..", None, "https://s/e");
        assert!(n.starts_with("export-") && n.ends_with(".zip"), "{n}");
        // uids that clean to the same text never share a file
        let names: Vec<String> = ["a/b", "a?b", "a_b", "a b"]
            .iter()
            .map(|u| file_name(u, Some("Export"), "https://s/e.zip"))
            .collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert_eq!(file_name("u", None, "https://s/e.php%2F..%2Fx"), "u.zip");
        let job = Job {
            export_uid: "u".into(),
            url: "https://s/a.zip".into(),
            file_name: "../escape.zip".into(),
            attempts: 0,
        };
        assert_eq!(safe_stored_name(&job), "u.zip");
    }
}
