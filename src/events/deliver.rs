//! Per-sink delivery from the outbox: in detection order, at least once, each sink
//! on its own cursor so a sink that is down holds only its own queue. A failing
//! event is retried on the Standard Webhooks schedule (with jitter), then marked
//! `failed` and the queue moves on. State lives in `deliveries` and `sink_state`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng;
use rusqlite::{Connection, OptionalExtension, params};

use super::sinks::{SendError, Sink};
use crate::store::{Store, events, now_rfc3339};

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
        }
    }

    /// Gives each sink its place in the outbox before any event can be written
    /// past it (see [`register`]).
    pub fn register(&self) -> rusqlite::Result<()> {
        let sinks: Vec<(String, bool, Option<String>)> = self
            .sinks
            .iter()
            .map(|s| (s.name.clone(), s.from_start, s.legacy_name.clone()))
            .collect();
        self.store.with(|c| register(c, &sinks))
    }

    /// Sends what is due for one sink, in order, until its queue is empty or its
    /// head must wait.
    pub async fn drain(&self, sink: &Sink) -> rusqlite::Result<Drained> {
        let name = sink.name.clone();
        loop {
            let n = name.clone();
            let Place {
                cursor,
                disabled,
                rewinds,
            } = self.store.read(move |c| place(c, &n)).await?;
            if disabled {
                return Ok(Drained::Disabled);
            }
            let batch = self
                .store
                .read(move |c| events::list(c, cursor, "*", 200))
                .await?;
            if batch.is_empty() {
                return Ok(Drained::Idle);
            }
            let mut pos = cursor;
            for e in batch {
                if !sink.wants(&e.kind) {
                    pos = e.seq;
                    continue;
                }
                let (n, seq) = (name.clone(), e.seq);
                let (attempts, next_at, settled) =
                    self.store.read(move |c| attempt_state(c, &n, seq)).await?;
                if settled {
                    pos = seq;
                    continue;
                }
                if let Some(wait) = next_at.and_then(|t| t.duration_since(SystemTime::now()).ok()) {
                    self.save_cursor(&name, pos, rewinds).await?;
                    return Ok(Drained::Waiting(wait));
                }
                let result = sink.send(&self.http, &e).await;
                let (n, now) = (name.clone(), now_rfc3339());
                match result {
                    Ok(()) => {
                        self.store
                            .call(move |c| {
                                record(
                                    c,
                                    &n,
                                    seq,
                                    "delivered",
                                    attempts + 1,
                                    None,
                                    None,
                                    Some(&now),
                                    Some((seq, rewinds)),
                                )
                            })
                            .await?;
                        pos = seq;
                    }
                    Err(SendError::Gone) => {
                        self.store
                            .call(move |c| {
                                c.execute(
                                    "INSERT INTO sink_state (sink, cursor, disabled_reason) VALUES (?1, ?2, ?3)
                                     ON CONFLICT(sink) DO UPDATE SET disabled_reason = excluded.disabled_reason",
                                    params![n, pos, "the receiver answered 410 Gone"],
                                )
                            })
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
                                self.store
                                    .call(move |c| {
                                        record(
                                            c,
                                            &n,
                                            seq,
                                            "pending",
                                            tries,
                                            Some(&error),
                                            Some(&next),
                                            None,
                                            None,
                                        )
                                    })
                                    .await?;
                                self.save_cursor(&name, pos, rewinds).await?;
                                return Ok(Drained::Waiting(wait));
                            }
                            None => {
                                tracing::error!(sink = %name, event = %e.id, "delivery failed for good after {tries} attempts: {error}");
                                self.store
                                    .call(move |c| {
                                        record(
                                            c,
                                            &n,
                                            seq,
                                            "failed",
                                            tries,
                                            Some(&error),
                                            None,
                                            None,
                                            Some((seq, rewinds)),
                                        )
                                    })
                                    .await?;
                                pos = seq;
                            }
                        }
                    }
                }
            }
            self.save_cursor(&name, pos, rewinds).await?;
        }
    }

    async fn save_cursor(&self, sink: &str, pos: i64, rewinds: i64) -> rusqlite::Result<()> {
        let s = sink.to_string();
        self.store.call(move |c| advance(c, &s, pos, rewinds)).await
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
                    loop {
                        let wait = match me.drain(&sink).await {
                            Ok(Drained::Idle) => Duration::from_millis(500),
                            Ok(Drained::Waiting(w)) => w,
                            // until `events redeliver` enables it again
                            Ok(Drained::Disabled) => DISABLED_LOOK,
                            Err(e) => {
                                tracing::error!(sink = %sink.name, "delivery: {e}");
                                Duration::from_secs(5)
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

/// Where a sink stands in the outbox.
struct Place {
    /// The last event it is done with.
    cursor: i64,
    disabled: bool,
    /// Rewinds by `events redeliver` so far; a cursor read before one is stale.
    rewinds: i64,
}

fn place(c: &Connection, sink: &str) -> rusqlite::Result<Place> {
    Ok(c.query_row(
        "SELECT cursor, disabled_reason IS NOT NULL, rewinds FROM sink_state WHERE sink = ?1",
        [sink],
        |r| {
            Ok(Place {
                cursor: r.get(0)?,
                disabled: r.get(1)?,
                rewinds: r.get(2)?,
            })
        },
    )
    .optional()?
    .unwrap_or(Place {
        cursor: 0,
        disabled: false,
        rewinds: 0,
    }))
}

/// Moves a sink's cursor forward to `pos`, unless `events redeliver` rewound it
/// since the cursor was read (`rewinds` then differs, and the rewind stands).
fn advance(c: &Connection, sink: &str, pos: i64, rewinds: i64) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO sink_state (sink, cursor) VALUES (?1, ?2)
         ON CONFLICT(sink) DO UPDATE SET cursor = max(cursor, excluded.cursor)
         WHERE rewinds = ?3",
        params![sink, pos, rewinds],
    )
    .map(drop)
}

/// Gives each `(name, from_start, legacy_name)` sink a place the first time it is
/// configured: after the newest event (with `from_start`, before the first), so
/// adding a sink to a year-old mirror does not replay its history. An unnamed
/// sink known under its old default name (`<type>-<index>`) keeps that place.
pub fn register(
    c: &mut Connection,
    sinks: &[(String, bool, Option<String>)],
) -> rusqlite::Result<()> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for (name, from_start, legacy) in sinks {
        let known: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM sink_state WHERE sink = ?1)",
            [name],
            |r| r.get(0),
        )?;
        if known {
            continue;
        }
        if let Some(old) = legacy {
            let moved = tx.execute(
                "UPDATE sink_state SET sink = ?2 WHERE sink = ?1",
                [old, name],
            )?;
            if moved == 1 {
                tx.execute(
                    "UPDATE deliveries SET sink = ?2 WHERE sink = ?1",
                    [old, name],
                )?;
                tracing::info!(sink = %name, "kept the place of sink {old}");
                continue;
            }
        }
        tx.execute(
            "INSERT INTO sink_state (sink, cursor)
             SELECT ?1, CASE WHEN ?2 THEN 0 ELSE COALESCE(max(seq), 0) END FROM events",
            params![name, from_start],
        )?;
    }
    tx.commit()
}

/// (attempts so far, when the next may be made, whether it is settled already).
fn attempt_state(
    c: &Connection,
    sink: &str,
    seq: i64,
) -> rusqlite::Result<(u32, Option<SystemTime>, bool)> {
    let row: Option<(u32, Option<String>, String)> = c
        .query_row(
            "SELECT attempts, next_attempt_at, status FROM deliveries WHERE sink = ?1 AND event_seq = ?2",
            params![sink, seq],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    Ok(match row {
        Some((a, next, status)) => (
            a,
            next.and_then(|t| humantime::parse_rfc3339(&t).ok()),
            status != "pending",
        ),
        None => (0, None, false),
    })
}

/// `events redeliver`: failed deliveries (of one sink, from one event on) go back
/// to pending, the sink's cursor moves back to the first of them, and a sink
/// disabled by 410 is enabled again. Returns how many deliveries were reset.
pub fn redeliver(
    c: &mut Connection,
    sink: Option<&str>,
    since_seq: i64,
) -> rusqlite::Result<usize> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let firsts: Vec<(String, i64)> = {
        let mut st = tx.prepare(
            "SELECT sink, min(event_seq) FROM deliveries WHERE status = 'failed' AND event_seq > ?1
               AND (?2 IS NULL OR sink = ?2) GROUP BY sink",
        )?;
        st.query_map(params![since_seq, sink], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?
    };
    let n = tx.execute(
        "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = NULL
         WHERE status = 'failed' AND event_seq > ?1 AND (?2 IS NULL OR sink = ?2)",
        params![since_seq, sink],
    )?;
    for (s, first) in firsts {
        tx.execute(
            "UPDATE sink_state SET cursor = min(cursor, ?2), rewinds = rewinds + 1 WHERE sink = ?1",
            params![s, first - 1],
        )?;
    }
    tx.execute(
        "UPDATE sink_state SET disabled_reason = NULL WHERE disabled_reason IS NOT NULL AND (?1 IS NULL OR sink = ?1)",
        params![sink],
    )?;
    tx.commit()?;
    Ok(n)
}

/// Records an attempt; with `advance` (the event, and the rewinds the cursor was
/// read at), moves the sink's cursor past the event in the same transaction.
#[allow(clippy::too_many_arguments)]
fn record(
    c: &mut Connection,
    sink: &str,
    seq: i64,
    status: &str,
    attempts: u32,
    error: Option<&str>,
    next_at: Option<&str>,
    delivered_at: Option<&str>,
    past: Option<(i64, i64)>,
) -> rusqlite::Result<()> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO deliveries (event_seq, sink, status, attempts, next_attempt_at, last_error, delivered_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(sink, event_seq) DO UPDATE SET status = excluded.status, attempts = excluded.attempts,
           next_attempt_at = excluded.next_attempt_at, last_error = excluded.last_error,
           delivered_at = excluded.delivered_at",
        params![seq, sink, status, attempts, next_at, error, delivered_at],
    )?;
    if let Some((pos, rewinds)) = past {
        advance(&tx, sink, pos, rewinds)?;
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_read_before_a_rewind_cannot_move_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("m.db")).unwrap();
        store.with(|c| {
            c.execute("INSERT INTO sink_state (sink, cursor) VALUES ('s', 10)", [])
                .unwrap();
            let before = place(c, "s").unwrap();
            // `events redeliver` rewinds while a delivery loop is between two events
            c.execute(
                "UPDATE sink_state SET cursor = 3, rewinds = rewinds + 1 WHERE sink = 's'",
                [],
            )
            .unwrap();
            advance(c, "s", 12, before.rewinds).unwrap();
            assert_eq!(place(c, "s").unwrap().cursor, 3, "the rewind stands");
            let now = place(c, "s").unwrap();
            advance(c, "s", 4, now.rewinds).unwrap();
            assert_eq!(place(c, "s").unwrap().cursor, 4, "a fresh read moves on");
        });
    }
}
