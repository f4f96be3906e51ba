//! Per-sink delivery from the outbox: in detection order, at least once, each sink
//! on its own cursor so a sink that is down holds only its own queue. A failing
//! event is retried on the Standard Webhooks schedule (with jitter), then marked
//! `failed` and the queue moves on. State lives in `deliveries` and `sink_state`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rand::Rng;

use super::sinks::{SendError, Sink};
use crate::store::outbox::{Outcome, Place};
use crate::store::{Store, now_rfc3339};

/// Standard Webhooks: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h.
pub fn standard_schedule() -> Vec<Duration> {
    [
        0, 5, 300, 1800, 7200, 18_000, 36_000, 50_400, 72_000, 86_400,
    ]
    .into_iter()
    .map(Duration::from_secs)
    .collect()
}

pub struct Deliverer {
    pub store: Store,
    pub sinks: Vec<Arc<Sink>>,
    http: reqwest::Client,
    schedule: Vec<Duration>,
    /// Per sink, an outcome the database could not record (a full disk): it is
    /// recorded before anything else goes to that sink, so the sink is never
    /// sent an event again because its delivery could not be written down.
    unrecorded: Mutex<HashMap<String, Outcome>>,
}

/// Where a sink's queue stands after a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Nothing left to send.
    Idle,
    /// The head of the queue waits for its next attempt, this long from now.
    Waiting(Duration),
    /// The receiver answered 410 Gone; nothing more goes to this sink.
    Disabled,
}

impl Deliverer {
    pub fn new(store: Store, sinks: Vec<Sink>, schedule: Vec<Duration>) -> Deliverer {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("avala-mirror/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("static HTTP client settings");
        Deliverer {
            store,
            sinks: sinks.into_iter().map(Arc::new).collect(),
            http,
            schedule,
            unrecorded: Mutex::default(),
        }
    }

    /// Records `o` for `sink`; when the database refuses, keeps it to record
    /// first on the next drain.
    async fn settle(&self, sink: &str, o: Outcome) -> crate::store::Result<()> {
        let kept = o.clone();
        let r = self.store.record_delivery(sink, o).await;
        if r.is_err() {
            self.unrecorded
                .lock()
                .expect("unrecorded lock")
                .insert(sink.to_string(), kept);
        }
        r
    }

    /// Gives each sink its place in the outbox before any event can be written
    /// past it (see [`register`]).
    pub async fn register(&self) -> crate::store::Result<()> {
        let sinks: Vec<(String, bool, Option<String>)> = self
            .sinks
            .iter()
            .map(|s| (s.name.clone(), s.from_start, s.legacy_name.clone()))
            .collect();
        self.store.register_sinks(&sinks).await
    }

    /// Sends what is due for one sink, in order, until its queue is empty or its
    /// head must wait.
    pub async fn drain(&self, sink: &Sink) -> crate::store::Result<Drained> {
        let name = sink.name.clone();
        let held = self
            .unrecorded
            .lock()
            .expect("unrecorded lock")
            .remove(&name);
        if let Some(o) = held {
            self.settle(&name, o).await?;
        }
        loop {
            let Place {
                cursor,
                disabled,
                rewinds,
            } = self.store.sink_place(&name).await?;
            if disabled {
                return Ok(Drained::Disabled);
            }
            let batch = self.store.events_after(cursor, "*", 200).await?;
            if batch.is_empty() {
                return Ok(Drained::Idle);
            }
            let mut pos = cursor;
            for e in batch {
                if !sink.wants(&e.kind) {
                    pos = e.seq;
                    continue;
                }
                let seq = e.seq;
                let (attempts, next_at, settled) = self.store.delivery_state(&name, seq).await?;
                if settled {
                    pos = seq;
                    continue;
                }
                if let Some(wait) = next_at.and_then(|t| t.duration_since(SystemTime::now()).ok()) {
                    self.save_cursor(&name, pos, rewinds).await?;
                    return Ok(Drained::Waiting(wait));
                }
                let result = sink.send(&self.http, &e).await;
                let now = now_rfc3339();
                let outcome = |status, attempts, error, next_at, past| Outcome {
                    seq,
                    status,
                    attempts,
                    error,
                    next_at,
                    delivered_at: (status == "delivered").then(|| now.clone()),
                    past,
                };
                match result {
                    Ok(()) => {
                        let o =
                            outcome("delivered", attempts + 1, None, None, Some((seq, rewinds)));
                        self.settle(&name, o).await?;
                        pos = seq;
                    }
                    Err(SendError::Gone) => {
                        self.store
                            .disable_sink(&name, pos, "the receiver answered 410 Gone")
                            .await?;
                        tracing::warn!(sink = %name, "410 Gone: sink disabled");
                        return Ok(Drained::Disabled);
                    }
                    Err(SendError::Retry { error, after }) => {
                        let tries = attempts + 1;
                        match self.schedule.get(tries as usize) {
                            Some(base) => {
                                let jitter = rand::rng().random_range(0.9..1.1);
                                let wait = base.mul_f64(jitter).max(after.unwrap_or_default());
                                let next =
                                    humantime::format_rfc3339_millis(SystemTime::now() + wait)
                                        .to_string();
                                tracing::warn!(sink = %name, event = %e.id, attempt = tries, ?wait, "delivery failed: {error}");
                                let o = outcome("pending", tries, Some(error), Some(next), None);
                                self.settle(&name, o).await?;
                                self.save_cursor(&name, pos, rewinds).await?;
                                return Ok(Drained::Waiting(wait));
                            }
                            None => {
                                tracing::error!(sink = %name, event = %e.id, "delivery failed for good after {tries} attempts: {error}");
                                let o = outcome(
                                    "failed",
                                    tries,
                                    Some(error),
                                    None,
                                    Some((seq, rewinds)),
                                );
                                self.settle(&name, o).await?;
                                pos = seq;
                            }
                        }
                    }
                }
            }
            self.save_cursor(&name, pos, rewinds).await?;
        }
    }

    async fn save_cursor(&self, sink: &str, pos: i64, rewinds: i64) -> crate::store::Result<()> {
        self.store.advance_sink(sink, pos, rewinds).await
    }

    /// Drains every sink until each is idle, waiting or disabled, or `limit` passes
    /// (what `sync` does before it exits). Returns the sinks still holding events.
    pub async fn flush(&self, limit: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + limit;
        // side by side: a slow sink does not hold the others
        let held = self.sinks.iter().map(|sink| async move {
            loop {
                match tokio::time::timeout_at(deadline, self.drain(sink)).await {
                    Ok(Ok(Drained::Idle | Drained::Disabled)) => return None,
                    Ok(Ok(Drained::Waiting(w))) if tokio::time::Instant::now() + w < deadline => {
                        tokio::time::sleep(w).await
                    }
                    Ok(Ok(Drained::Waiting(_))) | Err(_) => return Some(sink.name.clone()),
                    Ok(Err(e)) => {
                        tracing::error!(sink = %sink.name, "delivery stopped: {e}");
                        return Some(sink.name.clone());
                    }
                }
            }
        });
        futures_util::future::join_all(held)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// `run`: one loop per sink until dropped. An idle sink looks for new events
    /// every 500 ms (detection to delivery well under a second); a waiting one
    /// sleeps until its next attempt.
    pub async fn serve(self: Arc<Self>) {
        let tasks: Vec<_> = self
            .sinks
            .clone()
            .into_iter()
            .map(|sink| {
                let me = self.clone();
                tokio::spawn(async move {
                    // drains in a row that the database failed (a full disk)
                    let mut failing = 0u32;
                    loop {
                        let drained = me.drain(&sink).await;
                        failing = if drained.is_err() { failing + 1 } else { 0 };
                        let wait = match drained {
                            Ok(Drained::Idle) => Duration::from_millis(500),
                            Ok(Drained::Waiting(w)) => w,
                            // until `events redeliver` enables it again
                            Ok(Drained::Disabled) => DISABLED_LOOK,
                            Err(e) => {
                                let wait = store_backoff(failing);
                                tracing::error!(sink = %sink.name, "delivery paused for {}: {e}", humantime::format_duration(wait));
                                wait
                            }
                        };
                        tokio::time::sleep(wait).await;
                    }
                })
            })
            .collect();
        let _guard = AbortAll(tasks);
        std::future::pending::<()>().await;
    }
}

/// How long a sink waits after its `failing`-th drain in a row that the
/// database failed: 5 s, doubling, at most 5 minutes.
fn store_backoff(failing: u32) -> Duration {
    Duration::from_secs(5)
        .saturating_mul(1 << failing.saturating_sub(1).min(6))
        .min(Duration::from_secs(300))
}

struct AbortAll(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortAll {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// How often a sink disabled by 410 looks whether `events redeliver` enabled it.
const DISABLED_LOOK: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_database_is_retried_less_and_less_often() {
        let waits: Vec<u64> = (1..=9).map(|n| store_backoff(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }
}
