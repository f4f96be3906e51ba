//! `run` as a service (SPEC §7): the notify protocol, /healthz, /metrics, SIGHUP
//! reload, and SIGTERM in the middle of a large listing.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::net::UnixDatagram;

/// Starts `run` with extra environment, stderr captured to `log`.
fn spawn_run(cfg: &Path, env: &[(&str, &str)], log: &Path) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_avala-mirror"));
    cmd.args(["--config", cfg.to_str().unwrap(), "run"])
        .env_remove("AVALA_API_KEY")
        .env_remove("AVALA_MIRROR_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn signal(child: &tokio::process::Child, sig: &str) {
    let pid = child.id().unwrap().to_string();
    let ok = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap();
    assert!(ok.success());
}

async fn exit_code(child: &mut tokio::process::Child, within: Duration) -> Option<i32> {
    tokio::time::timeout(within, child.wait())
        .await
        .expect("the daemon stopped in time")
        .unwrap()
        .code()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn count(db: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(db)
        .and_then(|c| c.query_row(sql, [], |r| r.get(0)))
        .unwrap_or(0)
}

/// Every resource every 500 ms: stale after 1.5 s.
const FAST: &str = "[schedule]\ndatasets = \"500ms\"\nsequences = \"500ms\"\nitems = \"500ms\"\nslices = \"500ms\"\nexports = \"500ms\"\n";

/// `run` with systemd's notify socket and a watchdog, and what it said there.
struct Notified {
    child: tokio::process::Child,
    sock: UnixDatagram,
    seen: Vec<String>,
}

impl Notified {
    fn start(env: &TestEnv, cfg: &Path, watchdog_usec: &str) -> Notified {
        let sock_path = env.dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        let child = spawn_run(
            cfg,
            &[
                ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
                ("WATCHDOG_USEC", watchdog_usec),
            ],
            &env.dir.path().join("log"),
        );
        Notified {
            child,
            sock,
            seen: vec![],
        }
    }

    /// Changes the configuration (`api.burst`) and sends SIGHUP; the index of
    /// its `RELOADING=1` among the messages seen.
    async fn reload_a_change(&mut self, cfg: &Path) -> usize {
        let text = std::fs::read_to_string(cfg)
            .unwrap()
            .replace("burst = 50", "burst = 40");
        std::fs::write(cfg, text).unwrap();
        signal(&self.child, "-HUP");
        self.until(|seen| times(seen, "RELOADING=1") > 0).await;
        self.seen.iter().position(|m| m == "RELOADING=1").unwrap()
    }

    /// SIGTERM, and `run` exits 0 within 20 s.
    async fn stopped_cleanly(&mut self) {
        signal(&self.child, "-TERM");
        assert_eq!(
            exit_code(&mut self.child, Duration::from_secs(20)).await,
            Some(0)
        );
    }

    /// Reads messages until `done` holds for all seen so far (20 s at most each).
    async fn until(&mut self, done: impl Fn(&[String]) -> bool) {
        let mut buf = [0u8; 4096];
        while !done(&self.seen) {
            let n = tokio::time::timeout(Duration::from_secs(20), self.sock.recv(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no notify message after {:?}", self.seen))
                .unwrap();
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.seen.extend(text.lines().map(str::to_owned));
        }
    }
}

/// How many of `seen` are `message`.
fn times(seen: &[String], message: &str) -> usize {
    seen.iter().filter(|m| *m == message).count()
}

#[tokio::test]
async fn notify_protocol_ready_watchdog_stopping_in_order() {
    let env = start(small_world()).await;
    let cfg = env.write_config("test-key-5f3a9c", "");
    let mut n = Notified::start(&env, &cfg, "200000");
    n.until(|seen| {
        times(seen, "WATCHDOG=1") >= 2
            && seen
                .iter()
                .any(|m| m.starts_with("STATUS=") && m.contains("listed"))
    })
    .await;
    signal(&n.child, "-TERM");
    n.until(|seen| times(seen, "STOPPING=1") > 0).await;
    assert_eq!(
        exit_code(&mut n.child, Duration::from_secs(20)).await,
        Some(0)
    );
    let seen = &n.seen;
    let at = |m: &str| seen.iter().position(|x| x == m).unwrap_or(usize::MAX);
    assert!(
        at("READY=1") < at("WATCHDOG=1") && at("WATCHDOG=1") < at("STOPPING=1"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn healthz_follows_the_api_and_metrics_parse() {
    let env = start(small_world()).await;
    let port = free_port();
    let cfg = env.write_config(
        "test-key-5f3a9c",
        &format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n{FAST}[[sinks]]\ntype = \"file\"\npath = \"{}\"\n",
            env.dir.path().join("events.jsonl").display()
        ),
    );
    let mut child = spawn_run(&cfg, &[], &env.dir.path().join("log"));
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let health = || async {
        match http.get(format!("{base}/healthz")).send().await {
            Ok(r) => Some((
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )),
            Err(_) => None,
        }
    };
    let db = env.cfg.store_path.clone();
    wait_until("the first cycle", || {
        count(&db, "SELECT count(*) FROM items") == 360
    })
    .await;
    let (code, body) = health().await.expect("healthz answers");
    let log = std::fs::read_to_string(env.dir.path().join("log")).unwrap();
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("ok")),
        "{body}\n{log}"
    );

    // the API goes down: every resource turns stale within 3 intervals, and /healthz says which
    env.sim.faults(|f| f.error_rate = 1.0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (code, body) = health().await.unwrap();
        let exports_stale = body["stale"]
            .as_array()
            .is_some_and(|s| s.iter().any(|r| r == "exports"));
        if code == 503 && exports_stale {
            break body;
        }
        // until then, a 503 always names what is stale
        assert!(
            code == 200 || !body["stale"].as_array().unwrap().is_empty(),
            "{body}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "never turned 503: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["status"], "stale");
    assert_eq!(body["resources"]["exports"]["stale"], true, "{body}");
    // …and back
    env.sim.faults(|f| f.error_rate = 0.0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while health().await.unwrap().0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    // the sum over the samples of `name` that carry `labels`
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let found: Vec<f64> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => panic!("{name} is not a number"),
            })
            .collect();
        assert!(!found.is_empty(), "no {name} {labels:?} in\n{text}");
        found.iter().sum()
    };
    // an unnamed sink is named by its target
    let sink = format!("file:{}", env.dir.path().join("events.jsonl").display());
    let items = [("endpoint", "datasets/*/*/items"), ("status", "200")];
    // one item listing per dataset (60 items: one page each), at least once
    assert!(
        value("avala_mirror_api_requests_total", &items) >= 6.0,
        "{text}"
    );
    let errors: f64 = ["500", "503"]
        .iter()
        .filter(|s| text.contains(&format!("status=\"{s}\"")))
        .map(|s| value("avala_mirror_api_requests_total", &[("status", s)]))
        .sum();
    assert!(errors > 0.0, "the outage is not in the metrics");
    assert!(
        value(
            "avala_mirror_records_synced_total",
            &[("resource", "items")]
        ) >= 360.0
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last = value(
        "avala_mirror_last_success_timestamp_seconds",
        &[("resource", "exports")],
    );
    assert!((now - last).abs() < 60.0, "{last} vs {now}");
    assert!(value("avala_mirror_rate_limiter_wait_seconds_total", &[]) >= 0.0);
    assert_eq!(
        value("avala_mirror_sink_events_pending", &[("sink", &sink)]),
        0.0
    );
    // no label carries a uid, an owner or a slug
    assert!(
        !text.contains("johndoe") && !text.contains("batch-"),
        "{text}"
    );

    signal(&child, "-TERM");
    assert_eq!(
        exit_code(&mut child, Duration::from_secs(20)).await,
        Some(0)
    );
}

#[tokio::test]
async fn sighup_applies_a_good_config_and_keeps_the_old_one_on_a_bad_one() {
    let env = start(small_world()).await;
    let cfg = env.write_config("test-key-5f3a9c", FAST);
    let original = std::fs::read_to_string(&cfg).unwrap();
    let with_resources =
        |r: &str| original.replace("[scope]\n", &format!("[scope]\nresources = [{r}]\n"));
    std::fs::write(&cfg, with_resources("\"exports\"")).unwrap();
    let log = env.dir.path().join("log");
    let mut child = spawn_run(&cfg, &[], &log);
    let db = env.cfg.store_path.clone();
    wait_until("exports mirrored", || {
        count(&db, "SELECT count(*) FROM exports") == 3
    })
    .await;
    assert_eq!(count(&db, "SELECT count(*) FROM datasets"), 0);

    // a good config: datasets join
    std::fs::write(&cfg, with_resources("\"datasets\", \"exports\"")).unwrap();
    signal(&child, "-HUP");
    wait_until("datasets after the reload", || {
        count(&db, "SELECT count(*) FROM datasets") == 6
    })
    .await;

    // a bad config: reported, the running one kept
    std::fs::write(
        &cfg,
        original.replace("burst = 50\n", "burst = 50\nbogus = 1\n"),
    )
    .unwrap();
    signal(&child, "-HUP");
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the reload failure logged", || {
        logged().contains("keeping the running configuration")
    })
    .await;
    assert!(logged().contains("bogus"), "{}", logged());
    env.sim.world(|w| {
        w.add_export();
    });
    wait_until("a new export still mirrored", || {
        count(&db, "SELECT count(*) FROM exports") == 4
    })
    .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "a bad config stopped the daemon"
    );
    signal(&child, "-TERM");
    assert_eq!(
        exit_code(&mut child, Duration::from_secs(20)).await,
        Some(0)
    );
    assert!(!logged().contains("test-key-5f3a9c"));
}

#[tokio::test]
async fn sigterm_in_a_large_listing_stops_fast_and_the_next_start_resumes() {
    let mut world = small_world();
    world.items_per_dataset = 3000;
    let env = start(world).await;
    let cfg = env.write_config("test-key-5f3a9c", "");
    let db = env.cfg.store_path.clone();
    env.sim.faults(|f| f.slow = Duration::from_millis(15));
    let mut child = spawn_run(&cfg, &[], &env.dir.path().join("log"));
    wait_until("part of the items", || {
        count(&db, "SELECT count(*) FROM items") >= 500
    })
    .await;
    signal(&child, "-TERM");
    let stopped = std::time::Instant::now();
    assert_eq!(
        exit_code(&mut child, Duration::from_secs(20)).await,
        Some(0)
    );
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "took {:?}",
        stopped.elapsed()
    );
    let items = count(&db, "SELECT count(*) FROM items");
    assert!(items < 18_000, "the listing had finished ({items})");
    let check: String = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    // whole pages only: every listing page is 100 records, and pages are applied whole
    let per_dataset: Vec<i64> = {
        let c = rusqlite::Connection::open(&db).unwrap();
        let mut st = c
            .prepare("SELECT count(*) FROM items GROUP BY owner_name, dataset_slug")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert!(per_dataset.iter().all(|n| n % 100 == 0), "{per_dataset:?}");

    env.sim.faults(|f| f.slow = Duration::ZERO);
    let (code, out, err) = run_binary(
        &["--config", cfg.to_str().unwrap(), "sync"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_mirror_equals_sim(&env);
}

#[tokio::test]
async fn a_reload_that_cannot_be_built_keeps_the_daemon_serving() {
    let env = start(small_world()).await;
    let port = free_port();
    let cfg = env.write_config(
        "test-key-5f3a9c",
        &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n{FAST}"),
    );
    let original = std::fs::read_to_string(&cfg).unwrap();
    let log = env.dir.path().join("log");
    let mut child = spawn_run(&cfg, &[], &log);
    let healthz = format!("http://127.0.0.1:{port}/healthz");
    let http = reqwest::Client::new();
    let answers = || async {
        http.get(&healthz)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !answers().await {
        assert!(tokio::time::Instant::now() < deadline, "no /healthz");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    let db = env.cfg.store_path.clone();
    wait_until("the first export listing", || {
        count(&db, "SELECT count(*) FROM exports") == 3
    })
    .await;

    // a port someone else has taken, then a store path that cannot be a file
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let blocker = env.dir.path().join("a-file");
    std::fs::write(&blocker, "").unwrap();
    for (bad, why) in [
        (
            original.replace(
                &format!("127.0.0.1:{port}"),
                &format!("127.0.0.1:{taken_port}"),
            ),
            format!("127.0.0.1:{taken_port}"),
        ),
        (
            original.replace(
                &db.display().to_string(),
                &blocker.join("mirror.db").display().to_string(),
            ),
            "a-file".to_string(),
        ),
    ] {
        std::fs::write(&cfg, &bad).unwrap();
        signal(&child, "-HUP");
        wait_until("the reload refused", || {
            logged().contains("keeping the running configuration") && logged().contains(&why)
        })
        .await;
        assert!(
            child.try_wait().unwrap().is_none(),
            "the daemon died: {}",
            logged()
        );
        assert!(answers().await, "the old listener stopped serving");
        let before = count(&db, "SELECT count(*) FROM exports");
        env.sim.world(|w| {
            w.add_export();
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while count(&db, "SELECT count(*) FROM exports") != before + 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the old configuration stopped mirroring ({before} exports before):\n{}",
                logged()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(taken);
    signal(&child, "-TERM");
    assert_eq!(
        exit_code(&mut child, Duration::from_secs(20)).await,
        Some(0)
    );
}

#[tokio::test]
async fn sighup_with_an_unchanged_configuration_does_not_restart_a_crawl() {
    let mut world = small_world();
    world.items_per_dataset = 400;
    let env = start(world).await;
    // 6 datasets × 400 items in pages of 25 at 30 requests/s: a crawl of several seconds
    let cfg = env.write_config("test-key-5f3a9c", "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            "requests_per_second = 500.0",
            "requests_per_second = 30.0\npage_size = 25",
        )
        .replace("burst = 50", "burst = 1");
    std::fs::write(&cfg, &text).unwrap();
    let log = env.dir.path().join("log");
    let mut child = spawn_run(&cfg, &[], &log);
    let first_pages = || {
        env.sim.faults(|f| {
            f.log
                .iter()
                .filter(|l| l.path.ends_with("/items/") && !l.query.contains("cursor"))
                .count()
        })
    };
    wait_until("the item crawl under way", || first_pages() >= 6).await;
    let items_requests = || {
        env.sim
            .faults(|f| f.log.iter().filter(|l| l.path.ends_with("/items/")).count())
    };
    let before = items_requests();
    signal(&child, "-HUP");
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the reload answered", || logged().contains("unchanged")).await;
    wait_until("the crawl going on", || items_requests() > before + 10).await;
    assert_eq!(first_pages(), 6, "a dataset's listing started over");
    signal(&child, "-TERM");
    assert_eq!(
        exit_code(&mut child, Duration::from_secs(20)).await,
        Some(0)
    );
}

#[tokio::test]
async fn the_watchdog_is_fed_across_a_reload() {
    let env = start(small_world()).await;
    let cfg = env.write_config("test-key-5f3a9c", "");
    let mut n = Notified::start(&env, &cfg, "400000");
    n.until(|seen| times(seen, "WATCHDOG=1") > 0).await;
    // a changed configuration: the generation is replaced
    let reloading = n.reload_a_change(&cfg).await;
    n.until(|seen| times(&seen[reloading..], "WATCHDOG=1") >= 3)
        .await;
    n.stopped_cleanly().await;
}

#[tokio::test]
async fn a_base_url_that_finds_nothing_is_unhealthy_and_check_says_why() {
    let env = start(small_world()).await;
    let port = free_port();
    let cfg = env.write_config(
        "test-key-5f3a9c",
        &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n{FAST}"),
    );
    // the base URL without /api/v1: every listing answers 404
    let good = env.sim.base_url().to_string();
    let bad = good
        .trim_end_matches('/')
        .trim_end_matches("/api/v1")
        .to_string();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(&good, &bad);
    std::fs::write(&cfg, text).unwrap();

    let (code, out, err) = run_binary(
        &["--config", cfg.to_str().unwrap(), "check"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("does not end in /api/v1"), "{err}");

    let log = env.dir.path().join("log");
    let mut child = spawn_run(&cfg, &[], &log);
    let healthz = format!("http://127.0.0.1:{port}/healthz");
    let http = reqwest::Client::new();
    // stale after 3 intervals of 500 ms without a good cycle
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let body = loop {
        if let Ok(r) = http.get(&healthz).send().await
            && r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
        {
            break r.text().await.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/healthz stayed healthy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(body.contains("exports") && body.contains("stale"), "{body}");
    signal(&child, "-TERM");
    assert_eq!(
        exit_code(&mut child, Duration::from_secs(20)).await,
        Some(0)
    );
}

#[tokio::test]
async fn the_watchdog_is_fed_while_writes_wait_for_a_reader() {
    let env = start(small_world()).await;
    let port = free_port();
    let cfg = env.write_config(
        "test-key-5f3a9c",
        &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "[store]\n",
        "[store]\nmax_wal = \"64KiB\"\n",
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    // the mirror exists, and a reader holds a transaction open in it: the
    // first sync's writes pass max_wal and wait for it
    drop(env.store());
    let reader = rusqlite::Connection::open(&env.cfg.store_path).unwrap();
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM items;")
        .unwrap();
    let started = std::time::Instant::now();
    let mut n = Notified::start(&env, &cfg, "1000000");
    let healthz = || async {
        let r = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .ok()?;
        r.json::<serde_json::Value>().await.ok()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while healthz().await.is_none_or(|h| h["status"] != "paused") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes never waited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // pings every half second: the ones before the pause, and six more during it
    let before = 2 * started.elapsed().as_secs() as usize + 2;
    n.until(|seen| times(seen, "WATCHDOG=1") >= before + 6)
        .await;
    let h = healthz().await.unwrap();
    assert_eq!(h["status"], "paused", "{h}");
    assert!(
        h["writes_waiting_for_a_reader"]["wal_bytes"].as_u64() > Some(64 << 10),
        "{h}"
    );
    // the reader lets go: the writes go on
    reader.execute_batch("COMMIT").unwrap();
    let db = env.cfg.store_path.clone();
    wait_until("the first sync written", || {
        count(&db, "SELECT count(*) FROM items") == 360
    })
    .await;
    n.stopped_cleanly().await;
}

#[tokio::test]
async fn a_reload_keeps_the_pause_the_api_asked_for() {
    let env = start(small_world()).await;
    // the first request passes; the rest answer 429 "come back in 31 years"
    env.sim.faults(|f| {
        f.rate_limit = Some((0.001, 1));
        f.retry_after_secs = 999_999_999;
    });
    let cfg = env.write_config("test-key-5f3a9c", "");
    let toml = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, toml.replace("[api]\n", "[api]\nmax_wait = \"40s\"\n")).unwrap();
    let mut n = Notified::start(&env, &cfg, "60000000");
    let throttled = || env.sim.faults(|f| f.log.iter().any(|l| l.status == 429));
    wait_until("a 429", throttled).await;
    // the API would answer now, but it asked for a pause (40 s, capped)
    env.sim.faults(|f| f.rate_limit = None);
    let reloading = n.reload_a_change(&cfg).await;
    n.until(|seen| times(&seen[reloading..], "READY=1") > 0)
        .await;
    let sent = env.sim.faults(|f| f.log.len());
    // the new generation holds back as the old one did
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.sim.faults(|f| f.log.len()),
        sent,
        "requests went out during the pause after the reload"
    );
    n.stopped_cleanly().await;
}
