//! The resource tables in PostgreSQL: pages applied with set-based statements
//! (one lookup of every uid, one `INSERT … SELECT FROM unnest(…)` of the new
//! rows, one `UPDATE … FROM unnest(…)` of the changed ones: a handful of round
//! trips a batch, none a row, and no write for an unchanged row), the scan
//! for rows a complete listing missed, and tombstones. The decisions are
//! `sync::diff`'s, the events `store::events`', as for SQLite.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use futures_util::{TryStreamExt, pin_mut};
use roaring::RoaringTreemap;
use serde_json::Value;
use tokio_postgres::Transaction;
use tokio_postgres::types::ToSql;

use super::ops::append_event;
use super::{Db, at, jsonb_text, text_value};
use crate::config::{Kind, Resource};
use crate::store::Result;
use crate::store::events::NewEvent;
use crate::store::records::{
    Applied, DatasetRef, Missing, PageOutcome, QueueRule, Scope, ScopeFilter, download_link,
};
use crate::sync::diff::{self, Decision, Incoming, Stored};

type PgResult<T> = std::result::Result<T, tokio_postgres::Error>;
type Param<'a> = &'a (dyn ToSql + Sync);

/// A stored row as the diff needs it, with the scope it had.
struct Row {
    stored: Stored,
    scope: Scope,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Rows looked up and not there.
    Insert,
    /// A first listing's rows, inserted before any lookup; a uid already
    /// there is skipped (and then looked up).
    New,
    Update,
}

/// A record to insert or update, once the batch's decisions are made.
struct Write<'a> {
    rec: &'a Incoming,
    /// The row to update; None: a new row.
    id: Option<i64>,
}

impl Db {
    /// [`crate::store::records::apply_pages`] in one transaction of its own: the
    /// pages' rows, their events and the downloads they queue commit together.
    #[allow(clippy::too_many_arguments)]
    pub async fn apply_pages(
        &self,
        res: Resource,
        pages: Vec<Vec<Incoming>>,
        emit: impl Fn(&Incoming) -> bool + Send + 'static,
        queue: Option<QueueRule>,
        mostly_new: bool,
        now: &str,
        seen: RoaringTreemap,
    ) -> Result<Applied> {
        let emits: Vec<bool> = pages.iter().flatten().map(&emit).collect();
        let batch = Batch {
            res,
            pages: &pages,
            emits: &emits,
            queue,
            mostly_new,
            now,
        };
        let mut seen = seen;
        let mut skip = HashSet::new();
        let outcome = match self.apply_once(&batch, &skip, &mut seen).await {
            // PostgreSQL refused a value (a number past numeric's range, say):
            // those records are skipped and reported, like malformed ones
            Err(crate::store::Error::Postgres(e)) if is_data_error(&e) => {
                skip = self.refused(&batch).await?;
                if skip.is_empty() {
                    return Err(e.into());
                }
                let mut out = self.apply_once(&batch, &skip, &mut seen).await?;
                out.refused = skip.len() as u64;
                out
            }
            other => other?,
        };
        Ok(Applied {
            outcome,
            seen,
            pages,
        })
    }

    /// The records of `batch` whose `raw` PostgreSQL refuses as `jsonb`, by
    /// their place in it (each tried on its own: only after a batch failed).
    async fn refused(&self, batch: &Batch<'_>) -> Result<HashSet<usize>> {
        let mut refused = HashSet::new();
        for (k, rec) in batch.pages.iter().flatten().enumerate() {
            let raw = jsonb_text(&rec.raw);
            let tried = self
                .with(async |c| c.execute("SELECT $1::text::jsonb", &[&raw]).await)
                .await;
            match tried {
                Ok(_) => {}
                Err(crate::store::Error::Postgres(e)) if is_data_error(&e) => {
                    tracing::warn!(
                        uid = %rec.uid,
                        "skipping a record PostgreSQL refuses: {}",
                        super::describe(&e)
                    );
                    refused.insert(k);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(refused)
    }

    /// [`Db::apply_pages`] once, without the records at the places in `skip`.
    async fn apply_once(
        &self,
        batch: &Batch<'_>,
        skip: &HashSet<usize>,
        seen: &mut RoaringTreemap,
    ) -> Result<PageOutcome> {
        let Batch {
            res,
            pages,
            emits,
            queue,
            mostly_new,
            now,
        } = *batch;
        let channel = super::channel(&self.target.schema);
        self.with(async |c| {
            let tx = c.transaction().await?;
            let mut ap = Apply {
                tx: &tx,
                res,
                channel: &channel,
                now,
                out: PageOutcome::default(),
                pending: Vec::new(),
                pending_uids: HashSet::new(),
            };
            let placed: Vec<(usize, &Incoming)> = pages
                .iter()
                .flatten()
                .enumerate()
                .filter(|(k, _)| !skip.contains(k))
                .collect();
            let recs: Vec<&Incoming> = placed.iter().map(|(_, r)| *r).collect();
            // a first listing: insert first, look up only what was there already
            let mut fresh = match mostly_new {
                true => {
                    let mut once = HashSet::new();
                    let first: Vec<Write> = recs
                        .iter()
                        .filter(|r| once.insert(&*r.uid))
                        .map(|&rec| Write { rec, id: None })
                        .collect();
                    ap.write(&first.iter().collect::<Vec<_>>(), Mode::New).await?
                }
                false => HashMap::new(),
            };
            let rest: Vec<&Incoming> = match mostly_new {
                true => recs
                    .iter()
                    .filter(|r| !fresh.contains_key(&*text_value(&r.uid)))
                    .copied()
                    .collect(),
                false => recs.clone(),
            };
            let mut rows = ap.lookup(&rest).await?;
            for (k, rec) in placed {
                if let Some(id) = fresh.remove(&*text_value(&rec.uid)) {
                    // inserted above: new, and what a second listing of it meets
                    if !seen.insert(id as u64) {
                        ap.out.duplicates += 1;
                    }
                    let scope = (
                        rec.owner.as_deref().map(Into::into),
                        rec.dataset_slug.as_deref().map(Into::into),
                    );
                    rows.insert(text_value(&rec.uid).into_owned(), written(rec, id, scope));
                    let decision = Decision::Created;
                    ap.effects(rec, &decision, None, emits[k], queue, &mut rows, seen)
                        .await?;
                    continue;
                }
                if ap.pending_uids.contains(&*text_value(&rec.uid)) {
                    // listed twice in this batch: its first write goes first
                    ap.flush(&mut rows, seen).await?;
                }
                let row = rows.get(&*text_value(&rec.uid));
                let decision = diff::decide(row.map(|r| &r.stored), rec);
                let mut moved = None;
                match (&decision, row) {
                    (Decision::Unchanged, Some(r)) => {
                        if res == Resource::Exports {
                            // the hash ignores a re-signed link: keep the fresh one, silently
                            tx.execute(
                                "UPDATE exports SET raw = $2::text::jsonb WHERE id = $1 AND raw IS DISTINCT FROM $2::text::jsonb",
                                &[&r.stored.rowid, &jsonb_text(&rec.raw)],
                            )
                            .await?;
                        }
                        if !seen.insert(r.stored.rowid as u64) {
                            ap.out.duplicates += 1;
                        }
                    }
                    (_, Some(r)) => {
                        let same = r.scope.0.as_deref() == rec.owner.as_deref()
                            && r.scope.1.as_deref() == rec.dataset_slug.as_deref();
                        if !r.stored.deleted && res.jsonapi().is_none() && !same {
                            moved = Some(r.scope.clone());
                        }
                        if !seen.insert(r.stored.rowid as u64) {
                            ap.out.duplicates += 1;
                        }
                        ap.pending_uids.insert(text_value(&rec.uid).into_owned());
                        ap.pending.push(Write { rec, id: Some(r.stored.rowid) });
                    }
                    (_, None) => {
                        ap.pending_uids.insert(text_value(&rec.uid).into_owned());
                        ap.pending.push(Write { rec, id: None });
                    }
                }
                ap.effects(rec, &decision, moved, emits[k], queue, &mut rows, seen)
                    .await?;
            }
            ap.flush(&mut rows, seen).await?;
            let out = ap.out;
            tx.commit().await?;
            Ok(out)
        })
        .await
    }

    pub async fn live_count(&self, res: Resource, filter: ScopeFilter) -> Result<u64> {
        self.with(async |c| {
            let tx = c.transaction().await?;
            let n = live_count(&tx, res, &filter).await?;
            tx.commit().await?;
            Ok(n)
        })
        .await
    }

    pub async fn present_uids(&self, res: Resource) -> Result<HashSet<String>> {
        let t = res.table();
        self.with(async |c| {
            let rows = c
                .query(
                    &format!("SELECT uid FROM {t} WHERE deleted_at IS NULL"),
                    &[],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .await
    }

    /// Streamed, 8 bytes a row kept: a listing that missed a million rows
    /// costs no more memory than one that saw them.
    pub async fn missing(
        &self,
        res: Resource,
        filter: ScopeFilter,
        seen: RoaringTreemap,
    ) -> Result<Vec<i64>> {
        let t = res.table();
        self.with(async |c| {
            let mut params: Vec<Param> = Vec::new();
            let cond = filter_sql(&filter, &mut params);
            let sql = format!("SELECT id FROM {t} WHERE deleted_at IS NULL{cond}");
            let stream = c.query_raw(&sql, params).await?;
            pin_mut!(stream);
            let mut gone = Vec::new();
            while let Some(r) = stream.try_next().await? {
                let id: i64 = r.get(0);
                if u64::try_from(id).is_ok_and(|id| !seen.contains(id)) {
                    gone.push(id);
                }
            }
            Ok(gone)
        })
        .await
    }

    pub async fn missing_detail(&self, res: Resource, rows: Vec<i64>) -> Result<Vec<Missing>> {
        let slug = match res {
            Resource::Datasets | Resource::Slices => "slug",
            _ => "NULL::text",
        };
        let sql = format!(
            "SELECT id, uid, {}, {slug} FROM {} WHERE id = ANY($1) AND deleted_at IS NULL",
            scope_columns(res),
            res.table()
        );
        self.with(async |c| {
            let found: HashMap<i64, Missing> = c
                .query(&sql, &[&rows])
                .await?
                .iter()
                .map(|r| {
                    let m = Missing {
                        uid: r.get(1),
                        owner: r.get(2),
                        dataset_slug: r.get(3),
                        slug: r.get(4),
                    };
                    (r.get(0), m)
                })
                .collect();
            let mut found = found;
            Ok(rows.iter().filter_map(|id| found.remove(id)).collect())
        })
        .await
    }

    pub async fn tombstone(&self, res: Resource, uid: &str, emit: bool, now: &str) -> Result<bool> {
        let channel = super::channel(&self.target.schema);
        self.with(async |c| {
            let tx = c.transaction().await?;
            let gone = tombstone_in(&tx, &channel, res, uid, emit, now).await?;
            tx.commit().await?;
            Ok(gone)
        })
        .await
    }

    pub async fn datasets_in_scope(&self, slugs: &[String]) -> Result<Vec<DatasetRef>> {
        self.with(async |c| {
            let rows = c
                .query(
                    "SELECT owner_name, slug, uid, is_sequence FROM datasets
                     WHERE deleted_at IS NULL AND owner_name IS NOT NULL AND slug IS NOT NULL
                       AND (cardinality($1::text[]) = 0 OR slug = ANY($1))
                     ORDER BY owner_name, slug",
                    &[&slugs],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| DatasetRef {
                    owner: r.get(0),
                    slug: r.get(1),
                    uid: r.get(2),
                    is_sequence: r.get(3),
                })
                .collect())
        })
        .await
    }

    pub async fn slices_to_relist(
        &self,
        stale_before: &str,
    ) -> Result<Vec<(String, String, String)>> {
        self.with(async |c| {
            let rows = c
                .query(
                    "SELECT s.uid, s.owner_name, s.slug FROM slices s
                     LEFT JOIN sync_state st ON st.scope = 'slice_items:' || s.uid
                     WHERE s.deleted_at IS NULL AND s.owner_name IS NOT NULL AND s.slug IS NOT NULL
                       AND (st.last_success_at IS NULL OR s.last_seen_at >= st.last_success_at
                            OR st.last_success_at < $1)",
                    &[&at(stale_before)],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect())
        })
        .await
    }

    pub async fn put_slice_items(
        &self,
        slice: &str,
        items: Vec<String>,
        generation: i64,
    ) -> Result<()> {
        self.with(async |c| {
            c.execute(
                "INSERT INTO slice_items (slice_uid, item_uid, generation)
                 SELECT $1, i, $3 FROM unnest($2::text[]) AS i
                 ON CONFLICT (slice_uid, item_uid) DO UPDATE SET generation = excluded.generation",
                &[&slice, &items, &generation],
            )
            .await
            .map(drop)
        })
        .await
    }

    pub async fn slice_listed(
        &self,
        slice: &str,
        generation: i64,
        scope: &str,
        now: &str,
        total: u64,
    ) -> Result<()> {
        self.with(async |c| {
            let tx = c.transaction().await?;
            tx.execute(
                "DELETE FROM slice_items WHERE slice_uid = $1 AND generation < $2",
                &[&slice, &generation],
            )
            .await?;
            tx.execute(
                super::ops::SUCCESS,
                &[&vec![scope], &at(now), &(total as i64), &0i64],
            )
            .await?;
            tx.commit().await
        })
        .await
    }
}

/// What one [`Db::apply_pages`] call writes.
#[derive(Clone, Copy)]
struct Batch<'a> {
    res: Resource,
    pages: &'a [Vec<Incoming>],
    /// Whether each record (in the pages' order) gets its event.
    emits: &'a [bool],
    queue: Option<QueueRule>,
    mostly_new: bool,
    now: &'a str,
}

/// A value PostgreSQL refuses (SQLSTATE class 22: a number out of range, an
/// invalid escape), as opposed to a lost connection or a conflict.
fn is_data_error(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code().starts_with("22"))
}

/// One apply_pages call's state.
struct Apply<'a, 't> {
    tx: &'a Transaction<'t>,
    res: Resource,
    channel: &'a str,
    now: &'a str,
    out: PageOutcome,
    /// Writes decided and not yet sent, and their uids.
    pending: Vec<Write<'a>>,
    pending_uids: HashSet<String>,
}

impl<'a> Apply<'a, '_> {
    /// What a decision brings besides the row: the download it queues, its
    /// count, a slug a new dataset took, and its event when `emit`.
    #[allow(clippy::too_many_arguments)]
    async fn effects(
        &mut self,
        rec: &Incoming,
        decision: &Decision,
        moved: Option<Scope>,
        emit: bool,
        queue: Option<QueueRule>,
        rows: &mut HashMap<String, Row>,
        seen: &mut RoaringTreemap,
    ) -> PgResult<()> {
        if let Some(q) = queue {
            let wanted = q.wants(decision, rec);
            if wanted || !matches!(decision, Decision::Unchanged) {
                self.out.queued += self.queue_download(rec, wanted).await? as u64;
            }
        }
        if !self.out.count(decision) {
            return Ok(());
        }
        if self.res == Resource::Datasets && *decision == Decision::Created {
            // a dataset whose slug a new one took (SPEC §6), before its event
            self.flush(rows, seen).await?;
            self.replace_same_slug(rec, emit).await?;
        }
        if emit {
            let object = rec.value();
            if let Some(ev) = NewEvent::of_record(self.res, rec, decision, moved.as_ref(), &object)
            {
                append_event(self.tx, self.channel, &ev, self.now).await?;
                self.out.events += 1;
            }
        }
        Ok(())
    }

    /// The stored rows of `recs`, by uid, in one query.
    async fn lookup(&self, recs: &[&Incoming]) -> PgResult<HashMap<String, Row>> {
        let Some(first) = recs.first() else {
            return Ok(HashMap::new());
        };
        let t = self.res.table();
        // what tells an unchanged row; the rest is read for the others only
        let columns = "uid, id, hash, deleted_at IS NOT NULL";
        // Listings keep their order and rows were written in the order first
        // listed: the rows from the first record's on, read along the id index
        // (neighbouring pages), hold most of the batch; the rest by uid.
        let window = (recs.len() + recs.len() / 8 + 16) as i64;
        let mut found = self
            .tx
            .query(
                &format!(
                    "SELECT {columns} FROM {t} WHERE id >= (SELECT id FROM {t} WHERE uid = $1)
                     ORDER BY id LIMIT $2"
                ),
                &[&text_value(&first.uid), &window],
            )
            .await?;
        let wanted: HashSet<Cow<str>> = recs.iter().map(|r| text_value(&r.uid)).collect();
        found.retain(|r| wanted.contains(r.get::<_, &str>(0)));
        let have: HashSet<&str> = found.iter().map(|r| r.get(0)).collect();
        let rest: Vec<Cow<str>> = recs
            .iter()
            .map(|r| text_value(&r.uid))
            .filter(|uid| !have.contains(&**uid))
            .collect();
        if !rest.is_empty() {
            let sql = format!("SELECT {columns} FROM {t} WHERE uid = ANY($1)");
            found.extend(self.tx.query(&sql, &[&rest]).await?);
        }
        let mut rows: HashMap<String, Row> = found
            .iter()
            .map(|r| {
                let hash: &[u8] = r.get(2);
                let row = Row {
                    stored: Stored {
                        rowid: r.get(1),
                        hash: hash.try_into().unwrap_or_default(),
                        status: None,
                        step: None,
                        deleted: r.get(3),
                    },
                    scope: (None, None),
                };
                (r.get(0), row)
            })
            .collect();
        // rows a record changed (or brings back): their status, step and scope
        let changed: Vec<i64> = recs
            .iter()
            .filter_map(|rec| {
                let row = rows.get(&*text_value(&rec.uid))?;
                (row.stored.hash != rec.hash || row.stored.deleted).then_some(row.stored.rowid)
            })
            .collect();
        if !changed.is_empty() {
            let step = match self.res.jsonapi() {
                Some(j) if j.step => "wf_step",
                _ => "NULL::text",
            };
            let sql = format!(
                "SELECT uid, status, {step}, {} FROM {t} WHERE id = ANY($1)",
                scope_columns(self.res)
            );
            for r in self.tx.query(&sql, &[&changed]).await? {
                if let Some(row) = rows.get_mut(r.get::<_, &str>(0)) {
                    row.stored.status = r.get(1);
                    row.stored.step = r.get(2);
                    row.scope = (r.get(3), r.get(4));
                }
            }
        }
        Ok(rows)
    }

    /// Sends the pending inserts and updates, two statements at most; the rows
    /// written become what later records of the batch are compared with.
    async fn flush(
        &mut self,
        rows: &mut HashMap<String, Row>,
        seen: &mut RoaringTreemap,
    ) -> PgResult<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let writes = std::mem::take(&mut self.pending);
        self.pending_uids.clear();
        let (new, changed): (Vec<&Write>, Vec<&Write>) =
            writes.iter().partition(|w| w.id.is_none());
        let ids = self.write(&new, Mode::Insert).await?;
        self.write(&changed, Mode::Update).await?;
        for w in new.iter().chain(&changed) {
            let id = match w.id.or_else(|| ids.get(&*text_value(&w.rec.uid)).copied()) {
                Some(id) => id,
                // every new row comes back from the INSERT; never panic if one did not
                None => {
                    tracing::warn!(uid = %w.rec.uid, "a row written was not returned");
                    continue;
                }
            };
            if w.id.is_none() && !seen.insert(id as u64) {
                self.out.duplicates += 1;
            }
            let scope = (
                w.rec.owner.as_deref().map(Into::into),
                w.rec.dataset_slug.as_deref().map(Into::into),
            );
            rows.insert(
                text_value(&w.rec.uid).into_owned(),
                written(w.rec, id, scope),
            );
        }
        Ok(())
    }

    /// One statement for `batch`: new rows (`INSERT … SELECT FROM unnest`,
    /// their ids by uid) or changed ones (`UPDATE … FROM unnest`).
    async fn write(&self, batch: &[&Write<'_>], mode: Mode) -> PgResult<HashMap<String, i64>> {
        if batch.is_empty() {
            return Ok(HashMap::new());
        }
        let (t, res) = (self.res.table(), self.res);
        let own = res.columns();
        let v1 = res.jsonapi().is_none();
        let now = at(self.now);
        fn col<'r>(
            batch: &[&Write<'r>],
            f: impl Fn(&'r Incoming) -> Option<Cow<'r, str>>,
        ) -> Vec<Option<Cow<'r, str>>> {
            batch.iter().map(|w| f(w.rec)).collect()
        }
        let ids: Vec<i64> = batch.iter().map(|w| w.id.unwrap_or(0)).collect();
        let uids = col(batch, |r| Some(text_value(&r.uid)));
        let owners = col(batch, |r| r.owner.as_deref().map(text_value));
        let slugs = col(batch, |r| r.dataset_slug.as_deref().map(text_value));
        let statuses = col(batch, |r| r.status.as_deref().map(text_value));
        let raws = col(batch, |r| Some(jsonb_text(&r.raw)));
        let hashes: Vec<&[u8]> = batch.iter().map(|w| &w.rec.hash[..]).collect();
        let columns: Vec<Vec<Option<Cow<str>>>> = (0..own.len())
            .map(|k| {
                batch
                    .iter()
                    .map(|w| w.rec.columns[k].as_deref().map(text_value))
                    .collect()
            })
            .collect();
        let mut params: Vec<Param> = vec![
            &now, &ids, &uids, &owners, &slugs, &statuses, &hashes, &raws,
        ];
        params.extend(columns.iter().map(|c| c as Param));
        let mut names = vec!["id", "uid", "owner", "slug", "status", "hash", "raw"];
        let own_names: Vec<String> = (0..own.len()).map(|k| format!("c{k}")).collect();
        names.extend(own_names.iter().map(String::as_str));
        let types = ["bigint", "text", "text", "text", "text", "bytea", "text"];
        let arrays: Vec<String> = (0..names.len())
            .map(|k| format!("${}::{}[]", k + 2, types.get(k).copied().unwrap_or("text")))
            .collect();
        let from = format!("unnest({}) AS u({})", arrays.join(", "), names.join(", "));
        let values: Vec<String> = own
            .iter()
            .enumerate()
            .map(|(k, c)| match is_bool(res, c) {
                true => format!("CASE u.c{k} WHEN '1' THEN true WHEN '0' THEN false END"),
                false => format!("u.c{k}"),
            })
            .collect();
        if mode == Mode::Update {
            let mut sets: Vec<String> = Vec::new();
            if v1 {
                sets.extend([
                    "owner_name = u.owner".into(),
                    "dataset_slug = u.slug".into(),
                ]);
            }
            sets.extend(own.iter().zip(values).map(|(c, v)| format!("{c} = {v}")));
            sets.extend(
                [
                    "status = u.status",
                    "hash = u.hash",
                    "raw = u.raw::jsonb",
                    "last_seen_at = $1",
                    "deleted_at = NULL",
                ]
                .map(String::from),
            );
            let sql = format!(
                "UPDATE {t} SET {} FROM {from} WHERE {t}.id = u.id",
                sets.join(", ")
            );
            self.tx.execute(&sql, &params).await?;
            return Ok(HashMap::new());
        }
        let mut cols = vec!["uid"];
        let mut vals = vec!["u.uid".to_string()];
        if v1 {
            cols.extend(["owner_name", "dataset_slug"]);
            vals.extend(["u.owner".into(), "u.slug".into()]);
        }
        cols.extend(own.iter().copied());
        vals.extend(values);
        cols.extend(["status", "hash", "raw", "first_seen_at", "last_seen_at"]);
        vals.extend(["u.status", "u.hash", "u.raw::jsonb", "$1", "$1"].map(String::from));
        let skip = match mode {
            Mode::New => " ON CONFLICT (uid) DO NOTHING",
            _ => "",
        };
        let sql = format!(
            "INSERT INTO {t} ({}) SELECT {} FROM {from}{skip} RETURNING uid, id",
            cols.join(", "),
            vals.join(", ")
        );
        let inserted = self.tx.query(&sql, &params).await?;
        Ok(inserted.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// [`crate::store::records`]'s queue_download in PostgreSQL.
    async fn queue_download(&self, rec: &Incoming, wanted: bool) -> PgResult<bool> {
        let now = at(self.now);
        match download_link(rec) {
            None => Ok(false),
            Some(None) => {
                if wanted {
                    self.tx
                        .execute(
                            "INSERT INTO downloads (export_uid, status, created_at, updated_at)
                             VALUES ($1, 'awaiting_link', $2, $2) ON CONFLICT (export_uid) DO NOTHING",
                            &[&text_value(&rec.uid), &now],
                        )
                        .await?;
                }
                Ok(false)
            }
            Some(Some((url, name))) => {
                let (uid, url, name) = (text_value(&rec.uid), text_value(&url), text_value(&name));
                let args: [Param; 4] = [&uid, &url, &name, &now];
                if wanted {
                    let n = self
                        .tx
                        .execute(
                            "INSERT INTO downloads (export_uid, url, file_name, status, created_at, updated_at)
                             VALUES ($1, $2, $3, 'pending', $4, $4) ON CONFLICT (export_uid) DO NOTHING",
                            &args,
                        )
                        .await?;
                    if n == 1 {
                        return Ok(true);
                    }
                }
                let n = self
                    .tx
                    .execute(
                        "UPDATE downloads SET url = $2, file_name = $3, status = 'pending', updated_at = $4
                         WHERE export_uid = $1 AND status = 'awaiting_link'",
                        &args,
                    )
                    .await?;
                Ok(n == 1)
            }
        }
    }

    /// A new dataset whose owner and slug name another present one: that one was
    /// deleted and its slug re-used (SPEC §6), and is tombstoned first.
    async fn replace_same_slug(&mut self, rec: &Incoming, emit: bool) -> PgResult<()> {
        let at_slug = self.res.columns().iter().position(|c| *c == "slug");
        let Some(slug) = at_slug.and_then(|k| rec.columns[k].as_deref()) else {
            return Ok(());
        };
        let old = self
            .tx
            .query(
                "SELECT uid FROM datasets WHERE owner_name IS NOT DISTINCT FROM $1 AND slug = $2
                   AND uid <> $3 AND deleted_at IS NULL",
                &[
                    &rec.owner.as_deref().map(text_value),
                    &text_value(slug),
                    &text_value(&rec.uid),
                ],
            )
            .await?;
        for r in old {
            let uid: String = r.get(0);
            if tombstone_in(self.tx, self.channel, self.res, &uid, emit, self.now).await? {
                self.out.deleted += 1;
                self.out.events += emit as u64;
            }
        }
        Ok(())
    }
}

/// The row a record was just written to, as a later record of the batch sees it.
fn written(rec: &Incoming, id: i64, scope: Scope) -> Row {
    Row {
        stored: Stored {
            rowid: id,
            hash: rec.hash,
            status: rec.status.as_deref().map(str::to_owned),
            step: rec.step.as_deref().map(str::to_owned),
            deleted: false,
        },
        scope,
    }
}

/// [`crate::store::records`]'s tombstone_in in PostgreSQL.
async fn tombstone_in(
    tx: &Transaction<'_>,
    channel: &str,
    res: Resource,
    uid: &str,
    emit: bool,
    now: &str,
) -> PgResult<bool> {
    let t = res.table();
    let own_slug = match res {
        Resource::Datasets => "slug",
        _ => "NULL::text",
    };
    let row = tx
        .query_opt(
            &format!(
                "UPDATE {t} SET deleted_at = $2 WHERE uid = $1 AND deleted_at IS NULL
                 RETURNING {}, status, raw, {own_slug}",
                scope_columns(res)
            ),
            &[&uid, &at(now)],
        )
        .await?;
    let Some(r) = row else {
        return Ok(false);
    };
    let (owner, slug, status, object, own): (
        Option<String>,
        Option<String>,
        Option<String>,
        Value,
        Option<String>,
    ) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
    // a deleted dataset takes its items and sequences with it (its event stands for theirs)
    if let Some(own) = own {
        for t in ["items", "sequences"] {
            tx.execute(
                &format!(
                    "UPDATE {t} SET deleted_at = $3 WHERE owner_name IS NOT DISTINCT FROM $1 AND dataset_slug = $2 AND deleted_at IS NULL"
                ),
                &[&owner, &own, &at(now)],
            )
            .await?;
        }
    }
    if emit {
        let scope = (owner.as_deref(), slug.as_deref());
        let ev = NewEvent::deleted(res, uid, scope, status.as_deref(), &object);
        append_event(tx, channel, &ev, now).await?;
    }
    Ok(true)
}

pub(super) async fn live_count(
    tx: &Transaction<'_>,
    res: Resource,
    filter: &ScopeFilter,
) -> PgResult<u64> {
    let mut params: Vec<Param> = Vec::new();
    let cond = filter_sql(filter, &mut params);
    let sql = format!(
        "SELECT count(*) FROM {} WHERE deleted_at IS NULL{cond}",
        res.table()
    );
    let n: i64 = tx.query_one(&sql, &params).await?.get(0);
    Ok(n as u64)
}

/// The condition (after `deleted_at IS NULL`) of a [`ScopeFilter`], its
/// values appended to `params`.
fn filter_sql<'a>(f: &'a ScopeFilter, params: &mut Vec<Param<'a>>) -> String {
    let mut sql = String::new();
    if let Some(owner) = &f.owner {
        params.push(owner);
        sql.push_str(&format!(" AND owner_name = ${}", params.len()));
    }
    if let Some(slugs) = &f.dataset_slugs {
        params.push(slugs);
        sql.push_str(&format!(" AND dataset_slug = ANY(${})", params.len()));
    }
    if let Some(project) = &f.project_id {
        params.push(project);
        sql.push_str(&format!(" AND project_id = ${}", params.len()));
    }
    sql
}

/// The scoping columns a v1 row has; a JSON:API row has none.
fn scope_columns(res: Resource) -> &'static str {
    match res.jsonapi() {
        None => "owner_name, dataset_slug",
        Some(_) => "NULL::text, NULL::text",
    }
}

fn is_bool(res: Resource, column: &str) -> bool {
    res.jsonapi().is_none()
        && res
            .spec()
            .fields
            .iter()
            .any(|f| f.name == column && f.kind == Kind::Bool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_postgres_refuses_is_replaced_and_nothing_else() {
        assert_eq!(jsonb_text(r#"{"a":"x\u0000y"}"#), r#"{"a":"x\ufffdy"}"#);
        assert_eq!(jsonb_text(r#"{"a":"x\\u0000y"}"#), r#"{"a":"x\\u0000y"}"#);
        assert_eq!(jsonb_text(r#"{"a":"plain"}"#), r#"{"a":"plain"}"#);
        assert_eq!(text_value("a\0b"), "a\u{FFFD}b");
    }
}
