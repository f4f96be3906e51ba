//! The SQLite side of `store::outbox`: its SQL.

use crate::store::outbox::*;
use rusqlite::{Connection, OptionalExtension, params};
use std::time::SystemTime;

pub fn place(c: &Connection, sink: &str) -> rusqlite::Result<Place> {
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
pub fn advance(c: &Connection, sink: &str, pos: i64, rewinds: i64) -> rusqlite::Result<()> {
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
pub fn attempt_state(
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

/// Records an attempt's outcome for `sink`.
pub fn record(c: &mut Connection, sink: &str, o: &Outcome) -> rusqlite::Result<()> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO deliveries (event_seq, sink, status, attempts, next_attempt_at, last_error, delivered_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(sink, event_seq) DO UPDATE SET status = excluded.status, attempts = excluded.attempts,
           next_attempt_at = excluded.next_attempt_at, last_error = excluded.last_error,
           delivered_at = excluded.delivered_at",
        params![o.seq, sink, o.status, o.attempts, o.next_at, o.error, o.delivered_at],
    )?;
    if let Some((pos, rewinds)) = o.past {
        advance(&tx, sink, pos, rewinds)?;
    }
    tx.commit()
}

/// Disables a sink (its receiver answered 410 Gone), at its place `pos`.
pub fn disable(c: &Connection, sink: &str, pos: i64, reason: &str) -> rusqlite::Result<usize> {
    c.execute(
        "INSERT INTO sink_state (sink, cursor, disabled_reason) VALUES (?1, ?2, ?3)
         ON CONFLICT(sink) DO UPDATE SET disabled_reason = excluded.disabled_reason",
        params![sink, pos, reason],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

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
