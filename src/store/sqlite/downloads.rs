//! The SQLite side of `store::downloads`: its SQL.

use super::events;
use crate::store::downloads::*;
use crate::store::events::NewEvent;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

/// Queues an export's archive once: an export already queued, done or failed stays
/// as it is; one awaiting its link gets it.
pub fn enqueue(
    conn: &Connection,
    export_uid: &str,
    url: &str,
    file_name: &str,
    now: &str,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "INSERT INTO downloads (export_uid, url, file_name, status, created_at, updated_at)
             VALUES (?1, ?2, ?3, 'pending', ?4, ?4) ON CONFLICT(export_uid) DO NOTHING",
        )?
        .execute(params![export_uid, url, file_name, now])?;
    Ok(n == 1 || link_arrived(conn, export_uid, url, file_name, now)?)
}

/// Remembers an export that became `exported` with no link yet, so the listing
/// that brings the link queues it ([`link_arrived`]).
pub fn await_link(conn: &Connection, export_uid: &str, now: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO downloads (export_uid, status, created_at, updated_at)
         VALUES (?1, 'awaiting_link', ?2, ?2) ON CONFLICT(export_uid) DO NOTHING",
    )?
    .execute(params![export_uid, now])
    .map(drop)
}

/// Queues an export awaiting its link, now that it has one; nothing else.
pub fn link_arrived(
    conn: &Connection,
    export_uid: &str,
    url: &str,
    file_name: &str,
    now: &str,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE downloads SET url = ?2, file_name = ?3, status = 'pending', updated_at = ?4
             WHERE export_uid = ?1 AND status = 'awaiting_link'",
        )?
        .execute(params![export_uid, url, file_name, now])?;
    Ok(n == 1)
}

/// Queues a download on request (`exports download`), starting over with fresh
/// attempts and the given link whatever the row said before.
pub fn request(
    conn: &Connection,
    export_uid: &str,
    url: &str,
    file_name: &str,
    now: &str,
) -> rusqlite::Result<()> {
    if !enqueue(conn, export_uid, url, file_name, now)? {
        conn.execute(
            "UPDATE downloads SET status = 'pending', attempts = 0, error = NULL, url = ?2, updated_at = ?3
             WHERE export_uid = ?1",
            params![export_uid, url, now],
        )?;
    }
    Ok(())
}

/// Downloads to work on: queued ones and those a stopped process left in progress.
pub fn due(conn: &Connection, now: &str) -> rusqlite::Result<Vec<Job>> {
    let mut stmt = conn.prepare_cached(
        "SELECT export_uid, url, file_name, attempts FROM downloads
         WHERE status IN ('pending', 'downloading')
            OR (status = 'waiting_for_space' AND retry_at <= ?1)
         ORDER BY created_at, export_uid",
    )?;
    let rows = stmt.query_map([now], |r| {
        Ok(Job {
            export_uid: r.get(0)?,
            url: r.get(1)?,
            file_name: r.get(2)?,
            attempts: r.get(3)?,
        })
    })?;
    rows.collect()
}

/// The queued download of an export (not one still awaiting its link).
pub fn get(conn: &Connection, export_uid: &str) -> rusqlite::Result<Option<Job>> {
    conn.query_row(
        "SELECT export_uid, url, file_name, attempts FROM downloads
         WHERE export_uid = ?1 AND url IS NOT NULL",
        [export_uid],
        |r| {
            Ok(Job {
                export_uid: r.get(0)?,
                url: r.get(1)?,
                file_name: r.get(2)?,
                attempts: r.get(3)?,
            })
        },
    )
    .optional()
}

/// Where a downloaded archive was put, if it was downloaded.
pub fn downloaded_path(conn: &Connection, export_uid: &str) -> rusqlite::Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT path FROM downloads WHERE export_uid = ?1 AND status = 'downloaded'",
            [export_uid],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()?
        .flatten())
}

/// A multipart upload of the export's archive began (`Some((key, id))`), or
/// ended, completed or aborted (`None`).
pub fn set_upload(
    conn: &Connection,
    export_uid: &str,
    upload: Option<(&str, &str)>,
) -> rusqlite::Result<()> {
    let (key, id) = upload.unzip();
    conn.execute(
        "UPDATE downloads SET upload_key = ?2, upload_id = ?3 WHERE export_uid = ?1",
        params![export_uid, key, id],
    )?;
    Ok(())
}

/// Multipart uploads recorded as begun and never ended: (export, key, id).
pub fn unfinished_uploads(conn: &Connection) -> rusqlite::Result<Vec<(String, String, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT export_uid, upload_key, upload_id FROM downloads
         WHERE upload_id IS NOT NULL AND upload_key IS NOT NULL",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}

/// One more attempt begins.
pub fn attempt(conn: &Connection, export_uid: &str, now: &str) -> rusqlite::Result<u32> {
    conn.query_row(
        "UPDATE downloads SET status = 'downloading', attempts = attempts + 1, updated_at = ?2
         WHERE export_uid = ?1 RETURNING attempts",
        params![export_uid, now],
        |r| r.get(0),
    )
}

/// An attempt failed and another will follow.
pub fn attempt_failed(
    conn: &Connection,
    export_uid: &str,
    error: &str,
    now: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE downloads SET error = ?2, updated_at = ?3 WHERE export_uid = ?1",
        params![export_uid, error, now],
    )?;
    Ok(())
}

/// A fresh link from the API.
/// The disk lacked space for an archive: it waits, and is due again at `retry_at`.
pub fn wait_for_space(
    conn: &Connection,
    export_uid: &str,
    error: &str,
    retry_at: &str,
    now: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE downloads SET status = 'waiting_for_space', error = ?2, retry_at = ?3, updated_at = ?4
         WHERE export_uid = ?1",
        params![export_uid, error, retry_at, now],
    )?;
    Ok(())
}

pub fn set_url(conn: &Connection, export_uid: &str, url: &str) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE downloads SET url = ?2 WHERE export_uid = ?1",
        params![export_uid, url],
    )?;
    Ok(())
}

/// The archive is in place: record it and its `export.downloaded` event together.
pub fn complete(
    conn: &mut Connection,
    export_uid: &str,
    path: &str,
    bytes: u64,
    sha256: &str,
    now: &str,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute(
        "UPDATE downloads SET status = 'downloaded', path = ?2, bytes = ?3, sha256 = ?4, error = NULL,
         completed_at = ?5, updated_at = ?5 WHERE export_uid = ?1",
        params![export_uid, path, bytes as i64, sha256, now],
    )?;
    let detail = json!({"path": path, "bytes": bytes, "sha256": sha256});
    append_event(&tx, export_uid, "downloaded", detail, now)?;
    tx.commit()
}

/// No more attempts: `failed`, with its `export.download_failed` event.
pub fn fail(
    conn: &mut Connection,
    export_uid: &str,
    error: &str,
    now: &str,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let attempts: u32 = tx.query_row(
        "UPDATE downloads SET status = 'failed', error = ?2, updated_at = ?3 WHERE export_uid = ?1
         RETURNING attempts",
        params![export_uid, error, now],
        |r| r.get(0),
    )?;
    let detail = json!({"error": error, "attempts": attempts});
    append_event(&tx, export_uid, "download_failed", detail, now)?;
    tx.commit()
}

fn append_event(
    conn: &Connection,
    export_uid: &str,
    action: &str,
    detail: Value,
    now: &str,
) -> rusqlite::Result<()> {
    let (raw, status): (Option<String>, Option<String>) = conn
        .query_row(
            "SELECT raw, status FROM exports WHERE uid = ?1",
            [export_uid],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .unwrap_or((None, None));
    let object = raw
        .and_then(|r| serde_json::from_str(&r).ok())
        .unwrap_or(Value::Null);
    events::append(
        conn,
        &NewEvent::download(export_uid, action, status.as_deref(), &object, detail),
        now,
    )?;
    Ok(())
}

pub fn outcome(conn: &Connection, export_uid: &str) -> rusqlite::Result<Option<Outcome>> {
    conn.query_row(
        "SELECT status, path, bytes, sha256, error FROM downloads WHERE export_uid = ?1",
        [export_uid],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    )
    .optional()
}

/// Present exports (newest first) and downloads of exports no longer listed.
pub fn list(conn: &Connection) -> rusqlite::Result<Vec<Listed>> {
    let mut stmt = conn.prepare(
        "SELECT e.uid, e.name, e.format, e.status, e.created_at,
                d.status, d.bytes, d.path, d.sha256, d.error
         FROM exports e LEFT JOIN downloads d ON d.export_uid = e.uid
         WHERE e.deleted_at IS NULL
         UNION ALL
         SELECT d.export_uid, NULL, NULL, NULL, d.created_at, d.status, d.bytes, d.path, d.sha256, d.error
         FROM downloads d WHERE NOT EXISTS (SELECT 1 FROM exports e WHERE e.uid = d.export_uid AND e.deleted_at IS NULL)
         ORDER BY 5 DESC, 1",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Listed {
            uid: r.get(0)?,
            name: r.get(1)?,
            format: r.get(2)?,
            status: r.get(3)?,
            created_at: r.get(4)?,
            download_status: r.get(5)?,
            bytes: r.get(6)?,
            path: r.get(7)?,
            sha256: r.get(8)?,
            error: r.get(9)?,
        })
    })?;
    rows.collect()
}
