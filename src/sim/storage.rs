//! The simulator's storage address: export archives behind presigned links, as a
//! bucket serves them. Links carry a version and a signature; rotating an export's
//! link (a storage fault, or the world's ticking) makes the old one answer 403, as an
//! expired presigned URL does. Range requests are answered with 206. Archives are
//! real zips, made deterministically from the seed on first request and kept in a
//! temporary directory, so a 1 GiB archive costs disk, not memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::OnceCell;

use super::SimState;
use super::world::mix;

/// One request the storage address received.
#[derive(Debug, Clone)]
pub struct StorageLogged {
    pub at: Instant,
    pub path: String,
    pub query: String,
    pub range: Option<String>,
    /// Whether the request carried `X-Avala-Api-Key` (it never should).
    pub api_key: bool,
    pub status: u16,
}

/// Storage fault knobs.
#[derive(Debug, Default, Clone)]
pub struct StorageFaults {
    /// Cut the connection after this many body bytes…
    pub drop_after: Option<u64>,
    /// …in this many responses.
    pub drops: u32,
    /// Answer every request with the whole archive (200), ignoring `Range`.
    pub ignore_range: bool,
    /// The next N requests answer 404 (`u32::MAX`: always).
    pub not_found: u32,
    /// The next N requests find their link expired (403) and rotate it.
    pub expire: u32,
    /// A pause before each 256 KiB of body.
    pub slow: std::time::Duration,
    /// Answer `/exports/…` with a 302 to the same archive under `/blobs/…`.
    pub redirect: bool,
    /// Answer `/exports/…` with a 302 to this URL (a hostile or broken storage).
    pub redirect_to: Option<String>,
    /// Announce an archive of this many bytes and send none of it (a download
    /// larger than the disk has room for).
    pub claim_length: Option<u64>,
    /// Send bytes without end and without a length (a broken or hostile storage).
    pub endless: bool,
    pub log: Vec<StorageLogged>,
    /// Archive bodies being sent right now, and the most there were at once.
    pub in_flight: usize,
    pub max_in_flight: usize,
}

/// The archives, made on first request.
pub struct Archives {
    dir: tempfile::TempDir,
    size: u64,
    seed: u64,
    made: Mutex<HashMap<String, Arc<OnceCell<PathBuf>>>>,
}

impl Archives {
    pub fn new(size: u64, seed: u64) -> io::Result<Archives> {
        Ok(Archives {
            dir: tempfile::Builder::new()
                .prefix("avala-sim-storage")
                .tempdir()?,
            size,
            seed,
            made: Mutex::new(HashMap::new()),
        })
    }

    /// The archive of one export (made now if it was not yet).
    pub async fn path(&self, uid: &str, export_json: serde_json::Value) -> io::Result<PathBuf> {
        let cell = self
            .made
            .lock()
            .expect("archives lock")
            .entry(uid.to_string())
            .or_default()
            .clone();
        let path = self.dir.path().join(format!("{uid}.zip"));
        let (size, seed) = (self.size, self.seed ^ mix(uid.len() as u64 ^ fnv(uid)));
        cell.get_or_try_init(|| async move {
            let p = path.clone();
            tokio::task::spawn_blocking(move || make_archive(&p, size, seed, &export_json))
                .await
                .map_err(io::Error::other)??;
            Ok::<_, io::Error>(path)
        })
        .await
        .cloned()
    }
}

/// An archive of about `size` bytes: `export.json` (deflated) and a block of
/// stored pseudo-random data, so that a flipped byte fails a CRC.
fn make_archive(
    path: &std::path::Path,
    size: u64,
    seed: u64,
    export: &serde_json::Value,
) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut zip = zip::ZipWriter::new(BufWriter::with_capacity(1 << 20, File::create(&tmp)?));
    let json_opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let doc = json!({
        "scheme_version": "1.0",
        "export_info": {"name": export["name"], "created_at": export["created_at"],
                        "format": export["format"], "filter_query_string": null},
        "datasets": export["datasets"].as_array().cloned().unwrap_or_default()
            .into_iter().map(|d| json!({"uid": d, "items": []})).collect::<Vec<_>>(),
        "projects": [],
        "results": [],
    });
    zip.start_file("export.json", json_opts)
        .map_err(io::Error::other)?;
    zip.write_all(serde_json::to_string_pretty(&doc)?.as_bytes())?;
    let data_opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(size >= u32::MAX as u64);
    zip.start_file("data/annotations.bin", data_opts)
        .map_err(io::Error::other)?;
    let mut left = size.saturating_sub(1024);
    let mut block = vec![0u8; 1 << 16];
    let mut n = 0u64;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            word.copy_from_slice(&mix(seed ^ n).to_le_bytes());
            n += 1;
        }
        let take = left.min(block.len() as u64) as usize;
        zip.write_all(&block[..take])?;
        left -= take as u64;
    }
    zip.finish().map_err(io::Error::other)?.flush()?;
    std::fs::rename(tmp, path)
}

/// FNV-1a, for signatures and seeds.
pub fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// The signature of an export's link at `version`.
pub fn signature(seed: u64, uid: &str, version: u64) -> String {
    format!(
        "{:016x}",
        mix(seed ^ fnv(uid) ^ version.wrapping_mul(0x9E37_79B9))
    )
}

const CHUNK: usize = 1 << 20;

pub async fn serve(State(st): State<Arc<SimState>>, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let range = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let api_key = headers.contains_key("x-avala-api-key");
    let (resp, status) = answer(&st, &path, &query, range.as_deref()).await;
    st.faults
        .lock()
        .expect("faults lock")
        .storage
        .log
        .push(StorageLogged {
            at: Instant::now(),
            path,
            query,
            range,
            api_key,
            status,
        });
    resp
}

async fn answer(
    st: &Arc<SimState>,
    path: &str,
    query: &str,
    range: Option<&str>,
) -> (Response, u16) {
    let reply = |status: StatusCode, body: &str| {
        (
            (
                status,
                [("content-type", "application/xml")],
                body.to_string(),
            )
                .into_response(),
            status.as_u16(),
        )
    };
    let denied = |msg: &str| {
        reply(
            StatusCode::FORBIDDEN,
            &format!("<Error><Code>AccessDenied</Code><Message>{msg}</Message></Error>"),
        )
    };
    let no_such_key = || {
        reply(
            StatusCode::NOT_FOUND,
            "<Error><Code>NoSuchKey</Code></Error>",
        )
    };
    let (is_blob, file) = match (path.strip_prefix("/exports/"), path.strip_prefix("/blobs/")) {
        (Some(f), _) => (false, f),
        (_, Some(f)) => (true, f),
        _ => return no_such_key(),
    };
    let Some(uid) = file.strip_suffix(".zip") else {
        return no_such_key();
    };
    let q: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let (export, version) = {
        let w = st.world.lock().expect("world lock");
        match w
            .exports
            .iter()
            .position(|x| !x.deleted && x.uid == uid && x.status == "exported")
        {
            Some(e) => (w.export_json(e), w.exports[e].link_version),
            None => return no_such_key(),
        }
    };
    let (slow, cut, ignore_range, redirect, claim, redirect_to, endless) = {
        let mut f = st.faults.lock().expect("faults lock");
        let s = &mut f.storage;
        if s.not_found > 0 {
            if s.not_found != u32::MAX {
                s.not_found -= 1;
            }
            return no_such_key();
        }
        if s.expire > 0 {
            s.expire -= 1;
            drop(f);
            st.world.lock().expect("world lock").rotate_link(uid);
            return denied("Request has expired");
        }
        let cut = (s.drops > 0).then_some(s.drop_after).flatten();
        if cut.is_some() {
            s.drops -= 1;
        }
        (
            s.slow,
            cut,
            s.ignore_range,
            s.redirect,
            s.claim_length,
            s.redirect_to.clone(),
            s.endless,
        )
    };
    let valid = q.get("v").and_then(|v| v.parse::<u64>().ok()) == Some(version)
        && q.get("signature").map(String::as_str)
            == Some(signature(st.cfg.seed, uid, version).as_str());
    if !valid {
        return denied("Request has expired");
    }
    if let Some(to) = redirect_to.filter(|_| !is_blob) {
        return ((StatusCode::FOUND, [("location", to)]).into_response(), 302);
    }
    if redirect && !is_blob {
        let to = format!("/blobs/{file}?{query}");
        return ((StatusCode::FOUND, [("location", to)]).into_response(), 302);
    }
    if endless {
        let chunk = bytes::Bytes::from(vec![0u8; 256 << 10]);
        let body = futures_util::stream::repeat_with(move || Ok::<_, io::Error>(chunk.clone()));
        return (
            (StatusCode::OK, Body::from_stream(body)).into_response(),
            200,
        );
    }
    if let Some(len) = claim {
        let body = Body::from_stream(futures_util::stream::pending::<io::Result<Vec<u8>>>());
        let mut resp = (StatusCode::OK, body).into_response();
        resp.headers_mut().insert("content-length", len.into());
        return (resp, 200);
    }
    let file_path = match st.archives.path(uid, export).await {
        Ok(p) => p,
        Err(e) => {
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("<Error>{e}</Error>"),
            );
        }
    };
    let len = match std::fs::metadata(&file_path) {
        Ok(m) => m.len(),
        Err(e) => {
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("<Error>{e}</Error>"),
            );
        }
    };
    let start = match range.filter(|_| !ignore_range).map(|r| parse_range(r, len)) {
        None => None,
        Some(Some(start)) => Some(start),
        Some(None) => {
            let resp = (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [("content-range", format!("bytes */{len}"))],
            )
                .into_response();
            return (resp, 416);
        }
    };
    let from = start.unwrap_or(0);
    {
        let mut f = st.faults.lock().expect("faults lock");
        f.storage.in_flight += 1;
        f.storage.max_in_flight = f.storage.max_in_flight.max(f.storage.in_flight);
    }
    let st2 = st.clone();
    let finished = move || st2.faults.lock().expect("faults lock").storage.in_flight -= 1;
    let body = Body::from_stream(stream_file(
        file_path,
        from,
        len - from,
        cut,
        slow,
        finished,
    ));
    let mut headers = vec![
        ("content-length", (len - from).to_string()),
        ("content-type", "application/zip".to_string()),
        ("accept-ranges", "bytes".to_string()),
        (
            "etag",
            format!("\"{}-{len}\"", signature(st.cfg.seed, uid, 0)),
        ),
    ];
    let status = match start {
        Some(s) => {
            headers.push(("content-range", format!("bytes {s}-{}/{len}", len - 1)));
            StatusCode::PARTIAL_CONTENT
        }
        None => StatusCode::OK,
    };
    let mut resp = (status, body).into_response();
    for (k, v) in headers {
        resp.headers_mut()
            .insert(k, v.parse().expect("header value"));
    }
    (resp, status.as_u16())
}

/// `bytes=N-` or `bytes=N-M` → N, when N is inside the archive.
fn parse_range(r: &str, len: u64) -> Option<u64> {
    let spec = r.trim().strip_prefix("bytes=")?;
    let start: u64 = spec.split('-').next()?.trim().parse().ok()?;
    (start < len).then_some(start)
}

/// The file from `from`, read ahead by a thread of its own; with `cut`, the
/// connection breaks after that many bytes. `finished` runs when the body ends.
fn stream_file(
    path: PathBuf,
    from: u64,
    length: u64,
    cut: Option<u64>,
    slow: std::time::Duration,
    finished: impl FnOnce() + Send + 'static,
) -> impl futures_util::Stream<Item = io::Result<Vec<u8>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let read = || -> io::Result<()> {
            let mut f = File::open(&path)?;
            f.seek(SeekFrom::Start(from))?;
            let mut sent = 0u64;
            while sent < length {
                if cut.is_some_and(|c| sent >= c) {
                    // let what was sent reach the client before the connection goes
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "simulated drop",
                    ));
                }
                std::thread::sleep(slow);
                let want = cut.map_or(CHUNK as u64, |c| (c - sent).min(CHUNK as u64)) as usize;
                let mut buf = vec![0u8; want];
                let n = f.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                sent += n as u64;
                if tx.blocking_send(Ok(buf)).is_err() {
                    return Ok(()); // the client went away
                }
            }
            Ok(())
        };
        if let Err(e) = read() {
            let _ = tx.blocking_send(Err(e));
        }
        finished();
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}
