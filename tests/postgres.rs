//! The mirror in PostgreSQL (SPEC §9), against a throwaway cluster: the schema
//! has SQLite's tables with SPEC §9's types, and what only PostgreSQL has or
//! must survive: the advisory lock, the read-only commands from a config with
//! no key, `events --follow` woken by NOTIFY, downloads and deliveries, a kill
//! -9 mid-sync, a server restarted under `run`, a refused login. (The mirror,
//! JSON:API and event tests run on both backends in their own files.)

mod common;

use common::*;

use std::collections::{BTreeMap, BTreeSet, HashMap};

const MIGRATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres");

/// table → column → declared type, from the SQLite mirror after its migrations.
fn sqlite_schema() -> BTreeMap<String, BTreeMap<String, String>> {
    let dir = tempfile::tempdir().unwrap();
    let store = avala_mirror::store::Store::open(&dir.path().join("m.db")).unwrap();
    store.with(|c| {
        let tables: Vec<String> = c
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        tables
            .into_iter()
            .map(|t| {
                let cols = c
                    .prepare(&format!("SELECT name, type FROM pragma_table_info('{t}')"))
                    .unwrap()
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                (t, cols)
            })
            .collect()
    })
}

#[test]
fn the_postgres_schema_has_the_sqlite_mirrors_tables_and_columns() {
    let Some(cluster) = pg::Cluster::start() else {
        return;
    };
    let db = format!("schema_check_{}", std::process::id());
    cluster.psql(&["-c", &format!("DROP DATABASE IF EXISTS {db}")], None);
    cluster.psql(&["-c", &format!("CREATE DATABASE {db}")], None);
    cluster.psql_in(&db, &["-c", "CREATE SCHEMA avala_mirror"], None);
    let mut files: Vec<_> = std::fs::read_dir(MIGRATIONS)
        .unwrap()
        .map(|e| e.unwrap().path().join("up.sql"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for f in &files {
        cluster.psql_in(
            &db,
            &["-f", f.to_str().unwrap()],
            Some("-c search_path=avala_mirror"),
        );
    }
    let rows = cluster.psql_in(
        &db,
        &[
            "-F",
            "\t",
            "-c",
            "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema = 'avala_mirror'",
        ],
        None,
    );
    let mut pg: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for line in rows.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        pg.entry(f[0].into())
            .or_default()
            .insert(f[1].into(), f[2].into());
    }
    let lite = sqlite_schema();
    assert_eq!(
        pg.keys().collect::<BTreeSet<_>>(),
        lite.keys().collect::<BTreeSet<_>>(),
        "the same tables"
    );
    // the mirror's own times; the API's stay text as it sent them
    let own_times = [
        "first_seen_at",
        "last_seen_at",
        "deleted_at",
        "next_attempt_at",
        "delivered_at",
        "completed_at",
        "retry_at",
        "last_attempt_at",
        "last_success_at",
        "full_at",
        "filter_failed_at",
    ];
    for (table, cols) in &lite {
        let theirs = &pg[table];
        let names: BTreeSet<&String> = theirs
            .keys()
            .filter(|c| *c != "id" || cols.contains_key("id"))
            .collect();
        assert_eq!(names, cols.keys().collect(), "{table}: the same columns");
        for (col, lite_type) in cols {
            let pg_type = theirs[col].as_str();
            let api_time = matches!((table.as_str(), col.as_str()), ("exports", "created_at"))
                || col == "updated_at" && !matches!(table.as_str(), "downloads" | "service_state");
            let want: &[&str] = match (col.as_str(), lite_type.as_str()) {
                ("raw" | "payload", _) => &["jsonb"],
                (c, _) if own_times.contains(&c) => &["timestamp with time zone"],
                ("created_at" | "updated_at", _) if !api_time => &["timestamp with time zone"],
                (_, "BLOB") => &["bytea"],
                (_, "INTEGER") => &["bigint", "boolean"],
                _ => &["text"],
            };
            assert!(
                want.contains(&pg_type),
                "{table}.{col}: {pg_type}, expected {want:?}"
            );
        }
        // a position for every record table, as SQLite's rowid is
        if cols.contains_key("raw") {
            assert_eq!(
                theirs.get("id").map(String::as_str),
                Some("bigint"),
                "{table}.id"
            );
        }
    }
}

/// The `[store]` of a mirror in `env`'s PostgreSQL database.
fn store_toml(env: &TestEnv) -> String {
    store_at(&env.pg.as_ref().unwrap().conninfo(&env.pg_db()))
}

fn store_at(conninfo: &str) -> String {
    format!("[store]\nurl = \"{conninfo}\"\nschema = \"avala_mirror\"\n")
}

/// A config for the binary with the mirror in PostgreSQL, and `extra`.
fn pg_config(env: &TestEnv, extra: &str) -> std::path::PathBuf {
    pg_config_at(env, &store_toml(env), extra)
}

fn pg_config_at(env: &TestEnv, store: &str, extra: &str) -> std::path::PathBuf {
    let path = env.write_config("test-key-5f3a9c", extra);
    let toml = std::fs::read_to_string(&path).unwrap();
    // the store section the helper wrote names a SQLite file: replace it
    let start = toml.find("[store]").unwrap();
    let end = toml[start..]
        .find("\n[")
        .map_or(toml.len(), |e| start + e + 1);
    let toml = format!("{}{}{}", &toml[..start], store, &toml[end..]);
    std::fs::write(&path, toml).unwrap();
    path
}

async fn pg_env() -> Option<TestEnv> {
    let cluster = pg::Cluster::start()?;
    Some(start_on(small_world(), Some(std::sync::Arc::new(cluster))).await)
}

#[tokio::test]
async fn downloads_and_deliveries_work_on_postgres() {
    use avala_mirror::config::SinkConfig;
    use avala_mirror::events::deliver::Deliverer;
    use avala_mirror::events::sinks::Sink;
    let Some(env) = pg_env().await else { return };
    env.sync().await.unwrap();
    let uid = env.sim.world(|w| {
        let e = w.add_export();
        w.exports[e].status = "exported".into();
        w.exports[e].uid.clone()
    });
    env.sync().await.unwrap();
    let store = env.open().await;
    let s = env.syncer_on().await;
    let done = avala_mirror::download::Downloader::new(&env.cfg, store.clone(), s.client)
        .unwrap()
        .drain()
        .await;
    assert_eq!(done.len(), 1);
    let row = &env.query(&format!(
        "SELECT status, path, sha256, bytes FROM downloads WHERE export_uid = '{uid}'"
    ))[0];
    assert_eq!(row["status"], "downloaded");
    let file = std::fs::read(row["path"].as_str().unwrap()).unwrap();
    use sha2::Digest;
    assert_eq!(row["sha256"], hex::encode(sha2::Sha256::digest(&file)));
    assert_eq!(row["bytes"], file.len());
    let types: Vec<String> = env.events().into_iter().map(|(t, _)| t).collect();
    assert_eq!(types, ["export.created", "export.downloaded"]);

    // a file sink from the start gets both, once, in order; a rerun sends nothing
    let out = env.dir.path().join("events.jsonl");
    let sink = Sink::from_config(&SinkConfig {
        kind: "file".into(),
        name: "file".into(),
        path: Some(out.clone()),
        from_start: true,
        events: vec!["*".into()],
        ..Default::default()
    })
    .unwrap();
    let d = Deliverer::new(store.clone(), vec![sink], vec![std::time::Duration::ZERO]);
    d.register().await.unwrap();
    assert!(d.flush(std::time::Duration::from_secs(10)).await.is_empty());
    assert!(d.flush(std::time::Duration::from_secs(2)).await.is_empty());
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids, env.event_ids());
    let delivered = env.query("SELECT count(*) AS n FROM deliveries WHERE status = 'delivered'");
    assert_eq!(delivered[0]["n"], 2);

    // retention: settled events go with their deliveries, tombstones after keep_deleted
    let gone = env.rows("items").into_keys().next().unwrap();
    let now = avala_mirror::store::now_rfc3339();
    store
        .tombstone(avala_mirror::config::Resource::Items, &gone, false, &now)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let zero = std::time::Duration::ZERO;
    let pruned = store.prune(zero, zero, vec!["file".into()]).await.unwrap();
    assert_eq!(pruned, (2, 1));
    assert!(env.events().is_empty());
    let left = env.query("SELECT count(*) AS n FROM deliveries");
    assert_eq!(left[0]["n"], 0);
    assert!(
        env.query(&format!("SELECT 1 FROM items WHERE uid = '{gone}'"))
            .is_empty()
    );
}

#[tokio::test]
async fn a_second_writer_is_refused_naming_the_holder() {
    use avala_mirror::store::lock::{LockError, WriterLock};
    let Some(env) = pg_env().await else { return };
    env.sync().await.unwrap();
    let at = env.cfg.location();
    let held = WriterLock::acquire_at(&at, "run").await.unwrap();
    match WriterLock::acquire_at(&at, "sync").await {
        Err(LockError::Locked(l)) => {
            let pid = std::process::id().to_string();
            assert!(
                l.holder.contains(&pid) && l.holder.contains("`run`"),
                "{}",
                l.holder
            );
            assert!(l.is_daemon);
        }
        other => panic!("a second writer got {other:?}"),
    }
    // the binary says so, exit 1, and writes nothing
    let cfg = pg_config(&env, "");
    let before = env.query("SELECT count(*) AS n FROM sync_state")[0]["n"].clone();
    let (code, _, err) = run_binary(
        &["--config", cfg.to_str().unwrap(), "sync"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("another avala-mirror") && err.contains("`run`"),
        "{err}"
    );
    assert!(!err.contains("test-key-5f3a9c"));
    assert_eq!(
        env.query("SELECT count(*) AS n FROM sync_state")[0]["n"],
        before
    );
    drop(held);
    let lock = WriterLock::acquire_at(&at, "sync").await;
    assert!(lock.is_ok(), "released with its session");
}

#[tokio::test]
async fn read_only_commands_need_no_key_and_follow_wakes_on_notify() {
    use tokio::io::AsyncBufReadExt;
    let Some(env) = pg_env().await else { return };
    env.sync().await.unwrap();
    // only [store]: no API key anywhere
    let cfg = env.dir.path().join("reader.toml");
    std::fs::write(&cfg, store_toml(&env)).unwrap();
    let c = cfg.to_str().unwrap();
    let (code, out, err) =
        run_binary(&["--config", c, "status", "--json"], &[], env.dir.path()).await;
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["resources"]["items"]["present"], 6 * 60);
    assert!(
        status["database"]
            .as_str()
            .unwrap()
            .contains("schema avala_mirror")
    );
    let (code, out, err) = run_binary(
        &["--config", c, "exports", "list", "--json"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!((code, out.lines().count()), (0, 3), "{err}");

    let mut follow = tokio::process::Command::new(env!("CARGO_BIN_EXE_avala-mirror"))
        .args(["--config", c, "events", "--follow", "--json"])
        .env_remove("AVALA_API_KEY")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    // it is listening once it has read the (empty) log: give it a moment
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let store = env.open().await;
    let uid = env.rows("items").into_keys().next().unwrap();
    let now = avala_mirror::store::now_rfc3339();
    let committed = std::time::Instant::now();
    assert!(
        store
            .tombstone(avala_mirror::config::Resource::Items, &uid, true, &now)
            .await
            .unwrap()
    );
    let line = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
        .await
        .expect("--follow saw the event")
        .unwrap()
        .unwrap();
    let seen = committed.elapsed();
    let e: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (e["type"].as_str(), e["data"]["uid"].as_str()),
        (Some("item.deleted"), Some(uid.as_str()))
    );
    // woken by the commit's NOTIFY, not a poll (the benchmark measures it closely)
    assert!(seen < std::time::Duration::from_secs(1), "{seen:?}");
}

#[tokio::test]
async fn kill_9_mid_sync_then_a_rerun_converges_with_nothing_doubled() {
    let Some(env) = pg_env().await else { return };
    env.sim
        .faults(|f| f.latency = std::time::Duration::from_millis(40));
    let cfg = pg_config(&env, "");
    let c = cfg.to_str().unwrap();
    let mut first = spawn_binary(&["--config", c, "sync"]);
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    env.sim.faults(|f| f.latency = std::time::Duration::ZERO);
    let (code, _, err) = run_binary(&["--config", c, "sync"], &[], env.dir.path()).await;
    assert_eq!(code, 0, "{err}");
    assert_mirror_equals_sim(&env);
    assert!(
        env.events().is_empty(),
        "the baseline stays silent: {:?}",
        env.events()
    );
    // and a change after it is one event
    let seq = env.sim.world(|w| {
        let s = w.sequences_of(0)[0];
        w.advance_sequence(s);
        w.sequences[s].uid.clone()
    });
    let (code, _, err) = run_binary(&["--config", c, "sync"], &[], env.dir.path()).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(env.events(), [("sequence.status_changed".to_string(), seq)]);
}

#[tokio::test]
async fn postgres_restarted_under_run_is_a_fault_and_nothing_is_lost_or_doubled() {
    let Some(env) = pg_env().await else { return };
    if !env.pg.as_ref().unwrap().throwaway() {
        eprintln!(
            "SKIPPED: restarting the server needs a throwaway cluster, not AVALA_MIRROR_TEST_PG's"
        );
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let fast = "[schedule]\ndatasets = \"300ms\"\nsequences = \"300ms\"\nitems = \"300ms\"\nslices = \"300ms\"\nexports = \"300ms\"\n";
    let cfg = pg_config(
        &env,
        &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n{fast}"),
    );
    let log = std::fs::File::create(env.dir.path().join("daemon.log")).unwrap();
    let mut daemon = tokio::process::Command::new(env!("CARGO_BIN_EXE_avala-mirror"))
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .env_remove("AVALA_API_KEY")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let daemon_log =
        || std::fs::read_to_string(env.dir.path().join("daemon.log")).unwrap_or_default();
    let cluster = env.pg.clone().unwrap();
    // every collection past its silent baseline (the change below must be an event)
    let synced = || {
        let migrated = env.query("SELECT to_regclass('sync_state') IS NOT NULL AS ok");
        let done = || {
            let r = env.query(
                "SELECT count(DISTINCT resource) AS n, bool_and(baseline_done) AS all FROM sync_state",
            );
            r[0]["n"].as_i64() == Some(5) && r[0]["all"] == true
        };
        migrated[0]["ok"] == true && done()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !synced() {
        assert!(
            std::time::Instant::now() < deadline,
            "no first cycle: {}",
            daemon_log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let health = || async {
        let r = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .ok()?;
        Some((
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.ok()?,
        ))
    };
    cluster.stop();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some((503, body)) = health().await
            && body["status"] == "database_unavailable"
        {
            assert!(body["database"]["error"].is_string(), "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/healthz never said the database is gone"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon kept running"
    );
    // a change while the database is away is mirrored once it is back
    let seq = env.sim.world(|w| {
        let s = w.sequences_of(1)[0];
        w.advance_sequence(s);
        w.sequences[s].uid.clone()
    });
    cluster.restart();
    let changed = || env.events().iter().any(|(_, u)| *u == seq);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !changed() {
        let log = daemon_log();
        assert!(
            std::time::Instant::now() < deadline,
            "the change after the restart was not mirrored: {log}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while health().await.map(|(c, _)| c) != Some(200) {
        assert!(
            std::time::Instant::now() < deadline,
            "/healthz did not recover"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // /metrics reads the PostgreSQL mirror too
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let last = metrics
        .lines()
        .find(|l| {
            l.starts_with("avala_mirror_last_success_timestamp_seconds{resource=\"sequences\"}")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    let at: f64 = last.rsplit(' ').next().unwrap().parse().unwrap();
    let now = std::time::UNIX_EPOCH.elapsed().unwrap().as_secs_f64();
    assert!((now - at).abs() < 60.0, "{last}");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(
        env.events(),
        [("sequence.status_changed".to_string(), seq)],
        "once"
    );
    assert_mirror_equals_sim(&env);
    daemon.start_kill().unwrap();
}

#[tokio::test]
async fn a_refused_login_or_two_places_is_a_configuration_error() {
    let Some(env) = pg_env().await else { return };
    let cluster = env.pg.clone().unwrap();
    let conninfo = cluster
        .conninfo(&env.pg_db())
        .replace("user=avala", "user=nobody_here");
    let cfg = pg_config_at(&env, &store_at(&conninfo), "");
    let (code, _, err) = run_binary(
        &["--config", cfg.to_str().unwrap(), "sync"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("refused") && err.contains("nobody_here"),
        "{err}"
    );
    // and so it is for the commands that only read
    let (code, _, err) = run_binary(
        &["--config", cfg.to_str().unwrap(), "status"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("refused"), "{err}");
    let both = env.dir.path().join("both.toml");
    std::fs::write(
        &both,
        format!(
            "[store]\npath = \"m.db\"\nurl = \"{}\"\n",
            cluster.conninfo("x")
        ),
    )
    .unwrap();
    let (code, _, err) = run_binary(
        &["--config", both.to_str().unwrap(), "status"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("store.path") && err.contains("store.url"),
        "{err}"
    );
}

#[tokio::test]
async fn text_postgres_refuses_stops_nothing() {
    // JSON may carry U+0000 (`\u0000`); PostgreSQL's text and jsonb refuse it
    let Some(env) = pg_env().await else { return };
    env.sync().await.unwrap();
    let uid = env.sim.world(|w| {
        let s = w.sequences_of(0)[0];
        w.sequences[s].key = "seq\u{0}017".into();
        w.sequences[s].status = "review\u{0}2d".into();
        w.sequences[s].uid.clone()
    });
    let reports = env.sync().await.unwrap();
    assert!(reports.iter().all(|r| r.failures.is_empty()), "{reports:?}");
    let row = &env.query(&format!(
        "SELECT status, raw FROM sequences WHERE uid = '{uid}'"
    ))[0];
    assert_eq!(row["status"], "review\u{FFFD}2d");
    assert_eq!(row["raw"]["key"], "seq\u{FFFD}017");
    assert_eq!(env.events(), [("sequence.status_changed".to_string(), uid)]);
    // and the next cycle finds nothing changed
    let reports = env.sync().await.unwrap();
    assert!(
        reports
            .iter()
            .all(|r| r.failures.is_empty() && r.updated == 0)
    );
    assert_eq!(env.events().len(), 1);
}

#[tokio::test]
async fn tls_follows_sslmode_with_rustls() {
    use avala_mirror::store::postgres::{Password, Target};
    let Some(cluster) = pg::Cluster::start_tls() else {
        return;
    };
    let env = HashMap::new();
    let open = |options: &str| {
        let url = cluster.tls_url("postgres", options);
        let target = Target::parse(
            &url,
            "avala_mirror",
            Password {
                file: None,
                env: &env,
            },
        )
        .unwrap();
        async move { avala_mirror::store::Store::open_postgres(&target).await }
    };
    let encrypted = || {
        cluster
            .psql(
                &[
                    "-c",
                    "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                     WHERE s.ssl AND a.application_name = 'avala-mirror'",
                ],
                None,
            )
            .trim()
            .parse::<u32>()
            .unwrap()
    };
    // require: encrypted, the certificate (of a CA nobody trusts) not checked, as in libpq
    let store = open("sslmode=require").await.unwrap();
    assert!(encrypted() >= 1);
    drop(store);
    // verify-full with the CA that signed it
    let ca = cluster.ca();
    let store = open(&format!("sslmode=verify-full&sslrootcert={}", ca.display()))
        .await
        .unwrap();
    assert!(store.status().await.is_ok());
    drop(store);
    // verify-full against the system's roots: refused, and the message says why
    let err = open("sslmode=verify-full")
        .await
        .err()
        .expect("an untrusted certificate");
    assert!(
        format!("{err:#}").to_lowercase().contains("certificate"),
        "{err:#}"
    );
}

/// The store's batch contract, on both backends: a first listing's batch with
/// rows already there (one unchanged, one changed, one deleted since) and a
/// uid listed twice; every row holds its own record and `seen` has each row.
#[tokio::test]
async fn a_first_listing_batch_finds_the_rows_already_there_on_both_backends() {
    use avala_mirror::config::Resource;
    use avala_mirror::sync::diff::Incoming;
    use roaring::RoaringTreemap;
    let rec = |uid: &str, version: u32| {
        let raw = format!(r#"{{"uid":"{uid}","status":"pending","version":{version}}}"#);
        Incoming::from_text(&raw, "o", "d")
    };
    for backend in backends() {
        let env = start_on(small_world(), backend).await;
        let store = env.open().await;
        let now = "2026-11-23T10:00:00Z";
        let apply = async |recs: Vec<Incoming>, seen: RoaringTreemap| {
            let batch = store.batch();
            let applied = batch
                .apply_pages(
                    Resource::Items,
                    vec![recs],
                    |_| false,
                    None,
                    true,
                    now,
                    seen,
                )
                .await
                .unwrap();
            // committed before another connection reads (SQLite's batch waits a second)
            batch.commit().await.unwrap();
            applied
        };
        let before = vec![rec("u105", 1), rec("u250", 1), rec("u330", 1)];
        apply(before, RoaringTreemap::new()).await;
        assert!(
            store
                .tombstone(Resource::Items, "u330", false, now)
                .await
                .unwrap()
        );
        let mut listing: Vec<Incoming> = (0..350)
            .map(|n| rec(&format!("u{n}"), if n == 250 { 2 } else { 1 }))
            .collect();
        listing.insert(121, rec("u120", 1));
        let applied = apply(listing.clone(), RoaringTreemap::new()).await;
        let out = applied.outcome;
        assert_eq!(
            (out.created, out.updated, out.unchanged, out.duplicates),
            (348, 1, 2, 1),
            "{}",
            env.backend()
        );
        let id = if env.pg.is_some() { "id" } else { "rowid" };
        let rows = env.query(&format!(
            "SELECT {id} AS id, uid, raw, deleted_at FROM items"
        ));
        assert_eq!(rows.len(), 350);
        for r in &rows {
            let uid = r["uid"].as_str().unwrap();
            let listed = listing.iter().find(|l| &*l.uid == uid).unwrap();
            assert_eq!(r["raw"], listed.value(), "{uid}");
            assert!(r["deleted_at"].is_null(), "{uid}");
            assert!(applied.seen.contains(r["id"].as_u64().unwrap()), "{uid}");
        }
        assert_eq!(applied.seen.len(), 350);
    }
}

/// A value PostgreSQL refuses (jsonb has no number past 1e131072) skips that
/// record only, reported like a malformed one, never the batch around it.
#[tokio::test]
async fn a_value_postgres_refuses_skips_only_its_record() {
    use avala_mirror::config::Resource;
    use avala_mirror::sync::diff::Incoming;
    use roaring::RoaringTreemap;
    let Some(env) = pg_env().await else { return };
    let store = env.open().await;
    let recs: Vec<Incoming> = (0..5)
        .map(|n| {
            let v = if n == 2 { "1e1000000" } else { "1" };
            let raw = format!(r#"{{"uid":"u{n}","status":"pending","v":{v}}}"#);
            Incoming::from_text(&raw, "o", "d")
        })
        .collect();
    let now = "2026-11-23T10:00:00Z";
    for mostly_new in [true, false] {
        let applied = store
            .batch()
            .apply_pages(
                Resource::Items,
                vec![recs.clone()],
                |_| true,
                None,
                mostly_new,
                now,
                RoaringTreemap::new(),
            )
            .await
            .unwrap();
        let out = applied.outcome;
        assert_eq!(out.refused, 1, "{out:?}");
        // the first time the four others are new; then they are as stored
        let (created, unchanged) = if mostly_new { (4, 0) } else { (0, 4) };
        assert_eq!(
            (out.created, out.unchanged),
            (created, unchanged),
            "{out:?}"
        );
    }
    let uids: Vec<String> = env
        .query("SELECT uid FROM items ORDER BY uid")
        .into_iter()
        .map(|r| r["uid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(uids, ["u0", "u1", "u3", "u4"]);
    assert_eq!(
        env.events().len(),
        4,
        "an event for each record stored, none twice"
    );
}

/// An operator's open transaction that holds a table makes a sync wait for
/// its lock a bounded time only (`lock_timeout`, 60 s unless the URL's
/// `options` say): the scope fails and is tried again, nothing hangs.
#[tokio::test]
async fn a_lock_someone_holds_is_waited_out_for_a_bounded_time() {
    let Some(env) = pg_env().await else { return };
    env.sync().await.unwrap();
    let cluster = env.pg.clone().unwrap();
    let mut holder = cluster.session(
        &env.pg_db(),
        "LOCK TABLE avala_mirror.items IN ACCESS EXCLUSIVE MODE",
    );
    let held = || {
        !env.query(
            "SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
             WHERE c.relname = 'items' AND l.mode = 'AccessExclusiveLock' AND l.granted",
        )
        .is_empty()
    };
    wait_until("the operator's lock", held).await;
    let conninfo = format!(
        "{} options='-c lock_timeout=1s'",
        cluster.conninfo(&env.pg_db())
    );
    let cfg = pg_config_at(&env, &store_at(&conninfo), "");
    let (code, out, err) = run_binary(
        &["--config", cfg.to_str().unwrap(), "sync"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(format!("{out}{err}").contains("lock timeout"), "{out}{err}");
    assert!(
        holder.try_wait().unwrap().is_none(),
        "sync returned while the lock was still held"
    );
    assert!(held());
    holder.kill().unwrap();
    holder.wait().unwrap();
    cluster.psql(
        &["-c", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(120)%' AND pid <> pg_backend_pid()"],
        None,
    );
    wait_until("the lock to go", || !held()).await;
    let (code, out, err) = run_binary(
        &["--config", cfg.to_str().unwrap(), "sync"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
}
