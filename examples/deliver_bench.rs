//! Delivery throughput: a backlog of N events drained to a local webhook receiver.
//!
//!     cargo run --release --example deliver_bench -- [EVENTS]     (default 100000)
//!
//! Prints events/s, peak RSS, and the time from an event being stored to its
//! arrival at the receiver while the daemon's delivery loop runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use avala_mirror::config::{Resource, SinkConfig};
use avala_mirror::events::deliver::{Deliverer, standard_schedule};
use avala_mirror::events::sinks::Sink;
use avala_mirror::store::events::NewEvent;
use avala_mirror::store::sqlite::events;
use avala_mirror::store::{Store, now_rfc3339};

#[path = "common/rss.rs"]
mod rss;
use rss::proc_status;

fn append(store: &Store, n: u64) -> anyhow::Result<()> {
    let object = serde_json::json!({"uid": "x", "key": "seq_001", "status": "customer_review", "number_of_frames": 150});
    store.with(|c| -> rusqlite::Result<()> {
        let tx = c.transaction()?;
        let now = now_rfc3339();
        for i in 0..n {
            let uid = format!("seq-{i}");
            let ev = NewEvent {
                resource: Resource::Sequences,
                action: "status_changed",
                uid: &uid,
                owner: Some("bench"),
                dataset_slug: Some("batch-001"),
                old_status: Some("review_2d"),
                new_status: Some("customer_review"),
                object: &object,
                download: None,
                moved_from: None,
                steps: None,
            };
            events::append(&tx, &ev, &now)?;
        }
        tx.commit()
    })?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let received = Arc::new(AtomicU64::new(0));
    let r = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |_body: String| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("bench.db"))?;
    append(&store, n)?;
    let sink = Sink::from_config(&SinkConfig {
        kind: "webhook".into(),
        name: "hook".into(),
        path: None,
        url: Some(url),
        secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
        secret_file: None,
        events: vec!["*".into()],
        ..Default::default()
    })
    .map_err(anyhow::Error::msg)?;
    let d = Arc::new(Deliverer::new(
        store.clone(),
        vec![sink],
        standard_schedule(),
    ));
    let t = Instant::now();
    let held = d.flush(Duration::from_secs(3600)).await;
    let secs = t.elapsed().as_secs_f64();
    assert!(held.is_empty() && received.load(Ordering::Relaxed) == n);
    println!(
        "backlog of {n} events delivered at {:.0} events/s ({secs:.1} s); peak RSS {}",
        n as f64 / secs,
        proc_status("VmHWM:")
    );

    // detection to delivery with the daemon's loop running
    let serving = tokio::spawn(d.clone().serve());
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(137)).await;
        let before = received.load(Ordering::Relaxed);
        let t = Instant::now();
        append(&store, 1)?;
        while received.load(Ordering::Relaxed) == before {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        worst = worst.max(t.elapsed());
        let _ = i;
    }
    serving.abort();
    println!(
        "detection to delivery: at most {:.0} ms over 20 events",
        worst.as_secs_f64() * 1000.0
    );
    Ok(())
}
