//! The SQLite side of `store::retention`: its SQL.

use crate::config::Resource;
use crate::store::retention::*;
use rusqlite::{Connection, params, params_from_iter};

/// Prunes up to [`CHUNK`] events created before `before` that every one of
/// `sinks` has settled (its cursor is past them, or it is disabled; a sink not
/// configured any more does not hold events back, and with no sinks age alone
/// counts), with their deliveries. Returns how many events went.
pub fn prune_events(c: &mut Connection, before: &str, sinks: &[String]) -> rusqlite::Result<usize> {
    let tx = c.transaction()?;
    let settled: i64 = if sinks.is_empty() {
        i64::MAX
    } else {
        let marks = vec!["?"; sinks.len()].join(",");
        // a configured sink without a row has settled nothing yet
        let known: i64 = tx.query_row(
            &format!("SELECT count(*) FROM sink_state WHERE sink IN ({marks})"),
            params_from_iter(sinks),
            |r| r.get(0),
        )?;
        if known < sinks.len() as i64 {
            0
        } else {
            tx.query_row(
                &format!(
                    "SELECT min(CASE WHEN disabled_reason IS NULL THEN cursor ELSE 9223372036854775807 END)
                     FROM sink_state WHERE sink IN ({marks})"
                ),
                params_from_iter(sinks),
                |r| r.get(0),
            )?
        }
    };
    let chosen = "SELECT seq FROM events WHERE seq <= ?1 AND created_at < ?2 ORDER BY seq LIMIT ?3";
    let chunk = CHUNK as i64;
    tx.execute(
        &format!("DELETE FROM deliveries WHERE event_seq IN ({chosen})"),
        params![settled, before, chunk],
    )?;
    let n = tx.execute(
        &format!("DELETE FROM events WHERE seq IN ({chosen})"),
        params![settled, before, chunk],
    )?;
    tx.commit()?;
    Ok(n)
}

/// Prunes up to [`CHUNK`] rows tombstoned before `before`, from each resource
/// table (and the membership of the slices among them). Returns how many went.
pub fn prune_tombstones(c: &mut Connection, before: &str) -> rusqlite::Result<usize> {
    let tx = c.transaction()?;
    let mut n = 0;
    for res in Resource::ALL {
        let t = res.table();
        let chosen = format!(
            "SELECT rowid FROM {t} WHERE deleted_at IS NOT NULL AND deleted_at < ?1 LIMIT ?2"
        );
        if res == Resource::Slices {
            tx.execute(
                &format!(
                    "DELETE FROM slice_items WHERE slice_uid IN (SELECT uid FROM slices WHERE rowid IN ({chosen}))"
                ),
                params![before, CHUNK as i64],
            )?;
        }
        n += tx.execute(
            &format!("DELETE FROM {t} WHERE rowid IN ({chosen})"),
            params![before, CHUNK as i64],
        )?;
    }
    tx.commit()?;
    Ok(n)
}

/// The database's size and the part of it free for reuse, in bytes.
pub fn size(c: &Connection) -> rusqlite::Result<(i64, i64)> {
    let page: i64 = c.pragma_query_value(None, "page_size", |r| r.get(0))?;
    let pages: i64 = c.pragma_query_value(None, "page_count", |r| r.get(0))?;
    let free: i64 = c.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
    Ok((pages * page, free * page))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::events::NewEvent;
    use crate::store::sqlite::events;

    fn event(c: &Connection, uid: &str, at: &str) -> i64 {
        let object = serde_json::json!({"uid": uid});
        events::append(
            c,
            &NewEvent {
                resource: Resource::Exports,
                action: "created",
                uid,
                owner: None,
                dataset_slug: None,
                old_status: None,
                new_status: None,
                object: &object,
                download: None,
                moved_from: None,
                steps: None,
            },
            at,
        )
        .unwrap();
        c.last_insert_rowid()
    }

    fn count(c: &Connection, sql: &str) -> i64 {
        c.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn old_events_go_once_every_configured_sink_has_settled_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("m.db")).unwrap();
        store.with(|c| {
            let old: Vec<i64> = (0..10).map(|i| event(c, &format!("old{i}"), "2020-01-01T00:00:00Z")).collect();
            let new = event(c, "new", "2030-01-01T00:00:00Z");
            for seq in &old {
                c.execute("INSERT INTO deliveries (event_seq, sink, status) VALUES (?1, 'a', 'delivered')", [seq]).unwrap();
            }
            // sink a is past the first five, sink b is disabled, sink gone is not configured
            c.execute_batch(&format!(
                "INSERT INTO sink_state (sink, cursor) VALUES ('a', {});
                 INSERT INTO sink_state (sink, cursor, disabled_reason) VALUES ('b', 0, '410');
                 INSERT INTO sink_state (sink, cursor) VALUES ('gone', 0);",
                old[4]
            ))
            .unwrap();
            let sinks = vec!["a".to_string(), "b".to_string()];
            // a configured sink not registered yet holds everything
            let unregistered = vec!["a".to_string(), "later".to_string()];
            assert_eq!(prune_events(c, "2025-01-01T00:00:00Z", &unregistered).unwrap(), 0);
            assert_eq!(prune_events(c, "2025-01-01T00:00:00Z", &sinks).unwrap(), 5);
            assert_eq!(count(c, "SELECT min(seq) FROM events"), old[5]);
            assert_eq!(count(c, "SELECT count(*) FROM deliveries"), 5, "their deliveries went too");
            // with no sinks, age alone; the new event stays
            assert_eq!(prune_events(c, "2025-01-01T00:00:00Z", &[]).unwrap(), 5);
            assert_eq!(count(c, "SELECT count(*) FROM events"), 1);
            assert_eq!(count(c, "SELECT seq FROM events"), new);
            assert_eq!(count(c, "SELECT count(*) FROM deliveries"), 0);
        });
    }

    #[test]
    fn tombstones_go_after_keep_deleted_with_their_slice_membership() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("m.db")).unwrap();
        store.with(|c| {
            c.execute_batch(
                "INSERT INTO exports (uid, hash, raw, first_seen_at, last_seen_at, deleted_at)
                   VALUES ('gone-long-ago', x'00', '{}', 't', 't', '2020-01-01T00:00:00Z'),
                          ('gone-lately', x'00', '{}', 't', 't', '2030-01-01T00:00:00Z'),
                          ('present', x'00', '{}', 't', 't', NULL);
                 INSERT INTO slices (uid, hash, raw, first_seen_at, last_seen_at, deleted_at)
                   VALUES ('s', x'00', '{}', 't', 't', '2020-01-01T00:00:00Z');
                 INSERT INTO slice_items (slice_uid, item_uid, generation) VALUES ('s', 'i1', 1), ('s', 'i2', 1);",
            )
            .unwrap();
            assert_eq!(prune_tombstones(c, "2025-01-01T00:00:00Z").unwrap(), 2);
            assert_eq!(count(c, "SELECT count(*) FROM exports"), 2);
            assert_eq!(count(c, "SELECT count(*) FROM exports WHERE uid = 'gone-long-ago'"), 0);
            assert_eq!(count(c, "SELECT count(*) FROM slice_items"), 0);
            let (bytes, free) = size(c).unwrap();
            assert!(bytes > 0 && free >= 0 && free < bytes);
        });
    }
}
