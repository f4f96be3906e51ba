//! An upstream that answers in hostile or broken ways: every listing it can
//! make endless ends, incomplete, after a few requests, and deletes nothing.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use avala_mirror::config::{Config, Resource};
use avala_mirror::store::Store;
use avala_mirror::sync::Syncer;
use axum::extract::{Query, State};
use common::{exit_and_peak_rss, peak_rss_kib};
use serde_json::json;

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
    /// A page that streams 200 MB without announcing its length.
    Huge,
    /// A new cursor forever, each page with new records, and no `count`.
    Endless,
}

struct Fake {
    mode: Mutex<Mode>,
    requests: AtomicUsize,
    base: Mutex<String>,
}

async fn exports(
    State(f): State<Arc<Fake>>,
    Query(q): Query<HashMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
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
        Mode::Endless => json!({
            "next": format!("{base}/exports/?cursor=e{n}&limit=2"),
            "results": [rec(format!("e{n}a")), rec(format!("e{n}b"))],
        }),
        Mode::Oversized => {
            json!({"next": null, "results": (0..25).map(|i| rec(format!("o{i}"))).collect::<Vec<_>>()})
        }
        Mode::Huge => {
            let record = format!("{},", rec("big".repeat(300)));
            let chunk = bytes::Bytes::from(record.repeat((1 << 20) / record.len()));
            let head = bytes::Bytes::from_static(b"{\"next\":null,\"results\":[");
            let body = futures_util::stream::iter(
                std::iter::once(head)
                    .chain(std::iter::repeat_n(chunk, 200))
                    .map(Ok::<_, std::io::Error>),
            );
            return axum::body::Body::from_stream(body).into_response();
        }
    };
    axum::Json(page).into_response()
}

/// A mirror of the fake's exports alone, in pages of 2, the limiter out of the way.
fn exports_syncer(base: &reqwest::Url, dir: &std::path::Path) -> Syncer {
    let mut cfg = Config::defaults(base, "k", &["someone"], &[], &dir.join("m.db")).unwrap();
    cfg.scope.resources = vec![Resource::Exports];
    cfg.api.page_size = 2;
    cfg.api.requests_per_second = 5000.0;
    cfg.api.burst = 500;
    cfg.downloads.enabled = false;
    let store = Store::open(&cfg.store_path).unwrap();
    Syncer::new(Arc::new(cfg), store).unwrap()
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
    let syncer = exports_syncer(&base, dir.path());
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
        // a repeat is noticed as pages are written: the prefetcher may be a few ahead
        let bound = 2 + avala_mirror::api::page::AHEAD + 2;
        assert!(requests <= bound, "{says}: {requests} requests");
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

#[tokio::test]
async fn a_cursor_without_end_stops_at_ten_times_the_last_complete_size() {
    let (fake, base) = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let syncer = exports_syncer(&base, dir.path());
    // a complete listing of one record, then a cursor that never ends
    syncer.sync_resource(Resource::Exports).await.unwrap();
    *fake.mode.lock().unwrap() = Mode::Endless;
    let mut reached = vec![];
    for _ in 0..2 {
        fake.requests.store(0, Ordering::SeqCst);
        let report = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            syncer.sync_resource(Resource::Exports),
        )
        .await
        .expect("the listing ended")
        .unwrap();
        assert_eq!(report.failures.len(), 1, "{report:?}");
        let why = &report.failures[0].1;
        assert!(
            why.contains("more than ten times its last complete size"),
            "{why}"
        );
        reached.push(fake.requests.load(Ordering::SeqCst));
        let kept: Option<String> = syncer.store.with(|c| {
            c.query_row(
                "SELECT deleted_at FROM exports WHERE uid = 'keep'",
                [],
                |r| r.get(0),
            )
            .unwrap()
        });
        assert_eq!(kept, None, "deleted on an incomplete listing");
    }
    // 1 record last time: 100 pages of growth allowed, then it stops
    let ahead = avala_mirror::api::page::AHEAD + 4;
    assert!((101..=101 + ahead).contains(&reached[0]), "{reached:?}");
    // the size it reached is the next measure: a grown collection gets through,
    // an endless one costs more each cycle but always ends
    assert!(
        reached[1] > reached[0] && reached[1] <= 2 * 1010 + ahead,
        "{reached:?}"
    );
}

/// `sync` of the binary against the v1 API at `base`, its database in `dir`;
/// `scope` goes at the end of `[scope]` (more sections may follow it).
fn spawn_sync(dir: &std::path::Path, base: &reqwest::Url, scope: &str) -> tokio::process::Child {
    let cfg = dir.join("c.toml");
    let text = format!(
        "[api]\nbase_url = \"{base}\"\n[store]\npath = \"{}\"\n[http]\nlisten = \"off\"\n[scope]\nowners = [\"someone\"]\n{scope}",
        dir.join("m.db").display()
    );
    std::fs::write(&cfg, text).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_avala-mirror"))
        .args(["--config", cfg.to_str().unwrap(), "sync"])
        .env("AVALA_API_KEY", "k")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn a_body_past_max_response_bytes_is_refused_with_flat_memory() {
    let (fake, base) = fake().await;
    *fake.mode.lock().unwrap() = Mode::Huge;
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_sync(dir.path(), &base, "resources = [\"exports\"]\n");
    let (status, peak) = exit_and_peak_rss(&mut child).await;
    let mut out = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stdout.as_mut().unwrap(), &mut out)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("larger than api.max_response_bytes"), "{out}");
    assert_eq!(
        fake.requests.load(Ordering::SeqCst),
        1,
        "refused, not retried"
    );
    assert!(peak > 0 && peak < 100 * 1024, "peak RSS {peak} KiB");
}

/// A JSON:API service whose `links.next` points at another host.
async fn jsonapi_fake() -> reqwest::Url {
    async fn entries(Query(q): Query<HashMap<String, String>>) -> axum::response::Response {
        use axum::response::IntoResponse;
        let page = q.get("page[number]").cloned().unwrap_or_default();
        let rec =
            |id: String| json!({"type": "entries", "id": id, "attributes": {"status": "pending"}});
        axum::Json(json!({
            "data": [rec(format!("{page}a")), rec(format!("{page}b"))],
            "meta": {"count": 40},
            "links": {"next": "https://collector.example/jsonapi/entries?page%5Bnumber%5D=2"},
        }))
        .into_response()
    }
    let app = axum::Router::new().route("/jsonapi/entries", axum::routing::get(entries));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/jsonapi", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base.parse().unwrap()
}

#[tokio::test]
async fn a_jsonapi_next_link_to_another_host_is_refused() {
    let jsonapi = jsonapi_fake().await;
    let (_, v1) = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::defaults(&v1, "k", &["someone"], &[], &dir.path().join("m.db")).unwrap();
    cfg.enable_jsonapi(&jsonapi).unwrap();
    cfg.jsonapi.as_mut().unwrap().api.page_size = 2;
    let store = Store::open(&cfg.store_path).unwrap();
    let syncer = Syncer::new(Arc::new(cfg), store).unwrap();
    let report = syncer.sync_resource(Resource::Entries).await.unwrap();
    assert_eq!(report.failures.len(), 1, "{report:?}");
    let why = &report.failures[0].1;
    assert!(why.contains("points away from the API host"), "{why}");
    assert!(why.contains("collector.example"), "{why}");
}

/// A JSON:API `/projects` that answers a full listing with three projects and
/// a `meta.count` of `count`, then, asked by key (`filter[updated_at__gte]`),
/// full pages of new projects, each later than the last, without end.
async fn endless_projects(count: u64) -> (Arc<AtomicUsize>, reqwest::Url) {
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    let projects = move |Query(q): Query<HashMap<String, String>>| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            let size: usize = q
                .get("page[size]")
                .and_then(|s| s.parse().ok())
                .unwrap_or(1);
            let number: u64 = q
                .get("page[number]")
                .and_then(|s| s.parse().ok())
                .unwrap_or(1);
            let rec = |id: String, secs: u64| {
                let at = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000 + secs),
                );
                json!({"type": "projects", "id": id, "attributes": {"name": "p", "updated_at": at.to_string()}})
            };
            let data: Vec<_> = match q.contains_key("filter[updated_at__gte]") {
                true => (0..size)
                    .map(|k| rec(format!("k{n}-{k}"), 1000 + n as u64))
                    .collect(),
                // the three projects, in pages of `size`
                false if count == 3 => {
                    let from = (number as usize - 1) * size;
                    let to = (from + size).min(3);
                    (from..to).map(|k| rec(format!("p{k}"), k as u64)).collect()
                }
                false => (0..size)
                    .map(|k| rec(format!("p{number}-{k}"), k as u64))
                    .collect(),
            };
            axum::Json(json!({"data": data, "meta": {"count": count}}))
        }
    };
    let app = axum::Router::new().route("/jsonapi/projects", axum::routing::get(projects));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/jsonapi", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (requests, base.parse().unwrap())
}

#[tokio::test]
async fn a_listing_by_key_without_end_stops_at_ten_times_the_live_rows() {
    let (requests, jsonapi) = endless_projects(3).await;
    let (_, v1) = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::defaults(&v1, "k", &["someone"], &[], &dir.path().join("m.db")).unwrap();
    cfg.enable_jsonapi(&jsonapi).unwrap();
    let j = cfg.jsonapi.as_mut().unwrap();
    j.api.page_size = 2;
    j.api.requests_per_second = 5000.0;
    j.api.burst = 500;
    let store = Store::open(&cfg.store_path).unwrap();
    let syncer = Syncer::new(Arc::new(cfg), store).unwrap();
    // a complete full listing of three projects, then listings by key
    let first = syncer.sync_resource(Resource::Projects).await.unwrap();
    assert!(first.failures.is_empty(), "{first:?}");
    requests.store(0, Ordering::SeqCst);
    let report = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        syncer.sync_resource(Resource::Projects),
    )
    .await
    .expect("the listing by key ended")
    .unwrap();
    assert_eq!(report.failures.len(), 1, "{report:?}");
    assert!(
        report.failures[0].1.contains("more than ten times"),
        "{report:?}"
    );
    // three live rows: 100 pages of 2 past them, then it stops
    let asked = requests.load(Ordering::SeqCst);
    let ahead = avala_mirror::api::page::AHEAD + 4;
    assert!((100..=102 + ahead).contains(&asked), "{asked} requests");
}

#[tokio::test]
async fn a_count_of_a_trillion_plans_no_more_than_the_pages_in_flight() {
    let (requests, jsonapi) = endless_projects(1_000_000_000_000).await;
    let (_, v1) = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let jsonapi = format!(
        "resources = []\n[jsonapi]\nbase_url = \"{jsonapi}\"\npage_size = 1\nrequests_per_second = 2000.0\nburst = 100\nresources = [\"projects\"]\n"
    );
    let mut child = spawn_sync(dir.path(), &v1, &jsonapi);
    let pid = child.id().unwrap();
    // pages of one record toward a count of 10^12: it lists on, in flat memory
    let mut peak = 0;
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        if let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
        }
        assert!(child.try_wait().unwrap().is_none(), "sync ended");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    child.kill().await.unwrap();
    assert!(requests.load(Ordering::SeqCst) > 50, "it listed on");
    assert!(peak > 0 && peak < 100 * 1024, "peak RSS {peak} KiB");
}

/// A JSON:API `/projects` whose `meta.count` says ten: three projects on page
/// 1 (it answers 3 whatever is asked), two on page 2, then none; with
/// `links`, page 1 names no next page.
async fn projects_short_of_their_count(links: bool) -> reqwest::Url {
    let projects = move |Query(q): Query<HashMap<String, String>>| async move {
        let (from, to) = match q.get("page[number]").map(String::as_str) {
            Some("1") | None => (0, 3),
            Some("2") => (3, 5),
            _ => (0, 0),
        };
        let project = |k| json!({"type": "projects", "id": format!("p{k}"), "attributes": {}});
        let data: Vec<_> = (from..to).map(project).collect();
        let mut doc = json!({"data": data, "meta": {"count": 10}});
        if links {
            doc["links"] = json!({"self": "/jsonapi/projects", "next": null});
        }
        axum::Json(doc)
    };
    let app = axum::Router::new().route("/jsonapi/projects", axum::routing::get(projects));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/jsonapi", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base.parse().unwrap()
}

#[tokio::test]
async fn a_listing_short_of_its_count_is_incomplete_unless_its_links_ended_it() {
    for links in [false, true] {
        let jsonapi = projects_short_of_their_count(links).await;
        let (_, v1) = fake().await;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg =
            Config::defaults(&v1, "k", &["someone"], &[], &dir.path().join("m.db")).unwrap();
        cfg.enable_jsonapi(&jsonapi).unwrap();
        cfg.jsonapi.as_mut().unwrap().api.page_size = 5;
        let store = Store::open(&cfg.store_path).unwrap();
        let syncer = Syncer::new(Arc::new(cfg), store).unwrap();
        let report = syncer.sync_resource(Resource::Projects).await.unwrap();
        if links {
            // the server's own links ended it after page 1: complete
            assert!(report.failures.is_empty(), "{report:?}");
            assert_eq!(report.listed, 3, "{report:?}");
            continue;
        }
        // pages of its size (3) until a short one ended it: five of the ten
        // it announced, so a page is missing
        assert_eq!(report.listed, 5, "{report:?}");
        assert_eq!(report.failures.len(), 1, "{report:?}");
        let why = &report.failures[0].1;
        assert!(why.contains("ended at 5 records, short of the 10"), "{why}");
    }
}
