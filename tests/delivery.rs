//! Events leave the outbox: real HTTP receivers on loopback, checked independently.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use avala_mirror::config::SinkConfig;
use avala_mirror::events::deliver::{Deliverer, Drained};
use avala_mirror::events::sinks::Sink;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use common::*;
use hmac::{Hmac, KeyInit, Mac};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Default)]
struct Receiver {
    /// (webhook-id, status answered, signature valid)
    seen: Vec<(String, u16, bool)>,
    /// Answer this status to the next N requests.
    fail_next: Vec<u16>,
    /// Hold every answer this long (after recording the request).
    delay: Duration,
    bodies: Vec<String>,
}

impl Receiver {
    /// The webhook-id of every request received, in order.
    fn ids(&self) -> Vec<String> {
        self.seen.iter().map(|s| s.0.clone()).collect()
    }
}

/// A webhook receiver on loopback answering `fail_next` to its first requests, then 200.
async fn receiver(fail_next: Vec<u16>) -> (Arc<Mutex<Receiver>>, String) {
    let state = Arc::new(Mutex::new(Receiver {
        fail_next,
        ..Default::default()
    }));
    let shared = state.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let state = shared.clone();
            async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                let (id, ts, sig) = (
                    h("webhook-id"),
                    h("webhook-timestamp"),
                    h("webhook-signature"),
                );
                // independent check: key = base64 after whsec_, HMAC-SHA256 over "{id}.{ts}.{body}"
                let key = base64::engine::general_purpose::STANDARD
                    .decode(&SECRET[6..])
                    .unwrap();
                let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
                mac.update(format!("{id}.{ts}.{body}").as_bytes());
                let want =
                    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
                let valid = sig.split(' ').any(|s| s == format!("v1,{want}"))
                    && serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .is_some_and(|b| b["id"] == id.as_str());
                let (status, delay) = {
                    let mut st = state.lock().unwrap();
                    let status = if st.fail_next.is_empty() {
                        200
                    } else {
                        st.fail_next.remove(0)
                    };
                    st.seen.push((id, status, valid));
                    st.bodies.push(body);
                    (status, st.delay)
                };
                tokio::time::sleep(delay).await;
                StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (state, url)
}

/// A deliverer with one webhook sink (all events) to a fresh receiver.
async fn hook(env: &TestEnv, fail_next: Vec<u16>) -> (Arc<Mutex<Receiver>>, Deliverer) {
    let (state, url) = receiver(fail_next).await;
    let d = Deliverer::new(
        env.open().await,
        vec![sink("webhook", "hook", Some(url), None, &["*"])],
        fast(),
    );
    (state, d)
}

fn sink(
    kind: &str,
    name: &str,
    url: Option<String>,
    path: Option<std::path::PathBuf>,
    events: &[&str],
) -> Sink {
    Sink::from_config(&SinkConfig {
        kind: kind.into(),
        name: name.into(),
        path,
        url,
        secret: (kind == "webhook").then(|| SECRET.to_string()),
        secret_file: None,
        events: events.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
    .unwrap()
}

/// Five changes after the baseline: 3 sequence status changes, an item change, a new export.
async fn env_with_events() -> TestEnv {
    env_with_events_on(None).await
}

/// [`env_with_events`] on either backend.
async fn env_with_events_on(backend: Option<std::sync::Arc<common::pg::Cluster>>) -> TestEnv {
    let env = start_on(small_world(), backend).await;
    env.sync().await.unwrap();
    env.sim.world(|w| {
        for ds in 0..3 {
            let s = w.sequences_of(ds)[0];
            w.advance_sequence(s);
        }
        w.set_item_status(4, 2, "customer_approved");
        w.add_export();
    });
    env.sync().await.unwrap();
    assert_eq!(env.events().len(), 5);
    env
}

/// A `[[sinks]]` entry for a webhook named `hook`, signed with SECRET.
fn webhook_toml(url: &str) -> String {
    format!(
        "[[sinks]]\ntype = \"webhook\"\nname = \"hook\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n"
    )
}

fn fast() -> Vec<Duration> {
    vec![
        Duration::ZERO,
        Duration::from_millis(20),
        Duration::from_millis(20),
        Duration::from_millis(20),
    ]
}

#[tokio::test]
async fn webhook_gets_every_event_once_signed_in_order_despite_failures() {
    for backend in backends() {
        let env = env_with_events_on(backend).await;
        let (state, d) = hook(&env, vec![500, 503]).await;
        assert!(d.flush(Duration::from_secs(10)).await.is_empty());

        let seen = state.lock().unwrap().seen.clone();
        assert!(seen.iter().all(|(_, _, valid)| *valid), "{seen:?}");
        assert_eq!(seen.len(), 7, "5 events + 2 failed attempts");
        // the failed attempts carried the same id as the success that followed
        assert_eq!(seen[0].0, seen[2].0);
        assert_eq!((seen[0].1, seen[1].1, seen[2].1), (500, 503, 200));
        let delivered: Vec<String> = seen
            .iter()
            .filter(|s| s.1 == 200)
            .map(|s| s.0.clone())
            .collect();
        let ids = env.event_ids();
        assert_eq!(delivered, ids, "every event once, in detection order");

        // nothing is sent twice on the next run
        assert!(d.flush(Duration::from_secs(5)).await.is_empty());
        assert_eq!(state.lock().unwrap().seen.len(), 7);
    }
}

#[tokio::test]
async fn a_down_sink_holds_its_own_queue_only_and_catches_up() {
    let env = env_with_events().await;
    let (state, url) = receiver(vec![503; 2]).await;
    let file = env.dir.path().join("events.jsonl");
    let d = Deliverer::new(
        env.store(),
        vec![
            sink("webhook", "hook", Some(url), None, &["*"]),
            sink("file", "file", None, Some(file.clone()), &["*"]),
        ],
        vec![
            Duration::ZERO,
            Duration::from_millis(300),
            Duration::from_millis(300),
        ],
    );
    assert!(matches!(
        d.drain(&d.sinks[0]).await.unwrap(),
        Drained::Waiting(_)
    ));
    assert_eq!(d.drain(&d.sinks[1]).await.unwrap(), Drained::Idle);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().lines().count(),
        5,
        "the file sink was not held"
    );
    let pending: i64 = env
        .store()
        .with(|c| {
            c.query_row(
                "SELECT count(*) FROM deliveries WHERE sink = 'hook' AND status = 'pending'",
                [],
                |r| r.get(0),
            )
        })
        .unwrap();
    assert_eq!(
        pending, 1,
        "only the head of the down sink's queue is pending"
    );
    // the receiver comes back
    assert!(d.flush(Duration::from_secs(10)).await.is_empty());
    let ok = state
        .lock()
        .unwrap()
        .seen
        .iter()
        .filter(|s| s.1 == 200)
        .count();
    assert_eq!(ok, 5);
}

#[tokio::test]
async fn filters_keep_out_what_they_should_and_a_dead_event_fails_after_its_schedule() {
    let env = env_with_events().await;
    let file = env.dir.path().join("sequences.jsonl");
    let (state, url) = receiver(vec![500; 4]).await;
    let d = Deliverer::new(
        env.store(),
        vec![
            sink(
                "file",
                "seq",
                None,
                Some(file.clone()),
                &["sequence.status_changed"],
            ),
            sink("webhook", "exports", Some(url), None, &["export.*"]),
        ],
        fast(),
    );
    assert!(d.flush(Duration::from_secs(10)).await.is_empty());
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["type"] == "sequence.status_changed"));
    // the one export event failed 4 times (the whole schedule) and is marked failed, not lost
    let seen = state.lock().unwrap().seen.clone();
    assert_eq!(seen.len(), 4);
    let (status, attempts): (String, i64) = env
        .store()
        .with(|c| {
            c.query_row(
                "SELECT status, attempts FROM deliveries WHERE sink = 'exports'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .unwrap();
    assert_eq!((status.as_str(), attempts), ("failed", 4));
}

#[tokio::test]
async fn gone_disables_the_sink_and_status_says_so() {
    let env = env_with_events().await;
    let (state, d) = hook(&env, vec![410]).await;
    assert_eq!(d.drain(&d.sinks[0]).await.unwrap(), Drained::Disabled);
    assert_eq!(d.drain(&d.sinks[0]).await.unwrap(), Drained::Disabled);
    assert_eq!(state.lock().unwrap().seen.len(), 1);
    let status = env.store().status().await.unwrap();
    assert_eq!(status["deliveries"]["disabled_sinks"][0]["sink"], "hook");
}

#[tokio::test]
async fn sync_delivers_before_it_exits() {
    let env = start(small_world()).await;
    let (state, url) = receiver(vec![]).await;
    let file = env.dir.path().join("all.jsonl");
    let cfg = env.write_config(
        "test-key-5f3a9c",
        &format!(
            "[events]\nemit_initial = true\n\n[[sinks]]\ntype = \"webhook\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\nevents = [\"export.*\"]\n\n[[sinks]]\ntype = \"file\"\npath = \"{}\"\n",
            file.display()
        ),
    );
    let (code, out, err) = run_binary(
        &["--config", cfg.to_str().unwrap(), "sync"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let total = env.events().len();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().lines().count(),
        total
    );
    let seen = state.lock().unwrap().seen.clone();
    assert_eq!(seen.len(), 3, "the three exports");
    assert!(seen.iter().all(|s| s.2));
}

#[tokio::test]
async fn redeliver_sends_failed_events_again_and_nothing_else() {
    for backend in backends() {
        let env = env_with_events_on(backend).await;
        // the first event fails its whole schedule, the other four go through
        let (state, d) = hook(&env, vec![500; 4]).await;
        assert!(d.flush(Duration::from_secs(10)).await.is_empty());
        let delivered = |st: &Receiver| {
            st.seen
                .iter()
                .filter(|s| s.1 == 200)
                .map(|s| s.0.clone())
                .collect::<Vec<_>>()
        };
        let first_id = state.lock().unwrap().seen[0].0.clone();
        assert_eq!(delivered(&state.lock().unwrap()).len(), 4);
        assert!(!delivered(&state.lock().unwrap()).contains(&first_id));

        let reset = env.open().await.redeliver(Some("hook"), 0).await.unwrap();
        assert_eq!(reset, 1);
        assert!(d.flush(Duration::from_secs(10)).await.is_empty());
        let after = delivered(&state.lock().unwrap());
        assert_eq!(
            after.len(),
            5,
            "only the failed one was sent again: {after:?}"
        );
        assert_eq!(after[4], first_id, "with its original id");
    }
}

#[tokio::test]
async fn sync_retries_a_failing_receiver_before_it_exits() {
    let env = start(small_world()).await;
    let (state, url) = receiver(vec![503]).await;
    let cfg = env.write_config("test-key-5f3a9c", &webhook_toml(&url));
    let cfg = cfg.to_str().unwrap();
    run_binary(&["--config", cfg, "sync"], &[], env.dir.path()).await;
    env.sim.world(|w| {
        w.add_export();
        w.add_export();
    });
    // first attempt fails; the next is due 5 s later (the standard schedule), within sync's delivery time
    let (code, out, err) = run_binary(&["--config", cfg, "sync"], &[], env.dir.path()).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let seen = state.lock().unwrap().seen.clone();
    let ok: Vec<&String> = seen.iter().filter(|s| s.1 == 200).map(|s| &s.0).collect();
    assert_eq!(ok.len(), 2, "{seen:?}");
    assert_eq!(&seen[0].0, ok[0], "the retry carried the same webhook-id");
    let (code, _, err) = run_binary(
        &["--config", cfg, "events", "redeliver", "--sink", "nope"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("configured: hook"), "{err}");
}

#[tokio::test]
async fn a_slow_sink_does_not_hold_a_fast_one() {
    let env = env_with_events().await;
    let (state, url) = receiver(vec![]).await;
    state.lock().unwrap().delay = Duration::from_millis(800);
    let file = env.dir.path().join("fast.jsonl");
    let d = Arc::new(Deliverer::new(
        env.store(),
        vec![
            sink("webhook", "slow", Some(url), None, &["*"]),
            sink("file", "fast", None, Some(file.clone()), &["*"]),
        ],
        fast(),
    ));
    let flushing = tokio::spawn({
        let d = d.clone();
        async move { d.flush(Duration::from_secs(20)).await }
    });
    let lines = || {
        std::fs::read_to_string(&file)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    wait_until("the fast sink's five events", || lines() == 5).await;
    assert!(
        state.lock().unwrap().seen.len() < 5,
        "the fast sink finished first"
    );
    assert!(flushing.await.unwrap().is_empty());
    assert_eq!(state.lock().unwrap().seen.len(), 5);
}

#[tokio::test]
async fn kill_9_during_delivery_then_restart_loses_nothing() {
    let env = start(small_world()).await;
    let (state, url) = receiver(vec![]).await;
    let cfg = env.write_config("test-key-5f3a9c", &webhook_toml(&url));
    let cfg = cfg.to_str().unwrap();
    run_binary(&["--config", cfg, "sync"], &[], env.dir.path()).await;
    env.sim.world(|w| {
        for _ in 0..4 {
            w.add_export();
        }
    });
    // the receiver takes the first event, then hangs: the process dies before recording it
    state.lock().unwrap().delay = Duration::from_secs(30);
    let mut child = spawn_binary(&["--config", cfg, "sync"]);
    wait_until("the first delivery attempt", || {
        !state.lock().unwrap().seen.is_empty()
    })
    .await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    assert_eq!(state.lock().unwrap().seen.len(), 1);

    state.lock().unwrap().delay = Duration::ZERO;
    let (code, out, err) = run_binary(&["--config", cfg, "sync"], &[], env.dir.path()).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let seen = state.lock().unwrap().ids();
    let ids = env.event_ids();
    assert_eq!(ids.len(), 4);
    // the event in flight at the kill comes again with the same id; the rest once, in order
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[1..], ids[..]);
}

#[tokio::test]
async fn slack_gets_one_readable_line_per_event() {
    let env = env_with_events().await;
    let (state, url) = receiver(vec![]).await;
    let d = Deliverer::new(
        env.store(),
        vec![sink(
            "slack",
            "slack",
            Some(url),
            None,
            &["sequence.status_changed"],
        )],
        fast(),
    );
    assert!(d.flush(Duration::from_secs(10)).await.is_empty());
    let bodies = state.lock().unwrap().bodies.clone();
    assert_eq!(bodies.len(), 3);
    for b in bodies {
        let text = serde_json::from_str::<serde_json::Value>(&b).unwrap()["text"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            text.starts_with("sequence johndoe/batch-00") || text.starts_with("sequence acme-ai/"),
            "{text}"
        );
        assert!(
            text.contains("/seq_001: ") && text.contains(" → "),
            "{text}"
        );
    }
}

/// The event ids in a JSONL sink file, in order.
fn ids_in(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn file_sinks(a: &std::path::Path, b: &std::path::Path, b_first: bool) -> String {
    let a = format!("[[sinks]]\ntype = \"file\"\npath = \"{}\"\n", a.display());
    let b = format!(
        "[[sinks]]\ntype = \"file\"\npath = \"{}\"\nfrom = \"start\"\n",
        b.display()
    );
    if b_first {
        format!("{b}{a}")
    } else {
        format!("{a}{b}")
    }
}

#[tokio::test]
async fn a_new_sink_starts_at_the_newest_event_and_reordering_sinks_keeps_their_places() {
    let mut world = small_world();
    world.items_per_dataset = 200;
    let env = start(world).await;
    let emit = "[events]\nemit_initial = true\n";
    let cfg = env.write_config("test-key-5f3a9c", emit);
    let cfg = cfg.to_str().unwrap();
    let args = ["--config", cfg, "sync"];
    let sync = || run_binary(&args, &[], env.dir.path());
    let (code, out, err) = sync().await;
    assert_eq!(code, 0, "{out}\n{err}");
    let history = env.event_ids();
    assert!(
        history.len() > 1000,
        "a mirror with history: {}",
        history.len()
    );

    // two sinks added: one from now on, one with the whole history
    let (new, all) = (
        env.dir.path().join("new.jsonl"),
        env.dir.path().join("all.jsonl"),
    );
    let changes = || {
        env.sim.world(|w| {
            for _ in 0..5 {
                w.step();
            }
        })
    };
    for b_first in [false, true] {
        changes();
        env.write_config(
            "test-key-5f3a9c",
            &format!("{emit}{}", file_sinks(&new, &all, b_first)),
        );
        let (code, out, err) = sync().await;
        assert_eq!(code, 0, "{out}\n{err}");
        let ids = env.event_ids();
        assert!(ids.len() > history.len(), "the changes made events");
        let after_history: Vec<String> = ids[history.len()..].to_vec();
        assert_eq!(
            ids_in(&new),
            after_history,
            "the new sink got only what came after it (reordered: {b_first})"
        );
        assert_eq!(
            ids_in(&all),
            ids,
            "from = \"start\" got everything, once (reordered: {b_first})"
        );
    }
}

#[tokio::test]
async fn an_unnamed_sink_keeps_the_place_it_had_under_its_old_name() {
    let env = env_with_events().await;
    let file = env.dir.path().join("events.jsonl");
    // a mirror from before sinks were named by their target: `file-0` had sent two events
    let events = env.event_ids();
    env.store().with(|c| {
        c.execute("INSERT INTO sink_state (sink, cursor) SELECT 'file-0', seq FROM events ORDER BY seq LIMIT 1 OFFSET 1", []).unwrap()
    });
    let cfg = env.write_config(
        "test-key-5f3a9c",
        &format!(
            "[[sinks]]\ntype = \"file\"\npath = \"{}\"\n",
            file.display()
        ),
    );
    let (code, out, err) = run_binary(
        &["--config", cfg.to_str().unwrap(), "sync"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        ids_in(&file),
        events[2..].to_vec(),
        "it went on from where file-0 was"
    );
    let names: Vec<String> = env.store().with(|c| {
        let mut st = c.prepare("SELECT sink FROM sink_state").unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    });
    assert_eq!(names, vec![format!("file:{}", file.display())]);
}

#[tokio::test]
async fn redeliver_enables_a_gone_sink_in_the_running_daemon() {
    let env = start(small_world()).await;
    let (state, url) = receiver(vec![410]).await;
    let cfg = env.write_config(
        "test-key-5f3a9c",
        &format!(
            "[events]\nemit_initial = true\n[schedule]\nexports = \"500ms\"\n{}",
            webhook_toml(&url)
        ),
    );
    let cfg = cfg.to_str().unwrap();
    let mut daemon = spawn_binary(&["--config", cfg, "run"]);
    wait_until("the receiver to answer 410 Gone", || {
        !state.lock().unwrap().seen.is_empty()
    })
    .await;
    // disabled: nothing more goes out
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(state.lock().unwrap().seen.len(), 1);

    let (code, out, err) = run_binary(
        &["--config", cfg, "events", "redeliver", "--sink", "hook"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    wait_until("the daemon to deliver every event", || {
        let delivered = state
            .lock()
            .unwrap()
            .seen
            .iter()
            .filter(|s| s.1 == 200)
            .count();
        delivered > 0 && delivered == env.event_ids().len()
    })
    .await;
    let seen = state.lock().unwrap().seen.clone();
    assert_eq!(
        seen[1].0, seen[0].0,
        "the event that met 410 went first again"
    );
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
}

#[tokio::test]
async fn a_delivery_the_database_cannot_record_is_not_sent_again() {
    let env = env_with_events().await;
    let (state, url) = receiver(vec![]).await;
    let store = env.store();
    let d = Deliverer::new(
        store.clone(),
        vec![sink("webhook", "hook", Some(url), None, &["*"])],
        fast(),
    );
    // the disk is full: the delivery goes out, its outcome cannot be written
    store.with(|c| {
        c.execute_batch(
            "CREATE TEMP TRIGGER full BEFORE INSERT ON deliveries
             BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END;",
        )
        .unwrap()
    });
    for _ in 0..4 {
        let e = d.drain(&d.sinks[0]).await.unwrap_err();
        assert!(e.to_string().contains("disk is full"), "{e}");
    }
    assert_eq!(
        state.lock().unwrap().seen.len(),
        1,
        "sent again while unrecorded"
    );
    // space again: the outcome is recorded first, and the queue goes on
    store.with(|c| c.execute_batch("DROP TRIGGER full").unwrap());
    assert_eq!(d.drain(&d.sinks[0]).await.unwrap(), Drained::Idle);
    let seen = state.lock().unwrap().ids();
    assert_eq!(seen, env.event_ids(), "each event once, in order");
}

#[tokio::test]
async fn a_signed_link_reaches_no_sink_and_no_log_whole() {
    let env = start(small_world()).await;
    let (hook, hook_url) = receiver(vec![]).await;
    let (slack, slack_url) = receiver(vec![]).await;
    let file = env.dir.path().join("all.jsonl");
    let cfg = env.write_config(
        "test-key-5f3a9c",
        &format!(
            "[events]\nemit_initial = true\n\n[[sinks]]\ntype = \"log\"\n\n[[sinks]]\ntype = \"file\"\npath = \"{}\"\n\n{}\n[[sinks]]\ntype = \"slack\"\nurl = \"{slack_url}\"\n",
            file.display(),
            webhook_toml(&hook_url)
        ),
    );
    let (code, out, err) = run_binary(
        &["--config", cfg.to_str().unwrap(), "sync"],
        &[],
        env.dir.path(),
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    // the mirror keeps the link whole, for the downloader
    let raw: String = env.store().with(|c| {
        c.query_row(
            "SELECT raw FROM exports WHERE raw->>'download_url' IS NOT NULL LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap()
    });
    assert!(raw.contains("signature="), "{raw}");
    // no sink, log line or payload carries its signature
    let file_text = std::fs::read_to_string(&file).unwrap();
    assert!(
        file_text.contains("/exports/") && file_text.contains(".zip"),
        "{file_text}"
    );
    let hook_bodies = hook.lock().unwrap().bodies.join("\n");
    let slack_bodies = slack.lock().unwrap().bodies.join("\n");
    assert!(!hook_bodies.is_empty() && !slack_bodies.is_empty());
    for (what, text) in [
        ("stdout", &out),
        ("stderr", &err),
        ("file", &file_text),
        ("webhook", &hook_bodies),
        ("slack", &slack_bodies),
    ] {
        assert!(
            !text.contains("signature="),
            "{what} carries a signed link: {text}"
        );
    }
}
