//! An operator's commands beside the service: one process works on a mirror at a
//! time, and what a command asks of a running daemon is done once, by the daemon.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

fn partial_len(dl: &Path) -> u64 {
    std::fs::read_dir(dl.join(".partial"))
        .ok()
        .and_then(|mut rd| rd.next())
        .and_then(|e| e.ok()?.metadata().ok())
        .map_or(0, |m| m.len())
}

fn downloaded_events(env: &TestEnv) -> usize {
    env.events()
        .into_iter()
        .filter(|(t, _)| t == "export.downloaded")
        .count()
}

#[tokio::test]
async fn two_syncs_started_together_one_works_and_the_other_exits_1() {
    let mut world = small_world();
    world.exports = 1;
    world.archive_bytes = 4 << 20;
    let env = start(world).await;
    let dl = env.dir.path().join("archives");
    let cfg = env.write_config(
        "test-key-5f3a9c",
        &format!(
            "[downloads]\nbackfill = true\ndir = \"{}\"\n[events]\nemit_initial = true\n",
            dl.display()
        ),
    );
    let cfg = cfg.to_str().unwrap();
    // a slow archive keeps the first sync busy while the second one starts
    env.sim
        .faults(|f| f.storage.slow = Duration::from_millis(200));
    let args = ["--config", cfg, "sync"];
    let (a, b) = tokio::join!(
        run_binary(&args, &[], env.dir.path()),
        run_binary(&args, &[], env.dir.path())
    );
    let mut codes = [a.0, b.0];
    codes.sort();
    assert_eq!(codes, [0, 1], "{a:?}\n{b:?}");
    let (_, _, refused) = if a.0 == 1 { &a } else { &b };
    assert!(
        refused.contains("another avala-mirror (pid ") && refused.contains("`sync`"),
        "{refused}"
    );
    assert_mirror_equals_sim(&env);
    // every record once, and the archive downloaded once
    let events = env.events();
    let mut uids: Vec<&(String, String)> = events.iter().collect();
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), events.len(), "an event was written twice");
    assert_eq!(downloaded_events(&env), 1);
    let archive_gets = env.sim.faults(|f| {
        f.storage
            .log
            .iter()
            .filter(|l| l.status == 200 || l.status == 206)
            .count()
    });
    assert_eq!(archive_gets, 1, "the archive was fetched by one process");
    assert_eq!(partial_len(&dl), 0, "nothing left in .partial");
}

#[tokio::test]
async fn exports_download_beside_the_daemon_is_done_by_the_daemon() {
    let mut world = small_world();
    world.exports = 2;
    world.archive_bytes = 1 << 20;
    let env = start(world).await;
    // without backfill, exports already exported at the first listing stay on the server
    let dl = env.dir.path().join("archives");
    let cfg = env.write_config(
        "test-key-5f3a9c",
        &format!(
            "[schedule]\nexports = \"500ms\"\n[downloads]\nbackfill = false\ndir = \"{}\"\n",
            dl.display()
        ),
    );
    let cfg = cfg.to_str().unwrap();
    let mut daemon = spawn_binary(&["--config", cfg, "run"]);
    let db = env.cfg.store_path.clone();
    wait_until("the daemon's first export listing", || {
        rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT count(*) FROM exports", [], |r| r.get::<_, i64>(0)))
            .unwrap_or(0)
            > 0
    })
    .await;
    let uid = env.sim.world(|w| {
        w.exports
            .iter()
            .find(|e| e.status == "exported")
            .map(|e| e.uid.clone())
            .expect("an exported export")
    });
    let (code, out, err) = run_binary(
        &["--config", cfg, "exports", "download", &uid],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("the running daemon (pid ") && out.contains("downloaded "),
        "{out}"
    );
    let archive_gets = env.sim.faults(|f| {
        f.storage
            .log
            .iter()
            .filter(|l| l.path.contains(&uid) && l.status == 200)
            .count()
    });
    assert_eq!(archive_gets, 1, "one process fetched the archive");
    assert_eq!(
        std::fs::read_dir(&dl).unwrap().count(),
        2,
        "the archive and .partial in {}",
        dl.display()
    );
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
    assert_eq!(downloaded_events(&env), 1);
}

/// The files in `dir` with their owner, size and modification time.
fn listing(dir: &Path) -> Vec<(String, u32, u64, std::time::SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            (name, m.uid(), m.len(), m.modified().unwrap())
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn reading_commands_need_no_key_and_leave_the_service_database_as_it_was() {
    let env = start(small_world()).await;
    env.sync().await.unwrap();
    // the service's state directory: its database, owned by the service's user
    let state = env.dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let db = state.join("mirror.db");
    rusqlite::Connection::open(&env.cfg.store_path)
        .unwrap()
        .execute("VACUUM INTO ?1", [db.to_str().unwrap()])
        .unwrap();
    // in WAL mode like the daemon's, closed cleanly (no -wal, no -shm)
    let wal: String = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(wal, "wal");
    std::os::unix::fs::chown(&db, Some(65534), Some(65534)).unwrap();
    let before = listing(&state);
    // a configuration with no key at all: only store.path matters to these commands
    let cfg = env.dir.path().join("reader.toml");
    std::fs::write(&cfg, format!("[store]\npath = \"{}\"\n", db.display())).unwrap();
    let cfg = cfg.to_str().unwrap();
    let db_arg = db.to_str().unwrap();
    for args in [
        vec!["--config", cfg, "status"],
        vec!["--config", cfg, "status", "--json"],
        vec!["--config", cfg, "events", "--type", "dataset.*"],
        vec!["--config", cfg, "exports", "list"],
        vec!["--db", db_arg, "status"],
        vec!["--db", db_arg, "events", "--json"],
    ] {
        let (code, out, err) = run_binary(&args, &[], env.dir.path()).await;
        assert_eq!(code, 0, "{args:?}\n{out}\n{err}");
        assert!(!err.contains("api key"), "{err}");
    }
    let (_, out, _) = run_binary(&["--db", db_arg, "status"], &[], env.dir.path()).await;
    assert!(out.contains("items") && out.contains("360"), "{out}");
    assert_eq!(
        listing(&state),
        before,
        "no file written, created or migrated"
    );

    // an older schema is not migrated by a reader: it says what to do
    rusqlite::Connection::open(&db)
        .unwrap()
        .pragma_update(None, "user_version", 1)
        .unwrap();
    let (code, _, err) = run_binary(&["--db", db_arg, "status"], &[], env.dir.path()).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("schema version 1") && err.contains("sync"),
        "{err}"
    );
    let version: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 1);
}
