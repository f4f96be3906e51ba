//! The binary as a user runs it: exit codes, messages, no key anywhere.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

#[tokio::test]
async fn sync_status_and_events_from_the_command_line() {
    let env = start(small_world()).await;
    let cfg = env.write_config("test-key-5f3a9c\n", "");
    let cfg = cfg.to_str().unwrap();
    let (code, out, err) = run_binary(&["--config", cfg, "sync"], &[], env.dir.path()).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("items            listed 360"), "{out}");

    env.sim.world(|w| {
        let s = w.sequences_of(0)[1];
        w.sequences[s].status = "customer_review".into();
    });
    let (code, out, _) = run_binary(
        &["--config", cfg, "sync", "--only", "sequences"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0, "{out}");

    let (code, out, _) = run_binary(
        &["--config", cfg, "events", "--type", "sequence.*"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("→ customer_review"), "{out}");

    let (code, out, _) =
        run_binary(&["--config", cfg, "events", "--json"], &[], env.dir.path()).await;
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["data"]["new_status"], "customer_review");

    let (code, out, _) =
        run_binary(&["--config", cfg, "status", "--json"], &[], env.dir.path()).await;
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["resources"]["items"]["present"], 360);
    assert_eq!(
        v["resources"]["sequences"]["by_status"]["customer_review"]
            .as_i64()
            .map(|n| n >= 1),
        Some(true)
    );
    assert_eq!(v["events"]["total"], 1);
}

#[tokio::test]
async fn rejected_key_exits_3_and_the_key_appears_nowhere() {
    let env = start(small_world()).await;
    let wrong = "sk-live-WRONG-8c1d2e";
    let cfg = env.write_config(wrong, "");
    let (code, out, err) = run_binary(
        &["--config", cfg.to_str().unwrap(), "sync"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(err.contains("rejected the API key"), "{err}");
    assert!(!out.contains(wrong) && !err.contains(wrong));
    // verbose logs too
    let (code, out, err) = run_binary(
        &["--config", cfg.to_str().unwrap(), "sync"],
        &[("RUST_LOG", "trace")],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 3);
    assert!(
        !out.contains(wrong) && !err.contains(wrong),
        "key leaked in trace logs"
    );
    let db = std::fs::read(&env.cfg.store_path).unwrap();
    assert!(
        !String::from_utf8_lossy(&db).contains(wrong),
        "key stored in the DB"
    );
}

#[tokio::test]
async fn key_never_reaches_the_database_or_events() {
    let env = start(small_world()).await;
    env.sim.world(|w| {
        w.sequences[0].status = "final_review".into();
    });
    let cfg = env.write_config("test-key-5f3a9c", "[events]\nemit_initial = true\n");
    let (code, _, err) = run_binary(
        &["--config", cfg.to_str().unwrap(), "sync"],
        &[("RUST_LOG", "debug")],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("test-key-5f3a9c"));
    let dir = env.cfg.store_path.parent().unwrap();
    for f in std::fs::read_dir(dir).unwrap() {
        let path = f.unwrap().path();
        if path.to_string_lossy().contains("mirror.db") {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains("test-key-5f3a9c"),
                "{}",
                path.display()
            );
        }
    }
}

#[tokio::test]
async fn config_errors_exit_2_naming_the_key_before_any_request() {
    let env = start(small_world()).await;
    let cases: [(&str, &str); 6] = [
        ("[schedule]\nitems = \"every hour\"\n", "schedule.items"),
        ("[downloads]\nenable = true\n", "enable"),
        ("[events]\nemit_inital = true\n", "emit_inital"),
        ("[[sinks]]\ntype = \"pager\"\n", "sinks[0].type"),
        // a store whose directory is missing is not created behind the user's back
        (
            "[downloads]\ndir = \"/nonexistent-avala/exports\"\n",
            "downloads.dir: the directory /nonexistent-avala does not exist",
        ),
        // two type errors in two sections: the second is named too
        (
            "[log]\nlevel = [\"a\"]\n[downloads]\nconcurrency = \"two\"\n",
            "[downloads]",
        ),
    ];
    for (extra, needle) in cases {
        let cfg = env.write_config("test-key-5f3a9c", extra);
        let (code, out, err) = run_binary(
            &["--config", cfg.to_str().unwrap(), "sync"],
            &[],
            env.dir.path(),
        )
        .await;
        assert_eq!(code, 2, "{extra}: {out}\n{err}");
        assert!(err.contains(needle), "{extra}: expected {needle} in {err}");
    }
    let cfg = env.write_config("test-key-5f3a9c", "");
    let (code, _, err) = run_binary(
        &["--config", cfg.to_str().unwrap(), "sync"],
        &[("AVALA_MIRROR__STORE__PATH", "/nonexistent-avala/mirror.db")],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("store.path: the directory /nonexistent-avala does not exist"),
        "{err}"
    );
    assert!(!std::path::Path::new("/nonexistent-avala").exists());
    // http:// to a non-loopback host, and a missing key
    let cfg = env.write_config("test-key-5f3a9c", "");
    let (code, _, err) = run_binary(
        &["--config", cfg.to_str().unwrap(), "sync"],
        &[(
            "AVALA_MIRROR__API__BASE_URL",
            "http://api.example.com/api/v1",
        )],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 2);
    assert!(
        err.contains("api.base_url") && err.contains("loopback"),
        "{err}"
    );
    let cfg = env.write_config("", "");
    let (code, _, err) = run_binary(
        &["--config", cfg.to_str().unwrap(), "sync"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 2);
    assert!(err.contains("api.api_key_file"), "{err}");
    let (code, _, err) = run_binary(
        &["--config", "/nonexistent/avala.toml", "sync"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/avala.toml"), "{err}");

    assert_eq!(
        env.sim.faults(|f| f.log.len()),
        0,
        "a configuration error is reported before any network call"
    );
}

#[tokio::test]
async fn a_failing_scope_makes_sync_exit_1() {
    let env = start(small_world()).await;
    env.sim
        .faults(|f| f.fail("/datasets/acme-ai/batch-001/items/", None, 404, u32::MAX));
    let cfg = env.write_config("test-key-5f3a9c", "");
    let (code, out, _) = run_binary(
        &["--config", cfg.to_str().unwrap(), "sync"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("failed items:acme-ai/batch-001"), "{out}");
    let (code, out, _) = run_binary(
        &["--config", cfg.to_str().unwrap(), "status"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 1);
    assert!(out.contains("failing items:acme-ai/batch-001"), "{out}");
}

#[tokio::test]
async fn check_reports_reachability_and_rate_headers() {
    let env = start(small_world()).await;
    env.sim.faults(|f| f.rate_limit = Some((100.0, 50)));
    let cfg = env.write_config("test-key-5f3a9c", "");
    let (code, out, err) = run_binary(
        &["--config", cfg.to_str().unwrap(), "check"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("datasets of johndoe: 3 records"), "{out}");
    assert!(out.contains("x-ratelimit-limit: 50"), "{out}");
    assert_eq!(env.sim.faults(|f| f.log.len()), 1, "one API call");
}

#[tokio::test]
async fn logs_are_json_under_systemd_or_on_request_with_the_configured_level() {
    let env = start(small_world()).await;
    let cfg = env.write_config("test-key-5f3a9c", "[log]\nlevel = \"warn\"\n");
    let cfg = cfg.to_str().unwrap();
    env.sim.faults(|f| f.fail("/exports/", None, 503, 1));
    // $JOURNAL_STREAM (stderr is the journal) means JSON; RUST_LOG decides the level
    let (code, _, err) = run_binary(
        &["--config", cfg, "sync"],
        &[("JOURNAL_STREAM", "8:12345"), ("RUST_LOG", "info")],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.iter().any(|l| l["level"] == "INFO"), "{err}");
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "WARN"
                && l["message"].as_str().unwrap_or("").contains("retrying")),
        "{err}"
    );
    // without RUST_LOG, `log.level = "warn"` hides info; --log-format text overrides the journal
    env.sim.faults(|f| f.fail("/exports/", None, 503, 1));
    let (_, _, err) = run_binary(
        &["--config", cfg, "--log-format", "text", "sync"],
        &[("JOURNAL_STREAM", "8:12345")],
        env.dir.path(),
    )
    .await;
    assert!(!err.contains("INFO") && err.contains("WARN"), "{err}");
    assert!(!err.trim_start().starts_with('{'), "{err}");
}

#[tokio::test]
async fn run_polls_on_schedule_and_stops_cleanly_on_sigterm() {
    let env = start(small_world()).await;
    let cfg = env.write_config(
        "test-key-5f3a9c",
        "[schedule]\ndatasets = \"1s\"\nsequences = \"200ms\"\nitems = \"1s\"\nslices = \"1s\"\nexports = \"200ms\"\n",
    );
    let mut child = spawn_binary(&["--config", cfg.to_str().unwrap(), "run"]);
    let db = env.cfg.store_path.clone();
    let items = |db: &std::path::Path| -> i64 {
        rusqlite::Connection::open(db)
            .and_then(|c| c.query_row("SELECT count(*) FROM items", [], |r| r.get(0)))
            .unwrap_or(0)
    };
    wait_until("the first cycle", || items(&db) == 360).await;
    // a change in the simulator shows up as an event without another command
    let uid = env.sim.world(|w| {
        let s = w.sequences_of(0)[0];
        w.sequences[s].status = "customer_review".into();
        w.sequences[s].uid.clone()
    });
    wait_until("the status change event", || {
        env.events()
            .iter()
            .any(|(t, u)| t == "sequence.status_changed" && *u == uid)
    })
    .await;

    // logrotate's SIGHUP does not stop it
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    let uid = env.sim.world(|w| {
        let s = w.sequences_of(1)[0];
        w.sequences[s].status = "final_review".into();
        w.sequences[s].uid.clone()
    });
    wait_until("a change detected after SIGHUP", || {
        env.events().iter().any(|(_, u)| *u == uid)
    })
    .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP stopped the daemon"
    );

    std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(15), child.wait())
        .await
        .expect("stopped in time")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let check: String = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[tokio::test]
async fn kill_9_mid_sync_then_restart_loses_and_doubles_no_event() {
    let mut world = small_world();
    world.items_per_dataset = 400;
    let env = start(world).await;
    let cfg = env.write_config("test-key-5f3a9c", "");
    let cfg = cfg.to_str().unwrap();
    let (code, _, _) = run_binary(&["--config", cfg, "sync"], &[], env.dir.path()).await;
    assert_eq!(code, 0);
    // many changes, then a slow API so the kill lands in the middle of the item listings
    let changed: Vec<String> = env.sim.world(|w| {
        (0..6)
            .flat_map(|ds| (0..400).step_by(7).map(move |i| (ds, i)))
            .map(|(ds, i)| {
                let next = if w.item_json(ds, i)["status"] == "completed" {
                    "pending"
                } else {
                    "completed"
                };
                w.set_item_status(ds, i, next);
                w.item_uid(ds, i)
            })
            .collect()
    });
    env.sim.faults(|f| f.slow = Duration::from_millis(30));
    let mut child = spawn_binary(&["--config", cfg, "sync"]);
    wait_until("some events", || env.events().len() >= 20).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let partial = env.events().len();
    assert!(
        partial < changed.len(),
        "killed mid-way ({partial} of {} events)",
        changed.len()
    );

    env.sim.faults(|f| f.slow = Duration::ZERO);
    let (code, out, err) = run_binary(&["--config", cfg, "sync"], &[], env.dir.path()).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let events = env.events();
    let mut uids: Vec<&String> = events.iter().map(|(_, u)| u).collect();
    uids.sort();
    let mut want: Vec<&String> = changed.iter().collect();
    want.sort();
    assert_eq!(uids, want, "each change exactly once");
    assert!(events.iter().all(|(t, _)| t == "item.status_changed"));
    assert_mirror_equals_sim(&env);
}

#[tokio::test]
async fn the_command_simulate_prints_works_as_printed() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = tokio::process::Command::new(env!("CARGO_BIN_EXE_avala-mirror"))
        .args(["simulate", "--listen", "127.0.0.1:0", "--tick", "0s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(sim.stdout.take().unwrap()));
    let printed = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(cmd) = line.trim().strip_prefix("mirror it with: ") {
                return cmd.to_string();
            }
        }
        panic!("no command printed")
    })
    .await
    .unwrap();
    // VAR=value … avala-mirror sync, run as a shell would, in an empty folder
    let words: Vec<&str> = printed.split_whitespace().collect();
    let vars: Vec<(&str, &str)> = words.iter().filter_map(|w| w.split_once('=')).collect();
    assert_eq!(words[vars.len()..], ["avala-mirror", "sync"], "{printed}");
    let (code, out, err) = run_binary(&["sync"], &vars, dir.path()).await;
    assert_eq!(code, 0, "{printed}\n{out}\n{err}");
    assert!(
        out.contains("items") && out.contains("API requests"),
        "{out}"
    );
    assert!(dir.path().join("mirror.db").exists());
}

#[tokio::test]
async fn check_answers_within_seconds_when_the_api_is_down() {
    let env = start(small_world()).await;
    // a port nothing listens on, and a retry ladder that would take minutes
    let port = nothing_listens().port();
    let cfg = env.write_config("test-key-5f3a9c", "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            &env.sim.base_url().to_string(),
            &format!("http://127.0.0.1:{port}/api/v1"),
        )
        .replace("backoff_min = \"5ms\"", "backoff_min = \"10s\"")
        .replace("backoff_max = \"20ms\"", "backoff_max = \"60s\"");
    std::fs::write(&cfg, text).unwrap();
    check_fails_within(&env, &cfg, "could not connect", Duration::from_secs(8)).await;
}

/// `check` with `cfg` exits 1, saying `says`, in less than `within`.
async fn check_fails_within(env: &TestEnv, cfg: &Path, says: &str, within: Duration) {
    let started = std::time::Instant::now();
    let (code, out, err) = run_binary(
        &["--config", cfg.to_str().unwrap(), "check"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains(says), "{err}");
    assert!(started.elapsed() < within, "took {:?}", started.elapsed());
}

#[tokio::test]
async fn check_answers_within_ten_seconds_when_the_api_only_says_429() {
    let env = start(small_world()).await;
    // every request throttled, each 429 asking for 3 s: 30 of them would take 90 s
    env.sim.faults(|f| {
        f.rate_limit = Some((0.0, 0));
        f.retry_after_secs = 3;
    });
    let cfg = env.write_config("test-key-5f3a9c", "");
    check_fails_within(&env, &cfg, "no answer within 10 s", Duration::from_secs(13)).await;
}

#[tokio::test]
async fn sync_shows_its_progress_on_a_terminal() {
    let env = start(small_world()).await;
    env.sim.faults(|f| f.latency = Duration::from_millis(30));
    let cfg = env.write_config("test-key-5f3a9c", "");
    let bin = env!("CARGO_BIN_EXE_avala-mirror");
    // `script` runs the command on a pseudo-terminal and copies what it shows
    let cmd = format!("{bin} --config {} sync", cfg.display());
    let out = tokio::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env_remove("AVALA_API_KEY")
        .output()
        .await
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("records ("), "no progress shown: {shown}");
    // and none in a pipe, where it would only be noise
    let (code, piped, err) = run_binary(
        &["--config", cfg.to_str().unwrap(), "sync"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0);
    assert!(
        !piped.contains("records (") && !err.contains("records ("),
        "{err}"
    );
}

#[tokio::test]
async fn a_dataset_slug_in_scope_that_names_nothing_is_warned_about() {
    let env = start(small_world()).await;
    let cfg = env.write_config("test-key-5f3a9c", "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[scope]\n",
        "[scope]\ndatasets = [\"batch-001\", \"bacth-002\"]\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let (code, out, err) = run_binary(
        &["--config", cfg.to_str().unwrap(), "sync"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("no dataset named \"bacth-002\""), "{err}");
    assert!(!err.contains("no dataset named \"batch-001\""), "{err}");
}

#[tokio::test]
async fn sync_prunes_what_retention_no_longer_keeps() {
    let env = start(small_world()).await;
    let cfg = env.write_config("test-key-5f3a9c", "[events]\nemit_initial = true\n");
    let cfg = cfg.to_str().unwrap();
    let retention = [
        ("AVALA_MIRROR__EVENTS__RETENTION", "30d"),
        ("AVALA_MIRROR__STORE__KEEP_DELETED", "30d"),
    ];
    let (code, out, err) = run_binary(&["--config", cfg, "sync"], &retention, env.dir.path()).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let ids = env.event_ids();
    assert!(ids.len() > 100);
    // the first 100 events were written 40 days ago, and an export gone upstream
    // was tombstoned 40 days ago
    env.store().with(|c| {
        c.execute_batch(
            "UPDATE events SET created_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '-40 days') WHERE seq <= 100;
             INSERT INTO exports (uid, hash, raw, first_seen_at, last_seen_at, deleted_at)
               VALUES ('gone', x'00', '{}', 't', 't', strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '-40 days'));",
        )
        .unwrap()
    });
    let (code, out, err) = run_binary(&["--config", cfg, "sync"], &retention, env.dir.path()).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let kept = env.event_ids();
    assert_eq!(
        kept[..ids.len() - 100],
        ids[100..],
        "the old events, and only they, were pruned"
    );
    let tombstones: i64 = env.store().with(|c| {
        c.query_row("SELECT count(*) FROM exports WHERE uid = 'gone'", [], |r| {
            r.get(0)
        })
        .unwrap()
    });
    assert_eq!(tombstones, 0, "the old tombstone was pruned");
    // `events --since` a pruned id starts at the next event kept
    let (code, out, _) = run_binary(
        &["--config", cfg, "events", "--since", &ids[50], "--json"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0);
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["id"], ids[100].as_str());
    let (_, out, _) = run_binary(&["--config", cfg, "status", "--json"], &[], env.dir.path()).await;
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(status["database_bytes"].as_i64().unwrap() > 0, "{status}");
}

#[test]
fn the_packaged_man_pages_and_completions_are_the_clis_own() {
    let dir = tempfile::tempdir().unwrap();
    avala_mirror::packaging::generate(dir.path()).unwrap();
    let packaged = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging");
    for sub in ["man", "completions"] {
        let names = |d: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(d.join(sub))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let generated = names(dir.path());
        assert_eq!(
            generated,
            names(&packaged),
            "packaging/{sub} is stale: run `cargo run --example generate` and commit it"
        );
        for name in generated {
            let read = |d: &Path| std::fs::read_to_string(d.join(sub).join(&name)).unwrap();
            assert_eq!(
                read(dir.path()),
                read(&packaged),
                "packaging/{sub}/{name} is stale: run `cargo run --example generate` and commit it"
            );
        }
    }
    // a page per subcommand, and completions that know them
    let sync = std::fs::read_to_string(packaged.join("man/avala-mirror-sync.1")).unwrap();
    assert!(sync.contains("\\-\\-only"), "{sync}");
    let bash = std::fs::read_to_string(packaged.join("completions/avala-mirror.bash")).unwrap();
    assert!(
        bash.contains("redeliver") && bash.contains("--only"),
        "{bash}"
    );
}
