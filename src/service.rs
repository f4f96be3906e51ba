//! What makes `run` a well-behaved service (SPEC §7): health from the scheduler's
//! cycles, `/healthz` and `/metrics` on `[http] listen`, and the systemd notify
//! protocol (a no-op without `$NOTIFY_SOCKET`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;

use crate::store::Store;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::config::{Config, Resource};
use crate::sync::CycleReport;

/// A resource is stale when its last good cycle is older than this many intervals.
pub const STALE_AFTER_INTERVALS: u32 = 3;

/// When each enabled resource last completed a good cycle ([`CycleReport::is_good`]:
/// nothing failed and some scope was listed), against its interval.
pub struct Health {
    inner: Mutex<HealthInner>,
}

struct HealthInner {
    intervals: Vec<(Resource, Duration)>,
    /// Last good cycle, or when the resource was (re)configured: a grace period.
    last_ok: HashMap<Resource, SystemTime>,
    db: PathBuf,
    /// The running mirror, whose writer may be waiting out `store.max_wal`.
    store: Option<Store>,
}

impl Health {
    pub fn new(cfg: &Config) -> Arc<Health> {
        let h = Arc::new(Health {
            inner: Mutex::new(HealthInner {
                intervals: vec![],
                last_ok: HashMap::new(),
                db: PathBuf::new(),
                store: None,
            }),
        });
        h.configure(cfg);
        h
    }

    /// Takes the resources, intervals and database of a (re)loaded configuration.
    pub fn configure(&self, cfg: &Config) {
        let mut h = self.inner.lock().expect("health lock");
        let now = SystemTime::now();
        let resources = cfg.resources();
        h.intervals = resources.iter().map(|r| (*r, cfg.schedule[r])).collect();
        for r in &resources {
            h.last_ok.entry(*r).or_insert(now);
        }
        h.db = cfg.store_path.clone();
    }

    /// The store of a (re)started generation.
    pub fn watch(&self, store: &Store) {
        self.inner.lock().expect("health lock").store = Some(store.clone());
    }

    pub fn cycle_done(&self, report: &CycleReport) {
        if let Some(res) = report.resource.filter(|_| report.is_good()) {
            self.inner
                .lock()
                .expect("health lock")
                .last_ok
                .insert(res, SystemTime::now());
        }
    }

    /// (healthy, the JSON body of /healthz).
    pub fn report(&self) -> (bool, Value) {
        let h = self.inner.lock().expect("health lock");
        let now = SystemTime::now();
        let mut resources = serde_json::Map::new();
        let mut stale = Vec::new();
        for (res, every) in &h.intervals {
            let last = h.last_ok.get(res).copied().unwrap_or(now);
            let age = now.duration_since(last).unwrap_or_default();
            let is_stale = age > *every * STALE_AFTER_INTERVALS;
            if is_stale {
                stale.push(res.table());
            }
            resources.insert(
                res.table().into(),
                json!({
                    "last_success_at": humantime::format_rfc3339_seconds(last).to_string(),
                    "age_seconds": age.as_secs(),
                    "interval_seconds": every.as_secs_f64(),
                    "stale": is_stale,
                }),
            );
        }
        let ok = stale.is_empty();
        let mut body = json!({
            "status": if ok { "ok" } else { "stale" },
            "stale": stale,
            "resources": resources,
        });
        let served = crate::metrics::METRICS.serve_total.get();
        if served > 0 {
            body["serve"] = json!({ "requests": served });
        }
        // a pause the API asked for (at most api.max_wait) stops every resource
        let paused = crate::api::pace::PAUSED_UNTIL.load(std::sync::atomic::Ordering::Relaxed);
        let paused = std::time::UNIX_EPOCH + Duration::from_secs(paused);
        if paused > now {
            body["api_paused_until"] = json!(humantime::format_rfc3339_seconds(paused).to_string());
        }
        // writes wait for a reader past store.max_wal: healthy but paused (SPEC
        // §7); a pause that lasts makes the resources stale, and that is a 503
        let wal = h.store.as_ref().map_or(0, Store::wal_waiting);
        // a lost PostgreSQL connection: nothing is written until it is back
        if let Some((why, since)) = h.store.as_ref().and_then(Store::unavailable) {
            body["status"] = json!("database_unavailable");
            body["database"] = json!({
                "error": why,
                "since": humantime::format_rfc3339_seconds(since).to_string(),
            });
            return (false, body);
        }
        if wal > 0 {
            body["status"] = json!(if ok { "paused" } else { "stale" });
            body["writes_waiting_for_a_reader"] = json!({"wal_bytes": wal});
        }
        (ok, body)
    }

    fn db(&self) -> PathBuf {
        self.inner.lock().expect("health lock").db.clone()
    }
}

/// Binds `addr` and serves `/healthz` and `/metrics` until the task is aborted.
pub async fn serve_http(
    addr: SocketAddr,
    health: Arc<Health>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot serve /healthz and /metrics on {addr} (http.listen): {e}")
    })?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(health);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("http server stopped: {e}");
        }
    });
    tracing::info!(addr = %bound, "serving /healthz and /metrics");
    Ok((bound, task))
}

async fn healthz(State(h): State<Arc<Health>>) -> Response {
    let (ok, body) = h.report();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(h): State<Arc<Health>>) -> Response {
    let store = h.inner.lock().expect("health lock").store.clone();
    let snapshot = match store {
        Some(store) => store.metrics().await.map_err(anyhow::Error::from),
        None => snapshot_of(h.db()).await,
    };
    metrics_of(snapshot).await
}

/// What `/metrics` shows of the SQLite mirror at `db`, read beside any writer.
pub async fn snapshot_of(db: PathBuf) -> anyhow::Result<crate::store::report::Snapshot> {
    tokio::task::spawn_blocking(move || crate::store::sqlite::report::metrics(&db))
        .await?
        .map_err(Into::into)
}

/// `/metrics`: this process's counters and what the mirror holds.
pub async fn metrics_of(snapshot: anyhow::Result<crate::store::report::Snapshot>) -> Response {
    let snapshot = snapshot
        .map_err(|e| tracing::warn!("metrics: reading the database: {e:#}"))
        .ok();
    match tokio::task::spawn_blocking(move || crate::metrics::render(snapshot)).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Tells systemd (when it is listening) about a state change.
pub fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!("sd_notify: {e}");
    }
}
