//! Prometheus metrics (SPEC §7). Counters of what this process did live in one
//! process-wide set; what the database knows (per-sink queues, downloads, last
//! success per resource) is read at scrape time through a read-only connection,
//! so a scrape never waits on the writer.

use std::sync::LazyLock;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

type Labels = Vec<(&'static str, String)>;

/// What this process counted since it started.
pub struct Metrics {
    /// By `endpoint` (the path with values replaced by `{}`) and `status` (code or `error`).
    pub api_requests: Family<Labels, Counter>,
    pub api_rate_limited: Counter,
    /// Seconds spent waiting for the rate limiter.
    pub limiter_wait: Counter<f64, std::sync::atomic::AtomicU64>,
    /// Records listed, by `resource`.
    pub records_synced: Family<Labels, Counter>,
    /// Events written, by `type` family (`<resource>`).
    pub events_emitted: Family<Labels, Counter>,
    pub download_bytes: Counter,
    pub download_failures: Counter,
    /// Requests `serve` answered, by `status`.
    pub serve_requests: Family<Labels, Counter>,
    /// All of them, for `/healthz`.
    pub serve_total: Counter,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    api_requests: Family::default(),
    api_rate_limited: Counter::default(),
    limiter_wait: Counter::default(),
    records_synced: Family::default(),
    events_emitted: Family::default(),
    download_bytes: Counter::default(),
    download_failures: Counter::default(),
    serve_requests: Family::default(),
    serve_total: Counter::default(),
});

pub fn label(k: &'static str, v: impl Into<String>) -> Labels {
    vec![(k, v.into())]
}

/// The text exposition of every metric, with what was just read from the
/// mirror (`None`: it could not be read; the process's own metrics still are).
pub fn render(db: Option<crate::store::report::Snapshot>) -> String {
    let m = &*METRICS;
    let mut r = Registry::with_prefix("avala_mirror");
    r.register(
        "api_requests",
        "API requests by endpoint and HTTP status",
        m.api_requests.clone(),
    );
    r.register(
        "api_rate_limited",
        "API answers 429 Too Many Requests",
        m.api_rate_limited.clone(),
    );
    r.register_with_unit(
        "rate_limiter_wait",
        "Time requests spent waiting for the shared rate limiter",
        Unit::Seconds,
        m.limiter_wait.clone(),
    );
    r.register(
        "records_synced",
        "Records received from listings, by resource",
        m.records_synced.clone(),
    );
    r.register(
        "events_emitted",
        "Change events written to the outbox, by resource",
        m.events_emitted.clone(),
    );
    r.register_with_unit(
        "download",
        "Export archive bytes received",
        Unit::Bytes,
        m.download_bytes.clone(),
    );
    r.register(
        "download_failures",
        "Export downloads that failed for good",
        m.download_failures.clone(),
    );
    r.register(
        "serve_requests",
        "Requests the read-only API replica (serve) answered, by HTTP status",
        m.serve_requests.clone(),
    );
    r.register_collector(Box::new(FromDatabase(std::sync::Mutex::new(db))));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r).expect("writing to a String");
    out
}

/// Values read from the mirror database at scrape time.
#[derive(Debug)]
struct FromDatabase(std::sync::Mutex<Option<crate::store::report::Snapshot>>);

impl Collector for FromDatabase {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = self.0.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Ok(());
        };
        let mut family = |name: &str,
                          help: &str,
                          unit: Option<&Unit>,
                          kind: MetricType,
                          key: &'static str,
                          rows: Vec<(String, f64)>|
         -> Result<(), std::fmt::Error> {
            let mut m = enc.encode_descriptor(name, help, unit, kind)?;
            for (v, n) in rows {
                let labels = [(key, v)];
                let e = m.encode_family(&labels)?;
                match kind {
                    MetricType::Counter => ConstCounter::new(n).encode(e)?,
                    _ => ConstGauge::new(n).encode(e)?,
                }
            }
            Ok(())
        };
        let f = |v: Vec<(String, i64)>| v.into_iter().map(|(k, n)| (k, n as f64)).collect();
        family(
            "last_success_timestamp",
            "When each resource last completed a listing (unix time)",
            Some(&Unit::Seconds),
            MetricType::Gauge,
            "resource",
            s.last_success,
        )?;
        family(
            "sink_events_delivered",
            "Events delivered, per sink",
            None,
            MetricType::Counter,
            "sink",
            f(s.delivered),
        )?;
        family(
            "sink_events_failed",
            "Events whose delivery failed for good, per sink",
            None,
            MetricType::Counter,
            "sink",
            f(s.failed),
        )?;
        family(
            "sink_events_pending",
            "Events not yet handled by each sink",
            None,
            MetricType::Gauge,
            "sink",
            f(s.pending),
        )?;
        family(
            "downloads",
            "Export downloads by status",
            None,
            MetricType::Gauge,
            "status",
            f(s.downloads),
        )?;
        family(
            "database",
            "Size of the database file: pages in use, and free for reuse",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            "kind",
            f(s.database),
        )?;
        Ok(())
    }
}
