//! The delivery outbox's state: each sink's place (`sink_state`), each
//! attempt (`deliveries`), registration of new sinks and `events redeliver`.
//! The delivery loops (`events::deliver`) decide; this records.

use super::sqlite::outbox::*;

/// Where a sink stands in the outbox.
pub struct Place {
    /// The last event it is done with.
    pub cursor: i64,
    pub disabled: bool,
    /// Rewinds by `events redeliver` so far; a cursor read before one is stale.
    pub rewinds: i64,
}

/// `events redeliver`: failed deliveries (of one sink, from one event on) go back
/// to pending, the sink's cursor moves back to the first of them, and a sink
/// disabled by 410 is enabled again. Returns how many deliveries were reset.
/// Delivery state, as the deliverer uses it.
impl super::Store {
    /// A sink's place in the outbox.
    pub async fn sink_place(&self, sink: &str) -> super::Result<Place> {
        if let Some(pg) = self.pg() {
            return pg.sink_place(sink).await;
        }
        let s = sink.to_string();
        Ok(self.read(move |c| place(c, &s)).await?)
    }

    /// Moves a sink's cursor to `pos`, unless `events redeliver` rewound it since
    /// (`rewinds` is the count the caller read).
    pub async fn advance_sink(&self, sink: &str, pos: i64, rewinds: i64) -> super::Result<()> {
        if let Some(pg) = self.pg() {
            return pg.advance_sink(sink, pos, rewinds).await;
        }
        let s = sink.to_string();
        Ok(self.call(move |c| advance(c, &s, pos, rewinds)).await?)
    }

    /// Gives each sink (name, from the start, its former name) its place in the
    /// outbox before any event can be written past it.
    pub async fn register_sinks(
        &self,
        sinks: &[(String, bool, Option<String>)],
    ) -> super::Result<()> {
        if let Some(pg) = self.pg() {
            return pg.register_sinks(sinks).await;
        }
        let s = sinks.to_vec();
        Ok(self.call(move |c| register(c, &s)).await?)
    }

    /// (attempts, next attempt, settled) of one event for one sink.
    pub async fn delivery_state(
        &self,
        sink: &str,
        seq: i64,
    ) -> super::Result<(u32, Option<std::time::SystemTime>, bool)> {
        if let Some(pg) = self.pg() {
            return pg.delivery_state(sink, seq).await;
        }
        let s = sink.to_string();
        Ok(self.read(move |c| attempt_state(c, &s, seq)).await?)
    }

    /// Records a delivery's outcome.
    pub async fn record_delivery(&self, sink: &str, o: Outcome) -> super::Result<()> {
        if let Some(pg) = self.pg() {
            return pg.record_delivery(sink, o).await;
        }
        let s = sink.to_string();
        Ok(self.call(move |c| record(c, &s, &o)).await?)
    }

    /// Disables a sink (a 410 Gone) at `pos`.
    pub async fn disable_sink(&self, sink: &str, pos: i64, reason: &str) -> super::Result<()> {
        if let Some(pg) = self.pg() {
            return pg.disable_sink(sink, pos, reason).await;
        }
        let (s, r) = (sink.to_string(), reason.to_string());
        self.call(move |c| disable(c, &s, pos, &r)).await?;
        Ok(())
    }

    /// Failed deliveries after `since_seq` back to pending, for one sink or all
    /// (a sink disabled by a 410 enabled again): how many.
    pub async fn redeliver(&self, sink: Option<&str>, since_seq: i64) -> super::Result<usize> {
        if let Some(pg) = self.pg() {
            return pg.redeliver(sink, since_seq).await;
        }
        let s = sink.map(str::to_string);
        Ok(self
            .call(move |c| redeliver(c, s.as_deref(), since_seq))
            .await?)
    }
}

/// One attempt's outcome, as `deliveries` keeps it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub seq: i64,
    /// `delivered`, `pending` (to be tried again at `next_at`) or `failed`.
    pub status: &'static str,
    pub attempts: u32,
    pub error: Option<String>,
    pub next_at: Option<String>,
    pub delivered_at: Option<String>,
    /// The event and the rewinds the cursor was read at: the sink is done with
    /// it, so its cursor moves past it in the same transaction.
    pub past: Option<(i64, i64)>,
}
