//! The SQLite side of `store::records`: its SQL.

use super::events;
use crate::config::Resource;
use crate::store::events::NewEvent;
use crate::store::records::*;
use crate::sync::diff::{self, Decision, Incoming, Stored};
use roaring::RoaringTreemap;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use serde_json::Value;
use std::collections::HashMap;

/// Records per multi-row INSERT on a scope's first listing. One statement keeps
/// its cursors open from row to row, so each row's entry in the scope index goes
/// on the end of the index without a search from its root; the writer's CPU per
/// first sync fell by 13-27 %. It is `INSERT OR IGNORE`, not `ON CONFLICT DO
/// NOTHING`: with no constraint left that could abort it, a statement of many
/// rows needs no statement journal (which copied every page the statement
/// touched, and made it slower than one row at a time).
const INSERT_CHUNK: usize = 100;

/// Applies pages of records inside the caller's transaction (a [`crate::store::Batch`]).
/// Events go in the same one, for the records whose scope `emit` says is past its
/// silent baseline, and so do the downloads `queue` asks for. `seen` collects the rowids of every record present
/// in the listing. With `mostly_new` (a scope's first listing) records are inserted
/// first, [`INSERT_CHUNK`] to a statement, and looked up only if one was there already.
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
    let mut ap = Apply {
        conn,
        res,
        emit,
        queue,
        now,
        seen,
        out: PageOutcome::default(),
    };
    let step = step_column(res);
    let mut select = conn.prepare_cached(&format!(
        "SELECT rowid, hash, status, deleted_at IS NOT NULL, {step} FROM {t} WHERE uid = ?1"
    ))?;
    // Insert and update stay two statements: one upsert with RETURNING rowid
    // measured 2-3x slower on a first sync.
    let mut insert = conn.prepare_cached(&insert_sql(res, 1))?;
    // the table's own columns from ?8 on; a JSON:API table has no use for ?2 and ?3
    let mut scope = match res.jsonapi() {
        None => "owner_name = ?2, dataset_slug = ?3,".to_string(),
        Some(_) => String::new(),
    };
    let own = res.columns().into_iter().enumerate();
    scope.extend(own.map(|(k, c)| format!("{c} = ?{},", 8 + k)));
    let mut update = conn.prepare_cached(&format!(
        "UPDATE {t} SET {scope} status = ?4, hash = ?5, raw = ?6,
         last_seen_at = ?7, deleted_at = NULL WHERE rowid = ?1"
    ))?;
    let recs: Vec<&Incoming> = pages.iter().flatten().collect();
    let mut window = match mostly_new {
        true => vec![None; recs.len()],
        false => read_window(conn, res, &recs)?,
    };
    let mut many = match mostly_new && recs.len() >= INSERT_CHUNK {
        true => Some(conn.prepare_cached(&insert_sql(res, INSERT_CHUNK))?),
        false => None,
    };
    let mut i = 0;
    while i < recs.len() {
        if let Some(many) = many.as_mut().filter(|_| recs.len() - i >= INSERT_CHUNK) {
            let chunk = &recs[i..i + INSERT_CHUNK];
            let inserted = insert_rows(many, res, chunk, now)? as i64;
            // New rows take the next rowids in turn: the last one and the ones before it.
            let last = conn.last_insert_rowid();
            for (j, &rec) in chunk.iter().enumerate() {
                if inserted == INSERT_CHUNK as i64 {
                    ap.record(
                        rec,
                        &Decision::Created,
                        last - inserted + 1 + j as i64,
                        None,
                    )?;
                    continue;
                }
                // some were there already (or listed twice): find which rows are new
                let stored = select
                    .query_row([&*rec.uid], |r| stored_row(r, None))
                    .optional()?;
                match stored {
                    Some(s)
                        if last - inserted < s.rowid
                            && s.rowid <= last
                            && !ap.seen.contains(s.rowid as u64) =>
                    {
                        ap.record(rec, &Decision::Created, s.rowid, None)?
                    }
                    stored => ap.diff(rec, stored, &mut insert, &mut update)?,
                }
            }
            i += INSERT_CHUNK;
            continue;
        }
        let rec = recs[i];
        i += 1;
        if mostly_new && insert_rows(&mut insert, res, &[rec], now)? == 1 {
            ap.record(rec, &Decision::Created, conn.last_insert_rowid(), None)?;
            continue;
        }
        let stored = match window[i - 1].take() {
            Some(s) => Some(s),
            None => select
                .query_row([&*rec.uid], |r| stored_row(r, None))
                .optional()?,
        };
        ap.diff(rec, stored, &mut insert, &mut update)?;
    }
    Ok(ap.out)
}

/// The column holding a record's workflow step, as SQL (`NULL` where there is none).
fn step_column(res: Resource) -> &'static str {
    match res.jsonapi() {
        Some(j) if j.step => "wf_step",
        _ => "NULL",
    }
}

/// The scoping columns a v1 row has, as SQL; a JSON:API row has none of these
/// (its own come from the record: [`Resource::columns`]).
fn scope_columns(res: Resource) -> &'static str {
    match res.jsonapi() {
        None => "owner_name, dataset_slug",
        Some(_) => "NULL, NULL",
    }
}

/// Parameters of one row in [`insert_sql`]: uid, owner, slug, status, hash, raw,
/// then the table's own columns.
fn per_row(res: Resource) -> usize {
    6 + res.columns().len()
}

/// An INSERT of `rows` records that skips a uid already stored. A JSON:API
/// table has no owner and slug (their parameters are left unused).
fn insert_sql(res: Resource, rows: usize) -> String {
    let (table, v1, own) = (res.table(), res.jsonapi().is_none(), res.columns());
    let mut scope = match v1 {
        true => "owner_name, dataset_slug, ".to_string(),
        false => String::new(),
    };
    scope.extend(own.iter().map(|c| format!("{c}, ")));
    let mut sql = format!(
        "INSERT OR IGNORE INTO {table} (uid, {scope}status, hash, raw, first_seen_at, last_seen_at) VALUES "
    );
    let per_row = per_row(res);
    for r in 0..rows {
        let p = 2 + per_row * r;
        let sep = if r == 0 { "" } else { "," };
        let mut scope = match v1 {
            true => format!("?{}, ?{}, ", p + 1, p + 2),
            false => String::new(),
        };
        scope.extend((0..own.len()).map(|k| format!("?{}, ", p + 6 + k)));
        sql.push_str(&format!(
            "{sep}(?{p}, {scope}?{}, ?{}, ?{}, ?1, ?1)",
            p + 3,
            p + 4,
            p + 5
        ));
    }
    sql
}

/// Runs an [`insert_sql`] statement for `recs`; the number of rows inserted.
fn insert_rows(
    stmt: &mut rusqlite::CachedStatement,
    res: Resource,
    recs: &[&Incoming],
    now: &str,
) -> rusqlite::Result<usize> {
    stmt.raw_bind_parameter(1, now)?;
    let per_row = per_row(res);
    for (r, rec) in recs.iter().enumerate() {
        let p = 2 + per_row * r;
        stmt.raw_bind_parameter(p, &*rec.uid)?;
        stmt.raw_bind_parameter(p + 1, rec.owner.as_deref())?;
        stmt.raw_bind_parameter(p + 2, rec.dataset_slug.as_deref())?;
        stmt.raw_bind_parameter(p + 3, rec.status.as_deref())?;
        stmt.raw_bind_parameter(p + 4, &rec.hash[..])?;
        stmt.raw_bind_parameter(p + 5, &*rec.raw)?;
        for (k, value) in rec.columns.iter().enumerate() {
            stmt.raw_bind_parameter(p + 6 + k, value.as_deref())?;
        }
    }
    stmt.raw_execute()
}

/// One apply_pages call's state: where rows go and what it has counted.
struct Apply<'a> {
    conn: &'a Connection,
    res: Resource,
    emit: &'a dyn Fn(&Incoming) -> bool,
    queue: Option<QueueRule>,
    now: &'a str,
    seen: &'a mut RoaringTreemap,
    out: PageOutcome,
}

impl Apply<'_> {
    /// Decides on a record against its stored row and writes what changed.
    fn diff(
        &mut self,
        rec: &Incoming,
        stored: Option<Stored>,
        insert: &mut rusqlite::CachedStatement,
        update: &mut rusqlite::CachedStatement,
    ) -> rusqlite::Result<()> {
        let decision = diff::decide(stored.as_ref(), rec);
        let mut moved = None;
        let rowid = match (&decision, &stored) {
            (Decision::Unchanged, Some(s)) => {
                if self.res == Resource::Exports {
                    // The hash ignores a re-signed download link; keep the fresh one, silently.
                    self.conn
                        .prepare_cached(
                            "UPDATE exports SET raw = ?2 WHERE rowid = ?1 AND raw IS NOT ?2",
                        )?
                        .execute(params![s.rowid, &*rec.raw])?;
                }
                s.rowid
            }
            (_, Some(s)) => {
                if !s.deleted {
                    moved = self.moved_from(s.rowid, rec)?;
                }
                let (owner, slug, status) = (
                    rec.owner.as_deref(),
                    rec.dataset_slug.as_deref(),
                    rec.status.as_deref(),
                );
                let (hash, raw) = (&rec.hash[..], &*rec.raw);
                let own: Vec<Option<&str>> = rec.columns.iter().map(|c| c.as_deref()).collect();
                let mut values: Vec<&dyn rusqlite::ToSql> =
                    vec![&s.rowid, &owner, &slug, &status, &hash, &raw, &self.now];
                values.extend(own.iter().map(|c| c as &dyn rusqlite::ToSql));
                update.execute(&values[..])?;
                s.rowid
            }
            (_, None) => {
                insert_rows(insert, self.res, &[rec], self.now)?;
                self.conn.last_insert_rowid()
            }
        };
        self.record(rec, &decision, rowid, moved)
    }

    /// The scope a changed record's row had, when the record now comes from
    /// another (it moved to another dataset or owner): one `updated` event names both.
    fn moved_from(&self, rowid: i64, rec: &Incoming) -> rusqlite::Result<Option<Scope>> {
        if self.res.jsonapi().is_some() {
            // its scope is in its content: the event's object shows it
            return Ok(None);
        }
        let t = self.res.table();
        let (owner, slug): Scope = self
            .conn
            .prepare_cached(&format!(
                "SELECT owner_name, dataset_slug FROM {t} WHERE rowid = ?1"
            ))?
            .query_row([rowid], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let same = owner.as_deref() == rec.owner.as_deref()
            && slug.as_deref() == rec.dataset_slug.as_deref();
        Ok((!same).then_some((owner, slug)))
    }

    /// Counts a record stored at `rowid`, and queues and emits what its decision
    /// asks for; `moved` is the scope it had before, when it moved.
    fn record(
        &mut self,
        rec: &Incoming,
        decision: &Decision,
        rowid: i64,
        moved: Option<Scope>,
    ) -> rusqlite::Result<()> {
        if !self.seen.insert(rowid as u64) {
            self.out.duplicates += 1;
        }
        if let Some(q) = self.queue {
            let wanted = q.wants(decision, rec);
            // a changed `exported` export may bring the link one that became so lacked
            if wanted || !matches!(decision, Decision::Unchanged) {
                self.out.queued += queue_download(self.conn, rec, wanted, self.now)? as u64;
            }
        }
        if !self.out.count(decision) {
            return Ok(());
        }
        if self.res == Resource::Datasets && *decision == Decision::Created {
            self.replace_same_slug(rec)?;
        }
        if (self.emit)(rec) {
            append_event(self.conn, self.res, rec, decision, moved, self.now)?;
            self.out.events += 1;
        }
        Ok(())
    }

    /// A new dataset whose owner and slug name another present one: that one was
    /// deleted and its slug re-used (SPEC §6). Its direct GET by slug would find
    /// the new one, so it is tombstoned here, before the new one's event.
    fn replace_same_slug(&mut self, rec: &Incoming) -> rusqlite::Result<()> {
        let at = self.res.columns().iter().position(|c| *c == "slug");
        let Some(slug) = at.and_then(|k| rec.columns[k].as_deref()) else {
            return Ok(());
        };
        let mut stmt = self.conn.prepare_cached(
            "SELECT uid FROM datasets WHERE owner_name IS ?1 AND slug = ?2 AND uid <> ?3 AND deleted_at IS NULL",
        )?;
        let owner = rec.owner.as_deref();
        let old: Vec<String> = stmt
            .query_map(params![owner, slug, &*rec.uid], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for uid in old {
            let emit = (self.emit)(rec);
            if tombstone_in(self.conn, self.res, &uid, emit, self.now)? {
                self.out.deleted += 1;
                self.out.events += emit as u64;
            }
        }
        Ok(())
    }
}

/// A row as the diff needs it. Its status is read only if its hash differs from
/// `incoming` (or there is none to compare): an unchanged row needs no status.
fn stored_row(r: &rusqlite::Row, incoming: Option<&[u8; 16]>) -> rusqlite::Result<Stored> {
    // a hash of another length (none is written) never matches
    let hash: [u8; 16] = r.get_ref(1)?.as_blob()?.try_into().unwrap_or_default();
    let deleted: bool = r.get(3)?;
    let unchanged = incoming.is_some_and(|h| *h == hash && !deleted);
    Ok(Stored {
        rowid: r.get(0)?,
        status: if unchanged { None } else { r.get(2)? },
        step: if unchanged { None } else { r.get(4)? },
        hash,
        deleted,
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
    res: Resource,
    recs: &[&Incoming],
) -> rusqlite::Result<Vec<Option<Stored>>> {
    let (table, step) = (res.table(), step_column(res));
    let mut found: Vec<Option<Stored>> = vec![None; recs.len()];
    let Some(first) = recs.first() else {
        return Ok(found);
    };
    let start: Option<i64> = conn
        .prepare_cached(&format!("SELECT rowid FROM {table} WHERE uid = ?1"))?
        .query_row([&*first.uid], |r| r.get(0))
        .optional()?;
    let Some(start) = start else {
        return Ok(found);
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT rowid, hash, status, deleted_at IS NOT NULL, {step}, uid FROM {table}
         WHERE rowid >= ?1 ORDER BY rowid LIMIT ?2"
    ))?;
    // some slack for rows of records that have gone since
    let limit = (recs.len() + recs.len() / 8 + 16) as i64;
    let mut rows = stmt.query(params![start, limit])?;
    let mut next = 0;
    let mut strays: HashMap<String, Stored> = HashMap::new();
    while let Some(row) = rows.next()? {
        let uid = row.get_ref(5)?.as_str()?;
        // the next few records: one that is new since leaves a gap of one
        match (next..recs.len().min(next + 4)).find(|&k| recs[k].uid == uid) {
            Some(k) => {
                found[k] = Some(stored_row(row, Some(&recs[k].hash))?);
                next = k + 1;
            }
            None => {
                strays.insert(uid.to_owned(), stored_row(row, None)?);
            }
        }
    }
    if !strays.is_empty() {
        for (k, rec) in recs.iter().enumerate() {
            if found[k].is_none() {
                found[k] = strays.remove(&*rec.uid);
            }
        }
    }
    Ok(found)
}

/// Queues the archive of an `exported` export: when `wanted` (it became
/// `exported`), now or, without a link yet, once a listing brings it; otherwise
/// only if it was waiting for that link.
fn queue_download(
    conn: &Connection,
    rec: &Incoming,
    wanted: bool,
    now: &str,
) -> rusqlite::Result<bool> {
    match download_link(rec) {
        None => Ok(false),
        Some(None) if wanted => super::downloads::await_link(conn, &rec.uid, now).map(|()| false),
        Some(None) => Ok(false),
        Some(Some((url, name))) if wanted => {
            super::downloads::enqueue(conn, &rec.uid, &url, &name, now)
        }
        Some(Some((url, name))) => super::downloads::link_arrived(conn, &rec.uid, &url, &name, now),
    }
}

/// The event for a decision other than `Unchanged`, in the caller's transaction.
fn append_event(
    conn: &Connection,
    res: Resource,
    rec: &Incoming,
    decision: &Decision,
    moved: Option<Scope>,
    now: &str,
) -> rusqlite::Result<()> {
    let object = rec.value();
    if let Some(ev) = NewEvent::of_record(res, rec, decision, moved.as_ref(), &object) {
        events::append(conn, &ev, now)?;
    }
    Ok(())
}

impl ScopeFilter {
    /// The SQL condition (after `deleted_at IS NULL`) and its arguments.
    fn sql(&self) -> (String, Vec<&str>) {
        let mut sql = String::new();
        let mut args: Vec<&str> = Vec::new();
        if let Some(owner) = &self.owner {
            sql.push_str(" AND owner_name = ?");
            args.push(owner);
        }
        if let Some(slugs) = &self.dataset_slugs {
            sql.push_str(" AND dataset_slug IN (");
            sql.push_str(&vec!["?"; slugs.len()].join(","));
            sql.push(')');
            args.extend(slugs.iter().map(String::as_str));
        }
        if let Some(project) = &self.project_id {
            sql.push_str(" AND project_id = ?");
            args.push(project);
        }
        (sql, args)
    }
}

/// Present rows in `filter` (the count probe of an incremental listing compares this).
pub fn live_count(conn: &Connection, res: Resource, filter: &ScopeFilter) -> rusqlite::Result<u64> {
    let (cond, args) = filter.sql();
    let sql = format!(
        "SELECT count(*) FROM {} WHERE deleted_at IS NULL{cond}",
        res.table()
    );
    let n: i64 = conn.query_row(&sql, params_from_iter(args), |r| r.get(0))?;
    Ok(n as u64)
}

/// The rowids of rows in `filter` that are present in the mirror but not in
/// `seen`: 8 bytes a row, read from the scope index, so that a listing that
/// missed a million rows costs no more than one that saw them (SPEC §6).
pub fn missing(
    conn: &Connection,
    res: Resource,
    filter: &ScopeFilter,
    seen: &RoaringTreemap,
) -> rusqlite::Result<Vec<i64>> {
    let t = res.table();
    let (cond, args) = filter.sql();
    let mut stmt = conn.prepare(&format!(
        "SELECT rowid FROM {t} WHERE deleted_at IS NULL{cond}"
    ))?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let mut gone = Vec::new();
    while let Some(r) = rows.next()? {
        let rowid: i64 = r.get(0)?;
        if u64::try_from(rowid).is_ok_and(|id| !seen.contains(id)) {
            gone.push(rowid);
        }
    }
    Ok(gone)
}

/// What a deletion check needs of the rows `rowids` ([`missing`]), in their
/// order; a row deleted meanwhile is left out.
pub fn missing_detail(
    conn: &Connection,
    res: Resource,
    rowids: &[i64],
) -> rusqlite::Result<Vec<Missing>> {
    let slug = match res {
        Resource::Datasets | Resource::Slices => "slug",
        _ => "NULL",
    };
    let mut detail = conn.prepare_cached(&format!(
        "SELECT uid, {}, {slug} FROM {} WHERE rowid = ?1 AND deleted_at IS NULL",
        scope_columns(res),
        res.table()
    ))?;
    let mut out = Vec::with_capacity(rowids.len());
    for rowid in rowids {
        let row = detail
            .query_row([rowid], |r| {
                Ok(Missing {
                    uid: r.get(0)?,
                    owner: r.get(1)?,
                    dataset_slug: r.get(2)?,
                    slug: r.get(3)?,
                })
            })
            .optional()?;
        out.extend(row);
    }
    Ok(out)
}

/// The uids of a table's present rows.
pub fn present_uids(
    conn: &Connection,
    res: Resource,
) -> rusqlite::Result<std::collections::HashSet<String>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT uid FROM {} WHERE deleted_at IS NULL",
        res.table()
    ))?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    rows.collect()
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
    let deleted = tombstone_in(&tx, res, uid, emit, now)?;
    tx.commit()?;
    Ok(deleted)
}

/// [`tombstone`] inside the caller's transaction.
fn tombstone_in(
    tx: &Connection,
    res: Resource,
    uid: &str,
    emit: bool,
    now: &str,
) -> rusqlite::Result<bool> {
    type Row = (Option<String>, Option<String>, Option<String>, String);
    let row: Option<Row> = tx
        .query_row(
            &format!(
                "SELECT {}, status, raw FROM {} WHERE uid = ?1 AND deleted_at IS NULL",
                scope_columns(res),
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
    let own_slug: Option<String> = match res {
        Resource::Datasets => {
            tx.query_row("SELECT slug FROM datasets WHERE uid = ?1", [uid], |r| {
                r.get(0)
            })?
        }
        _ => None,
    };
    if let Some(slug) = own_slug {
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
            tx,
            &NewEvent::deleted(
                res,
                uid,
                (owner.as_deref(), slug.as_deref()),
                status.as_deref(),
                &object,
            ),
            now,
        )?;
    }
    Ok(true)
}

/// Present datasets, optionally narrowed to `slugs`.
/// Slices whose membership was never listed, changed since it last was, or was
/// last listed before `stale_before` (a membership can change while the slice
/// record does not): (uid, owner, slug).
pub fn slices_to_relist(
    c: &Connection,
    stale_before: &str,
) -> rusqlite::Result<Vec<(String, String, String)>> {
    let mut stmt = c.prepare(
        "SELECT s.uid, s.owner_name, s.slug FROM slices s
         LEFT JOIN sync_state st ON st.scope = 'slice_items:' || s.uid
         WHERE s.deleted_at IS NULL AND s.owner_name IS NOT NULL AND s.slug IS NOT NULL
           AND (st.last_success_at IS NULL OR s.last_seen_at >= st.last_success_at
                OR st.last_success_at < ?1)",
    )?;
    let rows = stmt.query_map([stale_before], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}

pub fn datasets_in_scope(conn: &Connection, slugs: &[String]) -> rusqlite::Result<Vec<DatasetRef>> {
    let mut stmt = conn.prepare(
        "SELECT owner_name, slug, uid, is_sequence FROM datasets
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn rec(uid: &str, version: u32) -> Incoming {
        let raw = format!(r#"{{"uid":"{uid}","status":"pending","version":{version}}}"#);
        Incoming::from_text(&raw, "o", "d")
    }

    #[test]
    fn rows_stored_before_typed_columns_keep_only_values_of_the_right_type() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let mut c = Connection::open(&path).unwrap();
        crate::store::sqlite::MIGRATIONS
            .to_version(&mut c, 6)
            .unwrap();
        // what an earlier version stored without checking the types
        c.execute_batch(
            r#"INSERT INTO datasets (uid, owner_name, hash, raw, first_seen_at, last_seen_at) VALUES
                 ('good', 'o', x'00', '{"uid":"good","slug":"a","is_sequence":true}', 't', 't'),
                 ('bad', 'o', x'00', '{"uid":"bad","slug":123,"is_sequence":"false"}', 't', 't');
               INSERT INTO slices (uid, owner_name, hash, raw, first_seen_at, last_seen_at) VALUES
                 ('s', 'o', x'00', '{"uid":"s","slug":42}', 't', 't');
               INSERT INTO exports (uid, hash, raw, first_seen_at, last_seen_at) VALUES
                 ('e', x'00', '{"uid":"e","name":7,"created_at":"2026-01-01T00:00:00Z"}', 't', 't');"#,
        )
        .unwrap();
        drop(c);
        let store = Store::open(&path).unwrap();
        let datasets = store.with(|c| datasets_in_scope(c, &[])).unwrap();
        let got: Vec<_> = datasets.iter().map(|d| (&*d.uid, d.is_sequence)).collect();
        assert_eq!(got, [("good", Some(true))]);
        let relist = store.with(|c| slices_to_relist(c, "2000-01-01T00:00:00Z"));
        assert!(relist.unwrap().is_empty());
        let exports = store
            .with(|c| crate::store::sqlite::downloads::list(c))
            .unwrap();
        assert_eq!(exports.len(), 1);
        assert_eq!(exports[0].name, None);
        assert_eq!(
            exports[0].created_at.as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
    }

    #[test]
    fn a_first_listing_inserts_in_chunks_and_finds_the_rows_already_there() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("m.db")).unwrap();
        let now = "2026-11-23T10:00:00Z";
        let apply = |c: &Connection, recs: Vec<Incoming>, seen: &mut RoaringTreemap| {
            apply_pages(
                c,
                Resource::Items,
                &[recs],
                &|_| false,
                None,
                true,
                now,
                seen,
            )
            .unwrap()
        };
        store.with(|c| {
            // stored before: one the listing returns unchanged, one changed, one deleted since
            let before = vec![rec("u105", 1), rec("u250", 1), rec("u330", 1)];
            apply(c, before, &mut RoaringTreemap::new());
            tombstone(c, Resource::Items, "u330", false, now).unwrap();
        });
        // a chunk of new records only, one with a stored row and a uid listed
        // twice, one with a changed row, and a short tail with a deleted row
        let mut listing: Vec<Incoming> = (0..350)
            .map(|n| rec(&format!("u{n}"), if n == 250 { 2 } else { 1 }))
            .collect();
        listing.insert(121, rec("u120", 1));
        let mut seen = RoaringTreemap::new();
        let out = store.with(|c| apply(c, listing.clone(), &mut seen));
        assert_eq!(
            (out.created, out.updated, out.unchanged, out.duplicates),
            (348, 1, 2, 1)
        );
        // every row holds its own record, and `seen` has the rowid of each
        let rows: Vec<(i64, String, String, Option<String>)> = store.with(|c| {
            let mut stmt = c
                .prepare("SELECT rowid, uid, raw, deleted_at FROM items ORDER BY rowid")
                .unwrap();
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        });
        assert_eq!(rows.len(), 350);
        for (rowid, uid, raw, deleted_at) in &rows {
            let listed = listing.iter().find(|r| r.uid == uid).unwrap();
            assert_eq!(listed.raw, raw, "{uid}");
            assert_eq!(deleted_at, &None, "{uid}");
            assert!(seen.contains(*rowid as u64), "{uid}");
        }
        assert_eq!(seen.len(), 350);
    }
}
