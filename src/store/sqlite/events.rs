//! The SQLite side of `store::events`: its SQL.

use crate::store::events::*;
use rusqlite::{Connection, OptionalExtension, params};

/// Appends one event; returns its public id (`evt_` + ULID, stable forever).
pub fn append(conn: &Connection, ev: &NewEvent, now: &str) -> rusqlite::Result<String> {
    let (id, kind, payload) = document(ev, now);
    conn.prepare_cached(
        "INSERT INTO events (id, type, resource, uid, owner, dataset_slug, old_status, new_status, created_at, payload)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        id,
        kind,
        ev.resource.singular(),
        ev.uid,
        ev.owner,
        ev.dataset_slug,
        ev.old_status,
        ev.new_status,
        now,
        payload.to_string()
    ])?;
    Ok(id)
}

/// Events after `since_seq` whose type matches `glob` (`*` any run of characters).
pub fn list(
    conn: &Connection,
    since_seq: i64,
    glob: &str,
    limit: u32,
) -> rusqlite::Result<Vec<Event>> {
    let sql_glob = glob.replace('?', "[?]");
    let mut stmt = conn.prepare_cached(
        "SELECT seq, id, type, uid, owner, dataset_slug, old_status, new_status, created_at, payload
         FROM events WHERE seq > ?1 AND type GLOB ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![since_seq, sql_glob, limit], |r| {
        Ok(Event {
            seq: r.get(0)?,
            id: r.get(1)?,
            kind: r.get(2)?,
            uid: r.get(3)?,
            owner: r.get(4)?,
            dataset_slug: r.get(5)?,
            old_status: r.get(6)?,
            new_status: r.get(7)?,
            created_at: r.get(8)?,
            payload: r.get(9)?,
        })
    })?;
    rows.collect()
}

/// Resolves `--since`: an event id (`evt_…`) or a sequence number.
pub fn seq_of(conn: &Connection, since: &str) -> rusqlite::Result<Option<i64>> {
    if let Ok(n) = since.parse::<i64>() {
        return Ok(Some(n));
    }
    let found = conn
        .query_row("SELECT seq FROM events WHERE id = ?1", [since], |r| {
            r.get(0)
        })
        .optional()?;
    if found.is_some() || !since.starts_with("evt_") {
        return Ok(found);
    }
    // pruned by retention: ids are ULIDs, in time order, so the listing starts at
    // the next event kept
    conn.query_row(
        "SELECT COALESCE((SELECT min(seq) FROM events WHERE id > ?1) - 1, (SELECT max(seq) FROM events))",
        [since],
        |r| r.get(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Resource;
    use serde_json::json;

    #[test]
    fn describe_names_the_record_and_the_move() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::sqlite::MIGRATIONS
            .to_latest(&mut conn)
            .unwrap();
        let object = json!({"uid": "u1", "key": "seq_017", "status": "customer_review"});
        let ev = NewEvent {
            resource: Resource::Sequences,
            action: "status_changed",
            uid: "u1",
            owner: Some("johndoe"),
            dataset_slug: Some("batch-001"),
            old_status: Some("labeling_2d"),
            new_status: Some("customer_review"),
            object: &object,
            download: None,
            moved_from: None,
            steps: None,
        };
        let id = append(&conn, &ev, "2026-11-22T10:00:00Z").unwrap();
        let e = list(&conn, 0, "sequence.*", 10).unwrap().remove(0);
        assert_eq!(e.id, id);
        assert_eq!(
            describe(&e),
            "sequence johndoe/batch-001/seq_017: labeling_2d → customer_review"
        );
        assert_eq!(seq_of(&conn, &id).unwrap(), Some(e.seq));
        assert!(list(&conn, 0, "export.*", 10).unwrap().is_empty());
    }
}
