//! Archives to object storage (SPEC §10) against a real S3-compatible server:
//! `moto_server` (PyPI `moto[server]`), started here on a loopback port when it
//! is on the machine, skipped with a note when not (`.ci/run` installs it). The
//! binary runs as a user runs it, credentials in its environment.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};

const KEY: &str = "test-key-5f3a9c";
const BUCKET: &str = "team-archives";
const PREFIX: &str = "exports/avala";

/// A throwaway moto_server, killed when dropped.
struct Moto {
    addr: SocketAddr,
    _child: tokio::process::Child,
}

impl Moto {
    async fn start() -> Option<Moto> {
        let addr = nothing_listens();
        let child = tokio::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let Ok(child) = child else {
            eprintln!("SKIPPED: moto_server is not here (pip install 'moto[server]')");
            return None;
        };
        let moto = Moto {
            addr,
            _child: child,
        };
        for _ in 0..200 {
            if reqwest::get(moto.url("")).await.is_ok() {
                return Some(moto);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("moto_server did not start");
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    async fn create_bucket(&self) {
        let r = reqwest::Client::new()
            .put(self.url(BUCKET))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{r:?}");
    }

    /// Every key in the bucket.
    async fn keys(&self) -> Vec<String> {
        let xml = reqwest::get(self.url(&format!("{BUCKET}?list-type=2")))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        xml.split("<Key>")
            .skip(1)
            .map(|s| s.split("</Key>").next().unwrap().to_string())
            .collect()
    }

    /// Multipart uploads begun and neither completed nor aborted.
    async fn unfinished(&self) -> usize {
        let xml = reqwest::get(self.url(&format!("{BUCKET}?uploads")))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        xml.matches("<UploadId>").count()
    }

    /// The bucket, as a client with credentials sees it.
    fn client(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(self.url(""))
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .with_bucket_name(BUCKET)
            .build()
            .unwrap()
    }

    /// An object's bytes and its `sha256` metadata.
    async fn object(&self, key: &str) -> (Vec<u8>, String) {
        use object_store::ObjectStoreExt;
        let got = self.client().get(&key.into()).await.unwrap();
        let meta = got
            .attributes
            .get(&object_store::Attribute::Metadata("sha256".into()))
            .map(|v| v.to_string())
            .unwrap_or_default();
        (got.bytes().await.unwrap().to_vec(), meta)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", format!("http://{}", self.addr)),
        ]
    }
}

/// A world of `exports` exports whose archives are `bytes` long, and a config
/// that uploads them to `target` at `endpoint`.
async fn world(exports: usize, bytes: u64, target: &str, endpoint: &str) -> (TestEnv, PathBuf) {
    let mut w = small_world();
    w.exports = exports;
    w.archive_bytes = bytes;
    let env = start(w).await;
    let dl = env.dir.path().join("archives");
    let cfg = env.write_config(
        KEY,
        &format!(
            "[downloads]\nbackfill = true\ndir = \"{}\"\ntarget = \"{target}\"\n[downloads.storage]\nendpoint = \"{endpoint}\"\nallow_http = true\n",
            dl.display()
        ),
    );
    (env, cfg)
}

async fn binary(
    args: &[&str],
    env: &[(&'static str, String)],
    cwd: &Path,
) -> (i32, String, String) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_binary(args, &env, cwd).await
}

/// (export uid, status, path, sha256, error) of a download.
type Row = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// Every download.
fn downloads(env: &TestEnv) -> Vec<Row> {
    env.store().with(|c| {
        let mut st = c
            .prepare(
                "SELECT export_uid, status, path, sha256, error FROM downloads ORDER BY export_uid",
            )
            .unwrap();
        st.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    })
}

fn files_in(dir: &Path) -> Vec<String> {
    walk(dir)
        .into_iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[tokio::test]
async fn archives_arrive_in_the_bucket_verified_and_leave_no_local_copy() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    moto.create_bucket().await;
    let (env, cfg) = world(
        3,
        200_000,
        &format!("s3://{BUCKET}/{PREFIX}"),
        &moto.url(""),
    )
    .await;
    // a hostile name: still a file name under the prefix
    env.sim
        .world(|w| w.exports[0].name = "../../../etc/cron.d/x?y=1#".into());
    let cfg = cfg.to_str().unwrap();
    let (code, _, err) = binary(&["--config", cfg, "sync"], &moto.env(), env.dir.path()).await;
    assert_eq!(code, 0, "{err}");
    let rows = downloads(&env);
    assert_eq!(rows.len(), 3);
    let keys = moto.keys().await;
    assert_eq!(keys.len(), 3, "{keys:?}");
    for (uid, status, path, sha, error) in &rows {
        assert_eq!(status, "downloaded", "{uid}: {error:?}");
        let path = path.as_deref().unwrap();
        let key = path
            .strip_prefix(&format!("s3://{BUCKET}/"))
            .unwrap_or_else(|| panic!("{path} is not in the bucket"));
        assert!(
            key.starts_with(&format!("{PREFIX}/")) && !key.contains(".."),
            "{key}"
        );
        assert!(key.contains(uid.as_str()), "{key}");
        assert!(keys.contains(&key.to_string()));
        let (bytes, meta) = moto.object(key).await;
        let got = hex::encode(Sha256::digest(&bytes));
        assert_eq!(
            Some(&got),
            sha.as_ref(),
            "{key}: the bytes are not the archive's"
        );
        assert_eq!(meta, got, "{key}: sha256 metadata");
        assert!(bytes.starts_with(b"PK"), "{key}: not a zip");
    }
    // nothing stays on the mirror host
    let dl = env.dir.path().join("archives");
    assert_eq!(files_in(&dl), Vec::<String>::new());
    // the URL is what users see
    let (code, out, _) = binary(
        &["--config", cfg, "exports", "list", "--json"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0);
    assert!(out.contains(&format!("s3://{BUCKET}/{PREFIX}/")), "{out}");
    let events = env.events();
    let downloaded: Vec<_> = events
        .iter()
        .filter(|(t, _)| t == "export.downloaded")
        .collect();
    assert_eq!(downloaded.len(), 3);
    let payloads: Vec<String> = env.store().with(|c| {
        let mut st = c
            .prepare("SELECT payload FROM events WHERE type = 'export.downloaded'")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    });
    assert!(
        payloads
            .iter()
            .all(|p| p.contains(&format!("s3://{BUCKET}/{PREFIX}/"))),
        "{payloads:?}"
    );
}

#[tokio::test]
async fn another_archive_at_the_key_is_never_overwritten() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    moto.create_bucket().await;
    let (env, cfg) = world(
        1,
        100_000,
        &format!("s3://{BUCKET}/{PREFIX}"),
        &moto.url(""),
    )
    .await;
    let cfg = cfg.to_str().unwrap();
    // a first sync uploads it; then someone puts another file at its key
    let (code, _, err) = binary(&["--config", cfg, "sync"], &moto.env(), env.dir.path()).await;
    assert_eq!(code, 0, "{err}");
    let key = moto.keys().await.pop().unwrap();
    let theirs = b"someone else's file".to_vec();
    object_store::ObjectStoreExt::put(&moto.client(), &key.as_str().into(), theirs.clone().into())
        .await
        .unwrap();
    // a second mirror of the same account, into the same prefix
    let other = tempfile::tempdir().unwrap();
    let toml = std::fs::read_to_string(cfg).unwrap().replace(
        &env.cfg.store_path.display().to_string(),
        &other.path().join("m.db").display().to_string(),
    );
    let other_cfg = other.path().join("c.toml");
    std::fs::write(&other_cfg, toml).unwrap();
    let (code, _, err) = binary(
        &["--config", other_cfg.to_str().unwrap(), "sync"],
        &moto.env(),
        other.path(),
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not overwritten"), "{err}");
    assert_eq!(
        moto.object(&key).await.0,
        theirs,
        "the object was overwritten"
    );
}

#[tokio::test]
async fn kill_9_during_a_multipart_upload_then_restart_converges_with_nothing_left() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    moto.create_bucket().await;
    // past the multipart threshold (64 MiB): parts of 8 MiB
    let (env, cfg) = world(
        1,
        96 << 20,
        &format!("s3://{BUCKET}/{PREFIX}"),
        &moto.url(""),
    )
    .await;
    let cfg = cfg.to_str().unwrap().to_string();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_avala-mirror"))
        .args(["--config", &cfg, "sync"])
        .envs(moto.env())
        .env_remove("AVALA_API_KEY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let db = env.cfg.store_path.clone();
    let uploading = move || {
        let c =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY);
        c.ok()
            .and_then(|c| {
                c.query_row(
                    "SELECT count(*) FROM downloads WHERE upload_id IS NOT NULL",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .ok()
            })
            .unwrap_or(0)
            > 0
    };
    wait_until("a multipart upload under way", uploading).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    assert_eq!(moto.unfinished().await, 1, "the upload was not under way");
    assert_eq!(
        moto.keys().await,
        Vec::<String>::new(),
        "a partial object is visible"
    );

    let (code, _, err) = binary(&["--config", &cfg, "sync"], &moto.env(), env.dir.path()).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(moto.unfinished().await, 0, "an unfinished upload was left");
    let rows = downloads(&env);
    let (_, status, path, sha, _) = &rows[0];
    assert_eq!(status, "downloaded");
    let key = path
        .as_deref()
        .unwrap()
        .strip_prefix(&format!("s3://{BUCKET}/"))
        .unwrap();
    let (bytes, meta) = moto.object(key).await;
    assert!(bytes.len() > 64 << 20, "{}", bytes.len());
    assert_eq!(Some(hex::encode(Sha256::digest(&bytes))), *sha);
    assert_eq!(Some(meta), *sha);
    assert_eq!(
        files_in(&env.dir.path().join("archives")),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_missing_bucket_fails_the_download_clearly_and_the_mirror_goes_on() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let (env, cfg) = world(2, 50_000, "s3://no-such-bucket/x", &moto.url("")).await;
    let (code, _, err) = binary(
        &["--config", cfg.to_str().unwrap(), "sync"],
        &moto.env(),
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 1, "{err}");
    for (uid, status, _, _, error) in downloads(&env) {
        assert_eq!(status, "failed", "{uid}");
        let error = error.unwrap();
        assert!(
            error.contains("no-such-bucket") || error.contains("NoSuchBucket"),
            "{error}"
        );
    }
    assert_eq!(env.rows("exports").len(), 2, "the mirror did not go on");
    assert!(env.rows("items").len() > 100);
}

/// A storage endpoint that answers every request with `status`.
async fn answering(status: u16) -> SocketAddr {
    let app = axum::Router::new().fallback(move || async move {
        (
            axum::http::StatusCode::from_u16(status).unwrap(),
            "<Error><Code>Nope</Code></Error>",
        )
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

#[tokio::test]
async fn a_403_fails_at_once_and_a_5xx_is_retried_with_backoff() {
    for (status, says, retried) in [(403, "403", false), (503, "503", true)] {
        let addr = answering(status).await;
        let endpoint = format!("http://{addr}");
        let (env, cfg) = world(1, 50_000, &format!("s3://{BUCKET}/p"), &endpoint).await;
        let creds = [
            ("AWS_ACCESS_KEY_ID", "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
        ];
        let (code, _, err) = binary(
            &["--config", cfg.to_str().unwrap(), "sync"],
            &creds,
            env.dir.path(),
        )
        .await;
        assert_eq!(code, 1, "{status}: {err}");
        let attempts: i64 = env.store().with(|c| {
            c.query_row("SELECT attempts FROM downloads", [], |r| r.get(0))
                .unwrap()
        });
        let (_, state, _, _, error) = downloads(&env).pop().unwrap();
        assert_eq!(state, "failed", "{status}");
        assert!(
            error.as_deref().unwrap_or("").contains(says),
            "{status}: {error:?}"
        );
        assert_eq!(attempts > 1, retried, "{status}: {attempts} attempts");
        // the verified archive stays on the mirror host for the next try
        assert_eq!(files_in(&env.dir.path().join("archives")).len(), 1);
    }
}

#[tokio::test]
async fn exports_download_puts_the_archive_in_the_bucket_too() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    moto.create_bucket().await;
    let (env, cfg) = world(1, 80_000, &format!("s3://{BUCKET}/{PREFIX}"), &moto.url("")).await;
    // the mirror knows the export; nothing downloads it by itself (no backfill)
    let toml = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("backfill = true", "backfill = false");
    std::fs::write(&cfg, toml).unwrap();
    let cfg = cfg.to_str().unwrap();
    let (code, _, err) = binary(&["--config", cfg, "sync"], &moto.env(), env.dir.path()).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(moto.keys().await, Vec::<String>::new());
    let uid = env.sim.world(|w| w.exports[0].uid.clone());
    let (code, out, err) = binary(
        &["--config", cfg, "exports", "download", &uid],
        &moto.env(),
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("s3://{BUCKET}/{PREFIX}/")), "{out}");
    let keys = moto.keys().await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].contains(&uid));
    // asked again, it is already there: nothing fetched or uploaded twice
    let (code, out, _) = binary(
        &["--config", cfg, "exports", "download", &uid],
        &moto.env(),
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0);
    assert!(out.contains("already downloaded: s3://"), "{out}");
}
