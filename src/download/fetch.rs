//! One download attempt: resume the partial file with `Range`, stream the rest to
//! disk on a writer thread (hashing as it writes), check length and archive, then
//! fsync and rename into place.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};
use sha2::{Digest, Sha256};

use crate::api::client::endpoint;

/// Where unfinished archives live, inside the downloads directory.
pub const PARTIAL_DIR: &str = ".partial";

/// A verified archive in its final place.
#[derive(Debug, Clone)]
pub struct Done {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

pub struct Target {
    pub final_path: PathBuf,
    pub partial_path: PathBuf,
}

#[derive(Debug)]
pub enum Failure {
    /// Storage refused the link (403/404/410): ask the API for a fresh one.
    Link(String),
    /// Anything another attempt may fix; the partial file is kept when it is good.
    Retry(String),
    /// The link leads where the mirror may not fetch from (`download::guard`).
    Refused(String),
    /// Not enough disk space: tried again later, however many times, until there is.
    Space(String),
    /// Past `downloads.max_archive_bytes`, or a download without a length that
    /// ran free space under `downloads.min_free`: a failed download, its partial
    /// file deleted (`exports download UID` tries again).
    Limit(String),
}

/// How far a download may go (SPEC §6).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `downloads.max_archive_bytes`.
    pub max_bytes: u64,
    /// `downloads.min_free`, watched while a download without a length streams in.
    pub min_free: u64,
}

/// How often free space is looked at while a download without a length streams in.
const FREE_CHECK_EVERY: u64 = 8 << 20;

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Link(m)
            | Failure::Retry(m)
            | Failure::Refused(m)
            | Failure::Space(m)
            | Failure::Limit(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Failure {}

fn retry(e: impl std::fmt::Display) -> Failure {
    Failure::Retry(e.to_string())
}

pub async fn attempt(
    http: &reqwest::Client,
    url: &str,
    target: &Target,
    limits: Limits,
    guard: Option<bool>,
    progress: &(dyn Fn(u64, Option<u64>) + Sync),
) -> Result<Done, Failure> {
    let url = reqwest::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| Failure::Link("the download link is not an http(s) URL".into()))?;
    let ep = endpoint(&url);
    let partial_dir = target
        .partial_path
        .parent()
        .expect("partial file in a directory");
    fs::create_dir_all(partial_dir)
        .map_err(|e| retry(format!("creating {}: {e}", partial_dir.display())))?;

    // A previous attempt may have put the archive in place and stopped before recording it.
    if target.final_path.exists() && !target.partial_path.exists() {
        let path = target.final_path.clone();
        let checked = tokio::task::spawn_blocking(move || recheck(&path))
            .await
            .map_err(retry)?;
        match checked {
            Ok(done) => return Ok(done),
            Err(e) => {
                tracing::warn!(path = %target.final_path.display(), "an earlier copy does not check out, downloading again: {e}");
                fs::remove_file(&target.final_path).map_err(retry)?;
            }
        }
    }

    let mut offset = fs::metadata(&target.partial_path)
        .map(|m| m.len())
        .unwrap_or(0);
    let mut req = http.get(url.clone());
    if offset > 0 {
        req = req.header(RANGE, format!("bytes={offset}-"));
    }
    let resp = req.send().await.map_err(|e| {
        let why = format!("storage request to {ep} failed: {}", chain(&e));
        // a refused host or redirect hop (download::guard) will not change on its own
        match why.contains("refusing the storage") {
            true => Failure::Refused(why),
            false => retry(why),
        }
    })?;
    // the address actually connected to, whatever a name resolved to before
    if let (Some(allow_private), Some(addr)) = (guard, resp.remote_addr())
        && let Some(why) = super::guard::refused(addr.ip(), allow_private)
    {
        return Err(Failure::Refused(format!(
            "refusing the storage host {}: the connection reached {}, {why}",
            url.host_str().unwrap_or("?"),
            addr.ip()
        )));
    }
    let status = resp.status();
    match status {
        StatusCode::PARTIAL_CONTENT => {
            let start = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(range_start);
            if start != Some(offset) {
                truncate(&target.partial_path)?;
                return Err(retry(format!(
                    "storage answered a different range than asked at {ep}; starting over"
                )));
            }
        }
        StatusCode::OK => {
            if offset > 0 {
                tracing::info!(endpoint = %ep, "storage ignored Range; downloading from the start");
                truncate(&target.partial_path)?;
                offset = 0;
            }
        }
        StatusCode::RANGE_NOT_SATISFIABLE => {
            truncate(&target.partial_path)?;
            return Err(retry(format!(
                "storage could not resume at byte {offset} ({ep}); starting over"
            )));
        }
        StatusCode::FORBIDDEN | StatusCode::NOT_FOUND | StatusCode::GONE => {
            return Err(Failure::Link(format!(
                "storage refused the link ({} at {ep}); it may have expired",
                status.as_u16()
            )));
        }
        s => {
            return Err(retry(format!(
                "storage answered HTTP {} at {ep}",
                s.as_u16()
            )));
        }
    }
    let total = resp.content_length().map(|n| n.saturating_add(offset));
    if let Some(t) = total.filter(|t| *t > limits.max_bytes) {
        truncate(&target.partial_path)?;
        return Err(Failure::Limit(format!(
            "the archive is {t} bytes, more than downloads.max_archive_bytes ({}); refused ({ep})",
            limits.max_bytes
        )));
    }
    let free_space = || {
        rustix::fs::statvfs(partial_dir)
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
            .map_err(|e| {
                retry(format!(
                    "checking free space in {}: {e}",
                    partial_dir.display()
                ))
            })
    };
    if let Some(need) = resp.content_length() {
        let free = free_space()?;
        if free < need {
            return Err(Failure::Space(format!(
                "not enough free space in {}: the archive needs {need} more bytes, {free} are available",
                partial_dir.display()
            )));
        }
    }

    // The network side reads; a blocking thread hashes and writes.
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
    let path = target.partial_path.clone();
    let writer = tokio::task::spawn_blocking(move || write_partial(&path, offset, rx));
    let mut body = resp.bytes_stream();
    let mut got = offset;
    let mut broke = None;
    let mut limit = None;
    let mut free_checked = offset;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(b) => {
                got = got.saturating_add(b.len() as u64);
                crate::metrics::METRICS
                    .download_bytes
                    .inc_by(b.len() as u64);
                if got > limits.max_bytes {
                    limit = Some(format!(
                        "the archive ran past downloads.max_archive_bytes ({}) without announcing its length ({ep}); stopped and its partial file deleted",
                        limits.max_bytes
                    ));
                    break;
                }
                if total.is_none() && got - free_checked >= FREE_CHECK_EVERY {
                    free_checked = got;
                    let free = free_space()?;
                    if free < limits.min_free {
                        limit = Some(format!(
                            "free space in {} fell to {free} bytes, under downloads.min_free ({}), after {got} bytes of an archive of unannounced length ({ep}); stopped and its partial file deleted",
                            partial_dir.display(),
                            limits.min_free
                        ));
                        break;
                    }
                }
                if tx.send(b).await.is_err() {
                    break; // the writer failed; its error is below
                }
                progress(got, total);
            }
            Err(e) => {
                broke = Some(chain(&e));
                break;
            }
        }
    }
    drop(tx);
    if let Some(why) = limit {
        let _ = writer.await;
        truncate(&target.partial_path)?;
        return Err(Failure::Limit(why));
    }
    let (written, hasher) = writer.await.map_err(retry)?.map_err(|e| {
        let why = format!("writing {}: {e}", target.partial_path.display());
        match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Failure::Space(why),
            _ => retry(why),
        }
    })?;
    if let Some(e) = broke {
        return Err(retry(format!(
            "the connection broke after {written} of {} bytes ({ep}): {e}; resuming",
            total.map_or("?".into(), |t| t.to_string())
        )));
    }
    if let Some(t) = total
        && written != t
    {
        if written > t {
            truncate(&target.partial_path)?;
        }
        return Err(retry(format!(
            "storage sent {written} bytes where {t} were announced ({ep})"
        )));
    }
    let sha256 = hex::encode(hasher.finalize());
    let (partial, fin) = (target.partial_path.clone(), target.final_path.clone());
    tokio::task::spawn_blocking(move || publish(&partial, &fin))
        .await
        .map_err(retry)??;
    Ok(Done {
        path: target.final_path.clone(),
        bytes: written,
        sha256,
    })
}

/// Appends what arrives to the partial file, hashing the bytes already there first.
fn write_partial(
    path: &Path,
    offset: u64,
    mut rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
) -> io::Result<(u64, Sha256)> {
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    let (_, mut hasher) = hash_file(path, offset)?;
    // Writeback starts while the download goes on, so the final fsync has little left to do.
    let (kick, kicks) = std::sync::mpsc::sync_channel::<()>(1);
    let syncer = file.try_clone()?;
    let background = std::thread::spawn(move || {
        while kicks.recv().is_ok() {
            let _ = syncer.sync_data();
        }
    });
    let mut out = BufWriter::with_capacity(1 << 20, &mut file);
    let mut written = offset;
    let mut unsynced = 0u64;
    while let Some(chunk) = rx.blocking_recv() {
        hasher.update(&chunk);
        out.write_all(&chunk)?;
        written += chunk.len() as u64;
        unsynced += chunk.len() as u64;
        if unsynced >= SYNC_EVERY {
            out.flush()?;
            let _ = kick.try_send(()); // skipped while the last one still runs
            unsynced = 0;
        }
    }
    out.flush()?;
    drop(kick);
    let _ = background.join();
    Ok((written, hasher))
}

/// How much is written between background writeback kicks.
const SYNC_EVERY: u64 = 64 << 20;

/// The SHA-256 state after the first `limit` bytes of a file, and how many there were.
pub(super) fn hash_file(path: &Path, limit: u64) -> io::Result<(u64, Sha256)> {
    let mut hasher = Sha256::new();
    let mut file = File::open(path)?.take(limit);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((total, hasher));
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

/// Checks the archive, then makes it durable and visible: fsync, rename, fsync the directory.
fn publish(partial: &Path, fin: &Path) -> Result<(), Failure> {
    // The check reads from the page cache while the disk catches up: side by side.
    let (checked, synced) = std::thread::scope(|s| {
        let sync = s.spawn(|| File::open(partial).and_then(|f| f.sync_all()));
        let checked = check_archive(partial);
        (
            checked,
            sync.join()
                .unwrap_or_else(|_| Err(io::Error::other("fsync thread panicked"))),
        )
    });
    if let Err(e) = checked {
        let _ = fs::remove_file(partial);
        return Err(retry(format!(
            "the archive is corrupt ({e}); downloading it again"
        )));
    }
    let io = |what: &str, e: io::Error| retry(format!("{what} {}: {e}", fin.display()));
    synced.map_err(|e| io("syncing", e))?;
    fs::rename(partial, fin).map_err(|e| io("moving into place", e))?;
    if let Some(dir) = fin.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing the directory of", e))?;
    }
    Ok(())
}

/// Why an archive on disk does not check out.
#[derive(Debug, thiserror::Error)]
pub enum BadArchive {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a readable zip: {0}")]
    NotZip(#[source] zip::result::ZipError),
    #[error("entry {entry}: {source}")]
    Entry {
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("entry #{index}: {source}")]
    Unreadable {
        index: usize,
        #[source]
        source: zip::result::ZipError,
    },
}

/// A zip (by its magic or its name) must open and read through: every entry's CRC is checked.
fn check_archive(path: &Path) -> Result<(), BadArchive> {
    let mut magic = [0u8; 4];
    let n = File::open(path).and_then(|mut f| f.read(&mut magic))?;
    let is_zip = magic[..n].starts_with(b"PK")
        || path.to_string_lossy().ends_with(".zip.partial")
        || path.extension().is_some_and(|e| e == "zip");
    if !is_zip {
        return Ok(());
    }
    let file = File::open(path)?;
    let mut zip = zip::ZipArchive::new(io::BufReader::new(file)).map_err(BadArchive::NotZip)?;
    for index in 0..zip.len() {
        let mut entry = zip
            .by_index(index)
            .map_err(|source| BadArchive::Unreadable { index, source })?;
        let name = entry
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| format!("#{index}"));
        io::copy(&mut entry, &mut io::sink()).map_err(|source| BadArchive::Entry {
            entry: name,
            source,
        })?;
    }
    Ok(())
}

/// Re-reads an archive already in place: checked and hashed, as if just downloaded.
fn recheck(path: &Path) -> Result<Done, BadArchive> {
    check_archive(path)?;
    let (bytes, hasher) = hash_file(path, u64::MAX)?;
    Ok(Done {
        path: path.to_path_buf(),
        bytes,
        sha256: hex::encode(hasher.finalize()),
    })
}

fn truncate(path: &Path) -> Result<(), Failure> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(retry(format!("removing {}: {e}", path.display())))
        }
        _ => Ok(()),
    }
}

/// `bytes 100-199/200` → 100.
fn range_start(v: &str) -> Option<u64> {
    v.trim()
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// An error with its causes, without the URL (its query may hold a signature).
fn chain(e: &reqwest::Error) -> String {
    let mut out = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else {
        "transfer failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_start() {
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
        assert_eq!(range_start("bytes */200"), None);
    }

    #[test]
    fn a_corrupt_zip_is_caught_by_its_crc() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.zip");
        let mut w = zip::ZipWriter::new(File::create(&path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        w.start_file("data.bin", opts).unwrap();
        w.write_all(&[7u8; 4096]).unwrap();
        w.finish().unwrap();
        assert!(check_archive(&path).is_ok());
        let mut bytes = fs::read(&path).unwrap();
        bytes[100] ^= 0xff; // inside the stored entry's data
        fs::write(&path, &bytes).unwrap();
        let err = check_archive(&path).unwrap_err().to_string();
        assert!(err.contains("data.bin"), "{err}");
    }
}
