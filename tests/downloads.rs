//! Export archives on disk (SPEC §5): resumed, refreshed, verified, atomic, and
//! never fetched with the API key.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use avala_mirror::download::{Downloader, MAX_ATTEMPTS};
use common::*;
use sha2::{Digest, Sha256};

/// A download row as a user would query it.
#[derive(Debug)]
struct Row {
    uid: String,
    status: String,
    path: Option<String>,
    sha256: Option<String>,
    bytes: Option<i64>,
    attempts: i64,
    error: Option<String>,
}

fn download_rows(env: &TestEnv) -> Vec<Row> {
    env.store().with(|c| {
        let mut st = c
            .prepare("SELECT export_uid, status, path, sha256, bytes, attempts, error FROM downloads ORDER BY export_uid")
            .unwrap();
        st.query_map([], |r| {
            Ok(Row {
                uid: r.get(0)?,
                status: r.get(1)?,
                path: r.get(2)?,
                sha256: r.get(3)?,
                bytes: r.get(4)?,
                attempts: r.get(5)?,
                error: r.get(6)?,
            })
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    })
}

fn downloader(env: &TestEnv) -> Downloader {
    let s = env.syncer();
    Downloader::new(&env.cfg, s.store, s.client).unwrap()
}

fn sha256_of(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// The SHA-256 of the archive as the simulator's storage holds it.
async fn served_sha(env: &TestEnv, uid: &str) -> String {
    let json = env.sim.world(|w| {
        let e = w.exports.iter().position(|x| x.uid == uid).unwrap();
        w.export_json(e)
    });
    let path = env.sim.state.archives.path(uid, json).await.unwrap();
    sha256_of(&path)
}

fn exported_uids(env: &TestEnv) -> Vec<String> {
    env.sim.world(|w| {
        let mut v: Vec<String> = w
            .exports
            .iter()
            .filter(|x| x.status == "exported" && !x.deleted)
            .map(|x| x.uid.clone())
            .collect();
        v.sort();
        v
    })
}

/// Names in a directory (the `.partial` directory included when present).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn partial_dir(env: &TestEnv) -> PathBuf {
    env.cfg.downloads.dir.join(".partial")
}

/// Every archive is in place with the storage's checksum, recorded as such, and nothing is left partial.
async fn assert_all_downloaded(env: &TestEnv) {
    let rows = download_rows(env);
    assert_eq!(
        rows.iter().map(|r| r.uid.clone()).collect::<Vec<_>>(),
        exported_uids(env)
    );
    for r in &rows {
        assert_eq!(r.status, "downloaded", "{r:?}");
        let path = PathBuf::from(r.path.as_ref().unwrap());
        assert_eq!(path.parent().unwrap(), env.cfg.downloads.dir, "{r:?}");
        let want = served_sha(env, &r.uid).await;
        assert_eq!(r.sha256.as_deref(), Some(want.as_str()), "{r:?}");
        assert_eq!(sha256_of(&path), want, "file on disk for {r:?}");
        assert_eq!(
            r.bytes,
            Some(std::fs::metadata(&path).unwrap().len() as i64)
        );
    }
    assert_eq!(
        names(&partial_dir(env)),
        Vec::<String>::new(),
        "partial files left"
    );
}

/// The storage address saw requests, and none carried the API key.
fn assert_key_never_at_storage(env: &TestEnv) {
    let log = env.sim.faults(|f| f.storage.log.clone());
    assert!(!log.is_empty(), "no storage requests");
    assert!(
        log.iter().all(|l| !l.api_key),
        "a storage request carried X-Avala-Api-Key"
    );
}

fn backfill(mut env: TestEnv) -> TestEnv {
    env.cfg.downloads.backfill = true;
    env
}

#[tokio::test]
async fn only_exports_that_become_exported_are_downloaded_unless_backfill() {
    let env = start(small_world()).await;
    env.sim.faults(|f| f.storage.redirect = true);
    env.sync().await.unwrap();
    assert!(
        download_rows(&env).is_empty(),
        "baseline exports were queued"
    );

    let uid = env.sim.world(|w| {
        let e = w.add_export();
        w.exports[e].status = "exported".into();
        w.exports[e].uid.clone()
    });
    env.sync().await.unwrap();
    let done = downloader(&env).drain().await;
    assert_eq!(done.len(), 1);
    let rows = download_rows(&env);
    assert_eq!((rows.len(), rows[0].uid.as_str()), (1, uid.as_str()));
    assert_eq!(
        rows[0].sha256.as_deref(),
        Some(served_sha(&env, &uid).await.as_str())
    );
    // the event carries where the archive is and its checksum
    let payload: serde_json::Value = env.store().with(|c| {
        let p: String = c
            .query_row(
                "SELECT payload FROM events WHERE type = 'export.downloaded'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        serde_json::from_str(&p).unwrap()
    });
    assert_eq!(payload["data"]["uid"], uid.as_str());
    assert_eq!(
        payload["data"]["download"]["sha256"],
        rows[0].sha256.as_deref().unwrap()
    );
    assert_eq!(payload["data"]["object"]["status"], "exported");
    let line = env.store().with(|c| {
        let e = avala_mirror::store::sqlite::events::list(c, 0, "export.downloaded", 10).unwrap();
        avala_mirror::store::events::describe(&e[0])
    });
    assert!(
        line.ends_with(&format!(
            "downloaded to {}",
            rows[0].path.as_deref().unwrap()
        )),
        "{line}"
    );
    // the storage redirected each request; the client followed without the key
    let log = env.sim.faults(|f| f.storage.log.clone());
    assert!(
        log.iter().any(|l| l.status == 302) && log.iter().any(|l| l.path.starts_with("/blobs/"))
    );
    assert_key_never_at_storage(&env);

    // with backfill, a fresh mirror takes every exported archive
    let env = backfill(start(small_world()).await);
    env.sync().await.unwrap();
    downloader(&env).drain().await;
    assert_eq!(download_rows(&env).len(), 3);
    assert_all_downloaded(&env).await;
}

#[tokio::test]
async fn an_export_whose_link_comes_a_poll_after_exported_is_downloaded() {
    let env = start(small_world()).await;
    env.sync().await.unwrap();
    let (e, uid) = env.sim.world(|w| {
        let e = w.add_export();
        (e, w.exports[e].uid.clone())
    });
    env.sync().await.unwrap();
    // it turns `exported`, and the link shows up one poll later
    env.sim.world(|w| {
        w.exports[e].status = "exported".into();
        w.exports[e].link_hidden = true;
    });
    env.sync().await.unwrap();
    let rows = download_rows(&env);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "awaiting_link");
    assert!(
        downloader(&env).drain().await.is_empty(),
        "nothing to fetch yet"
    );
    env.sim.world(|w| w.exports[e].link_hidden = false);
    env.sync().await.unwrap();
    let done = downloader(&env).drain().await;
    assert_eq!(done.len(), 1, "{done:?}");
    let row = download_rows(&env).remove(0);
    assert_eq!(
        (row.uid.as_str(), row.status.as_str()),
        (uid.as_str(), "downloaded")
    );
    assert_eq!(row.sha256.unwrap(), served_sha(&env, &uid).await);

    // an export already exported at the baseline still waits for backfill, even
    // when its content changes later
    let baseline: Vec<String> = env.sim.world(|w| {
        w.exports
            .iter_mut()
            .filter(|x| x.status == "exported" && x.uid != uid)
            .map(|x| {
                x.link_version += 1;
                x.name.push_str(" (renamed)");
                x.uid.clone()
            })
            .collect()
    });
    assert!(!baseline.is_empty());
    env.sync().await.unwrap();
    assert_eq!(
        download_rows(&env).len(),
        1,
        "no baseline export was queued"
    );
}

#[tokio::test]
async fn at_most_downloads_concurrency_archives_at_a_time() {
    for concurrency in [1, 2] {
        let mut world = small_world();
        world.exports = 4;
        let mut env = backfill(start(world).await);
        env.cfg.downloads.concurrency = concurrency;
        env.sim
            .faults(|f| f.storage.slow = Duration::from_millis(100));
        env.sync().await.unwrap();
        downloader(&env).drain().await;
        assert_all_downloaded(&env).await;
        let most = env.sim.faults(|f| f.storage.max_in_flight);
        assert_eq!(most, concurrency as usize, "concurrency {concurrency}");
    }
}

#[tokio::test]
async fn a_dropped_connection_resumes_with_range() {
    let env = backfill(start(small_world()).await);
    env.sim.faults(|f| {
        f.storage.drop_after = Some(20_000);
        f.storage.drops = 2;
    });
    env.sync().await.unwrap();
    downloader(&env).drain().await;
    assert_all_downloaded(&env).await;
    let log = env.sim.faults(|f| f.storage.log.clone());
    let resumed: Vec<_> = log.iter().filter(|l| l.status == 206).collect();
    assert_eq!(resumed.len(), 2, "{log:#?}");
    for l in resumed {
        let from: u64 = l.range.as_deref().unwrap()["bytes=".len()..]
            .trim_end_matches('-')
            .parse()
            .unwrap();
        assert!(from > 0 && from <= 20_000, "{l:?}");
    }
    assert!(download_rows(&env).iter().all(|r| r.attempts <= 2));
    assert_key_never_at_storage(&env);
}

#[tokio::test]
async fn a_flaky_link_that_keeps_making_progress_is_not_given_up() {
    let mut world = small_world();
    world.exports = 1;
    let env = backfill(start(world).await);
    // every response breaks after 8 000 bytes: 9 attempts for 64 KiB, each one resuming
    env.sim.faults(|f| {
        f.storage.drop_after = Some(8_000);
        f.storage.drops = 8;
    });
    env.sync().await.unwrap();
    downloader(&env).drain().await;
    assert_all_downloaded(&env).await;
    let r = download_rows(&env).remove(0);
    assert!(r.attempts > MAX_ATTEMPTS as i64, "{r:?}");
}

#[tokio::test]
async fn an_archive_renamed_but_not_recorded_is_checked_and_recorded_without_a_download() {
    let env = backfill(start(small_world()).await);
    env.sync().await.unwrap();
    downloader(&env).drain().await;
    // a crash between the rename and the commit: the files are there, the rows say pending
    env.store().with(|c| {
        c.execute(
            "UPDATE downloads SET status = 'pending', path = NULL, sha256 = NULL",
            [],
        )
        .unwrap()
    });
    let requests = env.sim.faults(|f| f.storage.log.len());
    let done = downloader(&env).drain().await;
    assert_eq!(done.len(), 3);
    assert_all_downloaded(&env).await;
    assert_eq!(
        env.sim.faults(|f| f.storage.log.len()),
        requests,
        "downloaded again"
    );
    // a file that does not check out is replaced by a fresh download
    let r = download_rows(&env).remove(0);
    let path = PathBuf::from(r.path.unwrap());
    std::fs::write(&path, b"PK\x03\x04 not a zip").unwrap();
    env.store().with(|c| {
        c.execute(
            "UPDATE downloads SET status = 'pending' WHERE export_uid = ?1",
            [&r.uid],
        )
        .unwrap()
    });
    downloader(&env).drain().await;
    assert_all_downloaded(&env).await;
    assert_eq!(env.sim.faults(|f| f.storage.log.len()), requests + 1);
}

#[tokio::test]
async fn a_server_ignoring_range_means_starting_over() {
    let env = backfill(start(small_world()).await);
    env.sim.faults(|f| {
        f.storage.drop_after = Some(30_000);
        f.storage.drops = 1;
        f.storage.ignore_range = true;
    });
    env.sync().await.unwrap();
    downloader(&env).drain().await;
    assert_all_downloaded(&env).await;
    let log = env.sim.faults(|f| f.storage.log.clone());
    assert!(
        log.iter().any(|l| l.range.is_some() && l.status == 200),
        "no resume was attempted: {log:#?}"
    );
}

#[tokio::test]
async fn an_expired_link_is_refreshed_through_the_api() {
    let env = backfill(start(small_world()).await);
    env.sim.faults(|f| f.storage.expire = 1);
    env.sync().await.unwrap();
    downloader(&env).drain().await;
    assert_all_downloaded(&env).await;
    let storage = env.sim.faults(|f| f.storage.log.clone());
    let expired = storage
        .iter()
        .find(|l| l.status == 403)
        .expect("one expired link");
    let uid = expired
        .path
        .trim_start_matches("/exports/")
        .trim_end_matches(".zip");
    // the refresh went to the API (with the key, where it belongs)…
    let api = env.sim.faults(|f| f.log.clone());
    assert!(
        api.iter()
            .any(|l| l.path == format!("/exports/{uid}/") && l.status == 200),
        "no GET /exports/{uid}/"
    );
    // …and the next storage request used the new link
    let retry = storage
        .iter()
        .rfind(|l| l.path == expired.path && l.status == 200)
        .unwrap();
    assert_ne!(retry.query, expired.query);
    assert_key_never_at_storage(&env);
}

#[tokio::test]
async fn storage_404_for_good_fails_with_a_clear_error_and_exit_1() {
    let env = start(small_world()).await;
    let dl = env.dir.path().join("archives");
    let cfg = env.write_config(
        "test-key-5f3a9c",
        &format!("[downloads]\nbackfill = true\ndir = \"{}\"\n", dl.display()),
    );
    env.sim.faults(|f| f.storage.not_found = u32::MAX);
    let (code, out, err) = run_binary(
        &["--config", cfg.to_str().unwrap(), "sync"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("failed download of export"), "{out}");
    assert!(out.contains("storage refused the link (404"), "{out}");
    let rows = download_rows(&env);
    assert_eq!(rows.len(), 3);
    for r in &rows {
        assert_eq!(r.status, "failed");
        assert_eq!(r.attempts, MAX_ATTEMPTS as i64);
        assert!(r.error.as_deref().unwrap().contains("404"), "{r:?}");
    }
    let failed = env
        .events()
        .into_iter()
        .filter(|(t, _)| t == "export.download_failed")
        .count();
    assert_eq!(failed, 3);
    assert_eq!(names(&dl), vec![".partial"]);
    assert_eq!(names(&dl.join(".partial")), Vec::<String>::new());
    // the secret link never shows in what the user sees
    assert!(!out.contains("signature=") && !err.contains("signature="));
    assert_key_never_at_storage(&env);
}

#[tokio::test]
async fn an_archive_larger_than_the_free_space_waits_and_comes_when_space_returns() {
    let mut env = backfill(start(small_world()).await);
    // no cap on an archive's size here: only the disk says no
    env.cfg.downloads.max_archive_bytes = u64::MAX;
    // an exbibyte: more than any disk this test runs on has free
    env.sim.faults(|f| f.storage.claim_length = Some(1 << 60));
    env.sync().await.unwrap();
    let wait = Duration::from_millis(1500);
    let d = downloader(&env).with_space_wait(wait, Duration::from_secs(60));
    d.drain().await;
    let retry_at = |env: &TestEnv| -> Vec<String> {
        env.store().with(|c| {
            let mut st = c
                .prepare("SELECT retry_at FROM downloads ORDER BY export_uid")
                .unwrap();
            st.query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        })
    };
    let rows = download_rows(&env);
    assert_eq!(rows.len(), 3);
    for r in &rows {
        // one attempt, no give-up, a clear reason
        assert_eq!(
            (r.status.as_str(), r.attempts),
            ("waiting_for_space", 1),
            "{r:?}"
        );
        let error = r.error.as_deref().unwrap();
        assert!(error.contains("not enough free space"), "{error}");
        assert!(
            error.contains("the archive needs 1152921504606846976 more bytes"),
            "{error}"
        );
        assert!(
            error.contains("waiting for space, next attempt at"),
            "{error}"
        );
    }
    let first = retry_at(&env);
    // not due before its time: nothing is tried
    let tries = env.sim.faults(|f| f.storage.log.len());
    d.drain().await;
    assert_eq!(env.sim.faults(|f| f.storage.log.len()), tries);
    // still full at the next attempt: it waits longer
    tokio::time::sleep(wait + Duration::from_secs(1)).await;
    d.drain().await;
    let second = retry_at(&env);
    for r in download_rows(&env) {
        assert_eq!(
            (r.status.as_str(), r.attempts),
            ("waiting_for_space", 2),
            "{r:?}"
        );
    }
    assert!(
        second.iter().zip(&first).all(|(b, a)| b > a),
        "{first:?} {second:?}"
    );
    let at = |t: &str| humantime::parse_rfc3339(t).unwrap();
    let (a, b) = (at(&first[0]), at(&second[0]));
    assert!(
        b.duration_since(a).unwrap() >= wait,
        "the second wait is longer"
    );
    // space again: they come by themselves, and no download ever counted as failed
    env.sim.faults(|f| f.storage.claim_length = None);
    tokio::time::sleep(2 * wait + Duration::from_secs(1)).await;
    d.drain().await;
    assert_all_downloaded(&env).await;
    assert!(
        !env.events()
            .iter()
            .any(|(t, _)| t == "export.download_failed")
    );
}

#[tokio::test]
async fn a_hostile_export_name_stays_inside_the_directory() {
    let env = backfill(start(small_world()).await);
    env.sim.world(|w| {
        w.exports[0].name = "../../../tmp/evil name".into();
        w.exports[1].name = "/etc/cron.d/job".into();
    });
    env.sync().await.unwrap();
    downloader(&env).drain().await;
    assert_all_downloaded(&env).await;
    let files = names(&env.cfg.downloads.dir);
    assert!(
        files.iter().any(|f| f.starts_with("tmp_evil_name_")),
        "{files:?}"
    );
    assert!(
        files.iter().any(|f| f.starts_with("etc_cron.d_job_")),
        "{files:?}"
    );
    // nothing landed beside the directory
    let beside: Vec<String> = names(env.dir.path())
        .into_iter()
        .filter(|n| !n.starts_with("mirror.db"))
        .collect();
    assert_eq!(beside, vec!["exports"]);
}

/// A world of one export whose archive is `bytes` long, and a configuration
/// for the binary that downloads it into the returned directory.
async fn one_archive(bytes: u64) -> (TestEnv, PathBuf, PathBuf) {
    let mut world = small_world();
    world.exports = 1;
    world.archive_bytes = bytes;
    let env = start(world).await;
    let dl = env.dir.path().join("archives");
    let cfg = env.write_config(
        "test-key-5f3a9c",
        &format!("[downloads]\nbackfill = true\ndir = \"{}\"\n", dl.display()),
    );
    (env, dl, cfg)
}

#[tokio::test]
async fn kill_9_during_a_download_then_restart_resumes() {
    let (env, dl, cfg) = one_archive(4 << 20).await;
    let cfg = cfg.to_str().unwrap();
    env.sim
        .faults(|f| f.storage.slow = Duration::from_millis(300));
    let mut child = spawn_binary(&["--config", cfg, "sync"]);
    let partial_len = || {
        std::fs::read_dir(dl.join(".partial"))
            .ok()
            .and_then(|mut rd| rd.next())
            .and_then(|e| e.ok()?.metadata().ok())
            .map_or(0, |m| m.len())
    };
    wait_until("part of the archive on disk", || {
        partial_len() >= 512 * 1024
    })
    .await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let left = partial_len();
    assert!(left > 0 && left < 4 << 20, "{left}");
    assert_eq!(
        names(&dl),
        vec![".partial"],
        "a partial file outside .partial"
    );

    env.sim.faults(|f| f.storage.slow = Duration::ZERO);
    let (code, out, err) = run_binary(&["--config", cfg, "sync"], &[], env.dir.path()).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let r = download_rows(&env).remove(0);
    assert_eq!(r.status, "downloaded");
    assert_eq!(r.sha256.unwrap(), served_sha(&env, &r.uid).await);
    assert_eq!(names(&dl.join(".partial")), Vec::<String>::new());
    let log = env.sim.faults(|f| f.storage.log.clone());
    assert_eq!(
        log.last().unwrap().status,
        206,
        "the restart resumed: {log:#?}"
    );
    let downloaded = env
        .events()
        .into_iter()
        .filter(|(t, _)| t == "export.downloaded")
        .count();
    assert_eq!(downloaded, 1);
    assert_key_never_at_storage(&env);
}

#[tokio::test]
async fn exports_create_wait_download_from_the_command_line() {
    let env = start(small_world()).await;
    let cfg = env.write_config("test-key-5f3a9c", "");
    let cfg = cfg.to_str().unwrap();
    let dataset = env.sim.world(|w| w.datasets[0].uid.clone());
    // the platform works on the new export while the command waits
    let state = env.sim.state.clone();
    let worker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut w = state.world.lock().unwrap();
            if let Some(x) = w.exports.iter_mut().find(|x| x.name == "cli-test") {
                x.status = match x.status.as_str() {
                    "requested" => "exporting",
                    _ => "exported",
                }
                .into();
            }
        }
    });
    let (code, out, err) = run_binary(
        &[
            "--config",
            cfg,
            "exports",
            "create",
            "--dataset",
            &dataset,
            "--name",
            "cli-test",
            "--download",
            "--poll",
            "50ms",
        ],
        &[],
        env.dir.path(),
    )
    .await;
    worker.abort();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("created export"), "{out}");
    assert!(
        out.contains("exporting") && out.contains("exported"),
        "{out}"
    );
    let uid = env.sim.world(|w| {
        w.exports
            .iter()
            .find(|x| x.name == "cli-test")
            .unwrap()
            .uid
            .clone()
    });
    assert_eq!(
        env.sim.world(|w| w
            .exports
            .iter()
            .find(|x| x.uid == uid)
            .unwrap()
            .datasets
            .clone()),
        vec![dataset]
    );
    let path = env
        .dir
        .path()
        .join("exports")
        .join(format!("cli-test_{uid}.zip"));
    assert!(out.contains(&format!("downloaded {}", "exports/")), "{out}");
    assert_eq!(sha256_of(&path), served_sha(&env, &uid).await);

    // a second download of the same export finds it done
    let (code, out, _) = run_binary(
        &["--config", cfg, "exports", "download", &uid],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0);
    assert!(out.contains("already downloaded"), "{out}");

    // the mirror lists it with its download
    run_binary(
        &["--config", cfg, "sync", "--only", "exports"],
        &[],
        env.dir.path(),
    )
    .await;
    let (code, out, _) =
        run_binary(&["--config", cfg, "exports", "list"], &[], env.dir.path()).await;
    assert_eq!(code, 0);
    let line = out.lines().find(|l| l.starts_with(&uid)).expect("listed");
    assert!(
        line.contains("exported") && line.contains("downloaded"),
        "{line}"
    );

    // a bad request is reported, not retried
    let (code, _, err) =
        run_binary(&["--config", cfg, "exports", "create"], &[], env.dir.path()).await;
    assert_eq!(code, 1);
    assert!(err.contains("nothing to export"), "{err}");
    assert_key_never_at_storage(&env);
}

#[tokio::test]
async fn storage_links_never_lead_to_metadata_or_unallowed_private_addresses() {
    // a redirect to the cloud metadata service: refused at the hop, whatever allow_private
    let env = backfill(start(small_world()).await);
    assert!(
        env.cfg.downloads.allow_private,
        "on by default with the API on loopback"
    );
    env.sim.faults(|f| {
        f.storage.redirect_to = Some("http://169.254.169.254/latest/meta-data/iam".into())
    });
    env.sync().await.unwrap();
    let done = downloader(&env).drain().await;
    assert_eq!(done.len(), 3);
    for r in download_rows(&env) {
        assert_eq!(r.status, "failed", "{r:?}");
        let e = r.error.unwrap();
        assert!(
            e.contains("169.254.169.254") && e.contains("link-local or cloud-metadata"),
            "{e}"
        );
        assert_eq!(r.attempts, 1, "a refused link is not tried again");
    }

    // allow_private = false: the storage on loopback is refused, by address and by name
    for via_name in [false, true] {
        let mut env = backfill(start(small_world()).await);
        env.cfg.downloads.allow_private = false;
        env.sync().await.unwrap();
        if via_name {
            // the links name `localhost`: refused by the storage client's resolver
            links_by_name(&env);
        }
        downloader(&env).drain().await;
        for r in download_rows(&env) {
            assert_eq!(r.status, "failed", "{r:?}");
            let e = r.error.unwrap();
            assert!(
                e.contains("loopback or private") && e.contains("allow_private"),
                "{e}"
            );
            assert_eq!(e.contains("localhost: it resolves to"), via_name, "{e}");
        }
        let fetched = env
            .sim
            .faults(|f| f.storage.log.iter().filter(|l| l.status == 200).count());
        assert_eq!(fetched, 0, "no archive left storage");
    }
}

/// The queued links name the storage `localhost` instead of its address.
fn links_by_name(env: &TestEnv) {
    let port = env.sim.storage_addr.port();
    env.store().with(|c| {
        c.execute(
            "UPDATE downloads SET url = replace(url, '127.0.0.1:' || ?1, 'localhost:' || ?1)",
            [port],
        )
        .unwrap()
    });
}

/// Every download failed, with `says` in its error, its partial file deleted,
/// and an `export.download_failed` event.
fn assert_failed_and_cleaned(env: &TestEnv, says: &str) {
    let rows = download_rows(env);
    assert_eq!(rows.len(), 3);
    for r in &rows {
        assert_eq!(r.status, "failed", "{r:?}");
        assert!(r.error.as_deref().unwrap().contains(says), "{r:?}");
    }
    assert_eq!(
        names(&partial_dir(env)),
        Vec::<String>::new(),
        "partial files kept"
    );
    let failed = env
        .events()
        .into_iter()
        .filter(|(t, _)| t == "export.download_failed");
    assert_eq!(failed.count(), 3);
}

#[tokio::test]
async fn an_archive_without_end_stops_at_max_archive_bytes_and_its_partial_goes() {
    let mut env = backfill(start(small_world()).await);
    env.cfg.downloads.max_archive_bytes = 3 << 20;
    env.sim.faults(|f| f.storage.endless = true);
    env.sync().await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(30), downloader(&env).drain())
        .await
        .expect("the downloads ended");
    assert_eq!(done.len(), 3);
    assert_failed_and_cleaned(&env, "ran past downloads.max_archive_bytes (3145728)");
    // a length above the cap is refused before the first byte
    let mut env = backfill(start(small_world()).await);
    env.cfg.downloads.max_archive_bytes = 3 << 20;
    env.sim.faults(|f| f.storage.claim_length = Some(10 << 30));
    env.sync().await.unwrap();
    downloader(&env).drain().await;
    assert_failed_and_cleaned(
        &env,
        "more than downloads.max_archive_bytes (3145728); refused",
    );
}

#[tokio::test]
async fn an_archive_without_a_length_stops_when_free_space_falls_under_min_free() {
    let mut env = backfill(start(small_world()).await);
    // more free space than any disk has: the first look finds too little
    env.cfg.downloads.min_free = u64::MAX / 2;
    env.sim.faults(|f| f.storage.endless = true);
    env.sync().await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(30), downloader(&env).drain())
        .await
        .expect("the downloads ended");
    assert_eq!(done.len(), 3);
    assert_failed_and_cleaned(&env, "under downloads.min_free");
}

#[tokio::test]
async fn a_named_proxy_is_used_and_the_guard_still_checks_the_links_host() {
    // the proxy named in downloads.proxy carries the storage requests
    let mut env = backfill(start(small_world()).await);
    let proxy = format!("http://{}", nothing_listens());
    env.cfg.downloads.proxy = Some(proxy.parse().unwrap());
    env.sync().await.unwrap();
    downloader(&env).drain().await;
    for r in download_rows(&env) {
        assert_ne!(r.status, "downloaded", "{r:?}");
        assert!(
            r.error.as_deref().unwrap().contains("could not connect"),
            "{r:?}"
        );
    }
    assert!(
        env.sim.faults(|f| f.storage.log.is_empty()),
        "storage reached without the proxy"
    );
    // behind it, a link whose host resolves to a refused address is refused
    // before anything is sent
    let mut env = backfill(start(small_world()).await);
    env.cfg.downloads.proxy = Some(proxy.parse().unwrap());
    env.cfg.downloads.allow_private = false;
    env.sync().await.unwrap();
    links_by_name(&env);
    downloader(&env).drain().await;
    for r in download_rows(&env) {
        assert_eq!(r.status, "failed", "{r:?}");
        let e = r.error.unwrap();
        assert!(
            e.contains("localhost: it resolves to") && e.contains("allow_private"),
            "{e}"
        );
        assert_eq!(r.attempts, 1, "{e}");
    }
}

#[tokio::test]
async fn a_stop_during_the_final_check_leaves_no_partial_archive_in_the_directory() {
    let (env, dl, cfg) = one_archive(32 << 20).await;
    let cfg = cfg.to_str().unwrap();
    let mut child = spawn_binary(&["--config", cfg, "run"]);
    // the whole archive is in the partial file: its check is under way
    let full = || {
        std::fs::read_dir(dl.join(".partial"))
            .ok()
            .and_then(|mut rd| rd.next())
            .and_then(|e| e.ok()?.metadata().ok())
            .is_some_and(|m| m.len() >= (32 << 20) - 4096)
    };
    // (or, if the check was quicker than a look, already in place)
    let placed = || names(&dl).len() > 1;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !full() && !placed() {
        assert!(std::time::Instant::now() < deadline, "no archive came");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let pid = child.id().unwrap().to_string();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("run stopped")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    // in <dir>: nothing, or the whole archive; never a part of one
    let uid = exported_uids(&env).remove(0);
    let want = served_sha(&env, &uid).await;
    for name in names(&dl).into_iter().filter(|n| n != ".partial") {
        assert_eq!(
            sha256_of(&dl.join(&name)),
            want,
            "{name} is not the whole archive"
        );
    }
    // and the next start finishes it, once
    let (code, out, err) = run_binary(&["--config", cfg, "sync"], &[], env.dir.path()).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let r = download_rows(&env).remove(0);
    assert_eq!(
        (r.status.as_str(), r.sha256.as_deref()),
        ("downloaded", Some(want.as_str()))
    );
    assert_eq!(names(&dl.join(".partial")), Vec::<String>::new());
    let downloaded = env
        .events()
        .into_iter()
        .filter(|(t, _)| t == "export.downloaded");
    assert_eq!(downloaded.count(), 1);
}
