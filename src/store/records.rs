//! Applying decisions to the resource tables: one page in one transaction, the
//! scan for rows a complete listing missed, and tombstones. All resource tables
//! share their core columns, so one set of statements serves every resource.

use std::collections::HashMap;

use roaring::RoaringTreemap;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use serde_json::Value;

use super::events::{self, NewEvent};
use crate::config::Resource;
use crate::sync::diff::{self, Decision, Incoming, Stored};

#[derive(Debug, Default, Clone, Copy)]
pub struct PageOutcome {
    pub created: u64,
    pub updated: u64,
    pub status_changed: u64,
    pub unchanged: u64,
    /// uids this listing had already returned (the collection shifted under it).
    pub duplicates: u64,
    pub events: u64,
    /// Archives queued for download.
    pub queued: u64,
}

/// Which exported archives an export listing queues for download (SPEC §5, `downloads.backfill`).
#[derive(Debug, Clone, Copy)]
pub struct QueueRule {
    /// Queue exports that are already `exported`, not only those that become so.
    pub backfill: bool,
    /// The export listing's silent baseline is behind it: a new export counts as
    /// one that became `exported`.
    pub past_baseline: bool,
}

impl QueueRule {
    fn wants(&self, decision: &Decision, rec: &Incoming) -> bool {
        let became = match decision {
            Decision::StatusChanged { .. } => true,
            Decision::Created => self.past_baseline,
            _ => false,
        };
        (became || self.backfill) && rec.status.as_deref() == Some("exported")
    }
}

/// Applies pages of records inside the caller's transaction (a [`crate::store::Batch`]).
/// Events go in the same one, for the records whose scope `emit` says is past its
/// silent baseline, and so do the downloads `queue` asks for. `seen` collects the rowids of every record present
/// in the listing. With `mostly_new` (a scope's first listing) a record is inserted
/// first and looked up only if it was there already, saving one index search per new row.
#[allow(clippy::too_many_arguments)]
pub fn apply_pages(
    conn: &Connection,
    res: Resource,
    pages: &[Vec<Incoming>],
    emit: &dyn Fn(&Incoming) -> bool,
    queue: Option<QueueRule>,
    mostly_new: bool,
    now: &str,
    seen: &mut RoaringTreemap,
) -> rusqlite::Result<PageOutcome> {
    let t = res.table();
    let mut out = PageOutcome::default();
    {
        let mut select = conn.prepare_cached(&format!(
            "SELECT rowid, hash, status, deleted_at IS NOT NULL FROM {t} WHERE uid = ?1"
        ))?;
        // Insert and update stay two statements: one upsert with RETURNING rowid
        // measured 2-3x slower on a first sync.
        let mut insert = conn.prepare_cached(&format!(
            "INSERT INTO {t} (uid, owner_name, dataset_slug, status, hash, raw, first_seen_at, last_seen_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) ON CONFLICT(uid) DO NOTHING"
        ))?;
        let mut update = conn.prepare_cached(&format!(
            "UPDATE {t} SET owner_name = ?2, dataset_slug = ?3, status = ?4, hash = ?5, raw = ?6,
             last_seen_at = ?7, deleted_at = NULL WHERE rowid = ?1"
        ))?;
        let recs: Vec<&Incoming> = pages.iter().flatten().collect();
        let mut window = match mostly_new {
            true => vec![None; recs.len()],
            false => read_window(conn, t, &recs)?,
        };
        for (i, &rec) in recs.iter().enumerate() {
            let insert_row = |insert: &mut rusqlite::CachedStatement| {
                insert.execute(params![
                    rec.uid,
                    rec.owner,
                    rec.dataset_slug,
                    rec.status,
                    &rec.hash[..],
                    rec.raw,
                    now
                ])
            };
            if mostly_new && insert_row(&mut insert)? == 1 {
                seen.insert(conn.last_insert_rowid() as u64);
                out.created += 1;
                if queue.is_some_and(|q| q.wants(&Decision::Created, rec)) {
                    out.queued += queue_download(conn, rec, now)? as u64;
                }
                if emit(rec) {
                    append_event(conn, res, rec, &Decision::Created, now)?;
                    out.events += 1;
                }
                continue;
            }
            let stored = match window[i].take() {
                Some(s) => Some(s),
                None => select.query_row([&rec.uid], stored_row).optional()?,
            };
            let decision = diff::decide(stored.as_ref(), rec);
            let rowid = match (&decision, &stored) {
                (Decision::Unchanged, Some(s)) => {
                    out.unchanged += 1;
                    if res == Resource::Exports {
                        // The hash ignores a re-signed download link; keep the fresh one, silently.
                        conn.prepare_cached(
                            "UPDATE exports SET raw = ?2 WHERE rowid = ?1 AND raw IS NOT ?2",
                        )?
                        .execute(params![s.rowid, rec.raw])?;
                    }
                    s.rowid
                }
                (_, Some(s)) => {
                    update.execute(params![
                        s.rowid,
                        rec.owner,
                        rec.dataset_slug,
                        rec.status,
                        &rec.hash[..],
                        rec.raw,
                        now
                    ])?;
                    s.rowid
                }
                (_, None) => {
                    insert_row(&mut insert)?;
                    conn.last_insert_rowid()
                }
            };
            if !seen.insert(rowid as u64) {
                out.duplicates += 1;
            }
            if queue.is_some_and(|q| q.wants(&decision, rec)) {
                out.queued += queue_download(conn, rec, now)? as u64;
            }
            match &decision {
                Decision::Unchanged => continue,
                Decision::Created => out.created += 1,
                Decision::Updated => out.updated += 1,
                Decision::StatusChanged { .. } => out.status_changed += 1,
            }
            if emit(rec) {
                append_event(conn, res, rec, &decision, now)?;
                out.events += 1;
            }
        }
    }
    Ok(out)
}

fn stored_row(r: &rusqlite::Row) -> rusqlite::Result<Stored> {
    Ok(Stored {
        rowid: r.get(0)?,
        hash: r.get(1)?,
        status: r.get(2)?,
        deleted: r.get(3)?,
    })
}

/// The stored row of each record, where the window finds it. Listings keep their
/// order and rows were inserted in the order first listed, so the rows from the
/// first record's row on, read in rowid order (neighbouring pages, not one random
/// index and table page per record), usually match the records one for one. Rows
/// out of step are matched by uid; a record left without one is looked up by the
/// caller, and so is a uid listed twice (its row serves the first listing only).
fn read_window(
    conn: &Connection,
    table: &str,
    recs: &[&Incoming],
) -> rusqlite::Result<Vec<Option<Stored>>> {
    let mut found: Vec<Option<Stored>> = vec![None; recs.len()];
    let Some(first) = recs.first() else {
        return Ok(found);
    };
    let start: Option<i64> = conn
        .prepare_cached(&format!("SELECT rowid FROM {table} WHERE uid = ?1"))?
        .query_row([&first.uid], |r| r.get(0))
        .optional()?;
    let Some(start) = start else {
        return Ok(found);
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT rowid, hash, status, deleted_at IS NOT NULL, uid FROM {table}
         WHERE rowid >= ?1 ORDER BY rowid LIMIT ?2"
    ))?;
    // some slack for rows of records that have gone since
    let limit = (recs.len() + recs.len() / 8 + 16) as i64;
    let mut rows = stmt.query(params![start, limit])?;
    let mut next = 0;
    let mut strays: HashMap<String, Stored> = HashMap::new();
    while let Some(row) = rows.next()? {
        let uid = row.get_ref(4)?.as_str()?;
        // the next few records: one that is new since leaves a gap of one
        match (next..recs.len().min(next + 4)).find(|&k| recs[k].uid == uid) {
            Some(k) => {
                found[k] = Some(stored_row(row)?);
                next = k + 1;
            }
            None => {
                strays.insert(uid.to_owned(), stored_row(row)?);
            }
        }
    }
    if !strays.is_empty() {
        for (k, rec) in recs.iter().enumerate() {
            if found[k].is_none() {
                found[k] = strays.remove(&rec.uid);
            }
        }
    }
    Ok(found)
}

/// Queues the archive of an `exported` export that has a link.
fn queue_download(conn: &Connection, rec: &Incoming, now: &str) -> rusqlite::Result<bool> {
    let v = rec.value();
    let Some(url) = v.get("download_url").and_then(Value::as_str) else {
        return Ok(false);
    };
    let name = crate::download::file_name(&rec.uid, v.get("name").and_then(Value::as_str), url);
    super::downloads::enqueue(conn, &rec.uid, url, &name, now)
}

/// The event for a decision other than `Unchanged`, in the caller's transaction.
fn append_event(
    conn: &Connection,
    res: Resource,
    rec: &Incoming,
    decision: &Decision,
    now: &str,
) -> rusqlite::Result<()> {
    let Some(action) = diff::event_suffix(decision) else {
        return Ok(());
    };
    let old_status = match decision {
        Decision::StatusChanged { old, .. } => old.as_deref(),
        _ => None,
    };
    events::append(
        conn,
        &NewEvent {
            resource: res,
            action,
            uid: &rec.uid,
            owner: rec.owner.as_deref(),
            dataset_slug: rec.dataset_slug.as_deref(),
            old_status,
            new_status: rec.status.as_deref(),
            object: &rec.value(),
            download: None,
        },
        now,
    )?;
    Ok(())
}

/// Which rows a listing covers: all of a table, one owner's, or some datasets of one owner.
#[derive(Debug, Clone)]
pub struct ScopeFilter {
    pub owner: Option<String>,
    pub dataset_slugs: Option<Vec<String>>,
}

/// A present row that a complete listing did not return.
#[derive(Debug, Clone)]
pub struct Missing {
    pub uid: String,
    pub owner: Option<String>,
    pub dataset_slug: Option<String>,
    pub raw: String,
}

/// Rows in `filter` that are present in the mirror but not in `seen`. The scan
/// reads rowids only (from the scope index); details are read for the few missing.
pub fn missing(
    conn: &Connection,
    res: Resource,
    filter: &ScopeFilter,
    seen: &RoaringTreemap,
) -> rusqlite::Result<Vec<Missing>> {
    let t = res.table();
    let mut sql = format!("SELECT rowid FROM {t} WHERE deleted_at IS NULL");
    let mut args: Vec<&str> = Vec::new();
    if let Some(owner) = &filter.owner {
        sql.push_str(" AND owner_name = ?");
        args.push(owner);
    }
    if let Some(slugs) = &filter.dataset_slugs {
        sql.push_str(" AND dataset_slug IN (");
        sql.push_str(&vec!["?"; slugs.len()].join(","));
        sql.push(')');
        args.extend(slugs.iter().map(String::as_str));
    }
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let mut gone = Vec::new();
    while let Some(r) = rows.next()? {
        let rowid: i64 = r.get(0)?;
        if !seen.contains(rowid as u64) {
            gone.push(rowid);
        }
    }
    let mut detail = conn.prepare(&format!(
        "SELECT uid, owner_name, dataset_slug, raw FROM {t} WHERE rowid = ?1"
    ))?;
    gone.into_iter()
        .map(|rowid| {
            detail.query_row([rowid], |r| {
                Ok(Missing {
                    uid: r.get(0)?,
                    owner: r.get(1)?,
                    dataset_slug: r.get(2)?,
                    raw: r.get(3)?,
                })
            })
        })
        .collect()
}

/// Marks a row deleted (with a `deleted` event when `emit`). False when it was not present.
pub fn tombstone(
    conn: &mut Connection,
    res: Resource,
    uid: &str,
    emit: bool,
    now: &str,
) -> rusqlite::Result<bool> {
    let tx = conn.transaction()?;
    type Row = (Option<String>, Option<String>, Option<String>, String);
    let row: Option<Row> = tx
        .query_row(
            &format!(
                "SELECT owner_name, dataset_slug, status, raw FROM {} WHERE uid = ?1 AND deleted_at IS NULL",
                res.table()
            ),
            [uid],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((owner, slug, status, raw)) = row else {
        return Ok(false);
    };
    tx.execute(
        &format!("UPDATE {} SET deleted_at = ?2 WHERE uid = ?1", res.table()),
        params![uid, now],
    )?;
    let object: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
    // A deleted dataset takes its items and sequences with it (its event stands for theirs).
    if res == Resource::Datasets
        && let Some(slug) = object.get("slug").and_then(Value::as_str)
    {
        for t in ["items", "sequences"] {
            tx.execute(
                &format!(
                    "UPDATE {t} SET deleted_at = ?3 WHERE owner_name = ?1 AND dataset_slug = ?2 AND deleted_at IS NULL"
                ),
                params![owner, slug, now],
            )?;
        }
    }
    if emit {
        events::append(
            &tx,
            &NewEvent {
                resource: res,
                action: "deleted",
                uid,
                owner: owner.as_deref(),
                dataset_slug: slug.as_deref(),
                old_status: status.as_deref(),
                new_status: None,
                object: &object,
                download: None,
            },
            now,
        )?;
    }
    tx.commit()?;
    Ok(true)
}

/// A present dataset, as the item and sequence listings need it.
#[derive(Debug, Clone)]
pub struct DatasetRef {
    pub owner: String,
    pub slug: String,
    pub uid: String,
    pub is_sequence: Option<bool>,
}

/// Present datasets, optionally narrowed to `slugs`.
pub fn datasets_in_scope(conn: &Connection, slugs: &[String]) -> rusqlite::Result<Vec<DatasetRef>> {
    let mut stmt = conn.prepare(
        "SELECT owner_name, raw->>'slug' AS slug, uid, raw->>'is_sequence' FROM datasets
         WHERE deleted_at IS NULL AND owner_name IS NOT NULL AND slug IS NOT NULL ORDER BY owner_name, slug",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(DatasetRef {
            owner: r.get(0)?,
            slug: r.get(1)?,
            uid: r.get(2)?,
            is_sequence: r.get(3)?,
        })
    })?;
    let mut out = Vec::new();
    for row in rows {
        let row = row?;
        if slugs.is_empty() || slugs.contains(&row.slug) {
            out.push(row);
        }
    }
    Ok(out)
}

/// Records one page of a slice's membership under `generation`.
pub fn put_slice_items(
    conn: &mut Connection,
    slice_uid: &str,
    item_uids: &[String],
    generation: i64,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO slice_items (slice_uid, item_uid, generation) VALUES (?1, ?2, ?3)
             ON CONFLICT(slice_uid, item_uid) DO UPDATE SET generation = excluded.generation",
        )?;
        for item in item_uids {
            stmt.execute(params![slice_uid, item, generation])?;
        }
    }
    tx.commit()
}

/// After a complete listing of a slice: drop members it no longer returned.
pub fn finish_slice_items(
    conn: &Connection,
    slice_uid: &str,
    generation: i64,
) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM slice_items WHERE slice_uid = ?1 AND generation < ?2",
        params![slice_uid, generation],
    )
}
