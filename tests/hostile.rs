//! An upstream that answers in hostile or broken ways: every listing it can
//! make endless ends, incomplete, after a few requests, and deletes nothing.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use avala_mirror::api::Client;
use avala_mirror::config::{Config, Resource};
use avala_mirror::store::Store;
use avala_mirror::sync::Syncer;
use axum::extract::{Query, State};
use serde_json::{Value, json};

/// How the fake API answers `GET /api/v1/exports/`.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// One page, one record: the listing a good server gives.
    Honest,
    /// cursor a → b → a → …: a loop of pages, each with a new record.
    Cycle,
    /// A new cursor forever, always the same record.
    SameRecords,
    /// `count: 2`, then pages of new records without end.
    PastCount,
    /// One page of 25 records for `limit=2`.
    Oversized,
}

struct Fake {
    mode: Mutex<Mode>,
    requests: AtomicUsize,
    base: Mutex<String>,
}

async fn exports(
    State(f): State<Arc<Fake>>,
    Query(q): Query<HashMap<String, String>>,
) -> axum::Json<Value> {
    let n = f.requests.fetch_add(1, Ordering::SeqCst);
    let base = f.base.lock().unwrap().clone();
    let rec = |uid: String| json!({"uid": uid, "status": "exported", "name": "x"});
    let mode = *f.mode.lock().unwrap();
    let page = match mode {
        Mode::Honest => json!({"next": null, "results": [rec("keep".into())]}),
        Mode::Cycle => {
            let next = if q.get("cursor").map(String::as_str) == Some("a") {
                "b"
            } else {
                "a"
            };
            json!({"next": format!("{base}/exports/?cursor={next}&limit=2"), "results": [rec(format!("r{n}"))]})
        }
        Mode::SameRecords => {
            json!({"next": format!("{base}/exports/?cursor={n}&limit=2"), "results": [rec("same".into())]})
        }
        Mode::PastCount => json!({
            "count": 2,
            "next": format!("{base}/exports/?page={}&limit=2", n + 2),
            "results": [rec(format!("p{n}a")), rec(format!("p{n}b"))],
        }),
        Mode::Oversized => {
            json!({"next": null, "results": (0..25).map(|i| rec(format!("o{i}"))).collect::<Vec<_>>()})
        }
    };
    axum::Json(page)
}

async fn fake() -> (Arc<Fake>, reqwest::Url) {
    let f = Arc::new(Fake {
        mode: Mutex::new(Mode::Honest),
        requests: AtomicUsize::new(0),
        base: Mutex::new(String::new()),
    });
    let app = axum::Router::new()
        .route("/api/v1/exports/", axum::routing::get(exports))
        .with_state(f.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/api/v1", listener.local_addr().unwrap());
    *f.base.lock().unwrap() = base.clone();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (f, base.parse().unwrap())
}

#[tokio::test]
async fn endless_listings_end_incomplete_after_a_few_requests_and_delete_nothing() {
    let (fake, base) = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg =
        Config::defaults(&base, "k", &["someone"], &[], &dir.path().join("m.db")).unwrap();
    cfg.scope.resources = vec![Resource::Exports];
    cfg.api.page_size = 2;
    cfg.api.requests_per_second = 1000.0;
    cfg.api.burst = 100;
    cfg.downloads.enabled = false;
    let syncer = Syncer {
        client: Client::new(&cfg.api).unwrap(),
        store: Store::open(&cfg.store_path).unwrap(),
        cfg: Arc::new(cfg),
        progress: None,
    };
    let report = syncer.sync_resource(Resource::Exports).await.unwrap();
    assert!(report.failures.is_empty(), "{report:?}");
    for (mode, says) in [
        (Mode::Cycle, "leads back to a page it already fetched"),
        (
            Mode::SameRecords,
            "records in a row it had already returned",
        ),
        (Mode::PastCount, "past the 2 it announced"),
        (
            Mode::Oversized,
            "a page of 25 records where 2 were asked for",
        ),
    ] {
        *fake.mode.lock().unwrap() = mode;
        fake.requests.store(0, Ordering::SeqCst);
        let report = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            syncer.sync_resource(Resource::Exports),
        )
        .await
        .expect("the listing ended")
        .unwrap();
        let requests = fake.requests.load(Ordering::SeqCst);
        assert!(requests <= 4, "{says}: {requests} requests");
        assert_eq!(report.failures.len(), 1, "{says}: {report:?}");
        let why = &report.failures[0].1;
        assert!(
            why.contains("cannot be trusted") && why.contains(says),
            "{why}"
        );
        let kept: Option<String> = syncer.store.with(|c| {
            c.query_row(
                "SELECT deleted_at FROM exports WHERE uid = 'keep'",
                [],
                |r| r.get(0),
            )
            .unwrap()
        });
        assert_eq!(
            kept, None,
            "{says}: a record was deleted on an incomplete listing"
        );
    }
}
