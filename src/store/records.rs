//! Applying decisions to the resource tables: one page in one transaction, the
//! scan for rows a complete listing missed, and tombstones. All resource tables
//! share their core columns, so one set of statements serves every resource.

use super::events::NewEvent;
use super::sqlite::records::*;
use crate::config::Resource;
use crate::sync::diff::{self, Decision, Incoming};
use roaring::RoaringTreemap;
use serde_json::Value;

#[derive(Debug, Default, Clone, Copy)]
pub struct PageOutcome {
    pub created: u64,
    pub updated: u64,
    pub status_changed: u64,
    pub unchanged: u64,
    /// Rows tombstoned on the way (a dataset whose slug a new one took).
    pub deleted: u64,
    /// uids this listing had already returned (the collection shifted under it).
    pub duplicates: u64,
    pub events: u64,
    /// Archives queued for download.
    pub queued: u64,
    /// Records the database refused (PostgreSQL: a number past its range),
    /// skipped and counted like malformed ones.
    pub refused: u64,
}

impl PageOutcome {
    /// Counts a decision; false for `Unchanged` (nothing more to write or say).
    pub(crate) fn count(&mut self, decision: &Decision) -> bool {
        match decision {
            Decision::Unchanged => self.unchanged += 1,
            Decision::Created => self.created += 1,
            Decision::Updated => self.updated += 1,
            Decision::StatusChanged { .. } => self.status_changed += 1,
        }
        *decision != Decision::Unchanged
    }
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
    pub(crate) fn wants(&self, decision: &Decision, rec: &Incoming) -> bool {
        let became = match decision {
            Decision::StatusChanged { .. } => true,
            Decision::Created => self.past_baseline,
            _ => false,
        };
        (became || self.backfill) && rec.status.as_deref() == Some("exported")
    }
}

/// An `exported` export's link and archive name: `Some(None)` while the API
/// shows no link yet; `None` for an export not `exported`.
pub(crate) fn download_link(rec: &Incoming) -> Option<Option<(String, String)>> {
    if rec.status.as_deref() != Some("exported") {
        return None;
    }
    let v = rec.value();
    let Some(url) = v.get("download_url").and_then(Value::as_str) else {
        return Some(None);
    };
    let name = crate::download::file_name(&rec.uid, v.get("name").and_then(Value::as_str), url);
    Some(Some((url.to_string(), name)))
}

impl<'a> NewEvent<'a> {
    /// The event of a decision other than `Unchanged` on a listed record;
    /// `moved`: the scope it had before it moved.
    pub(crate) fn of_record(
        res: Resource,
        rec: &'a Incoming,
        decision: &'a Decision,
        moved: Option<&'a Scope>,
        object: &'a Value,
    ) -> Option<NewEvent<'a>> {
        let action = diff::event_suffix(decision)?;
        let (old_status, old_step) = match decision {
            Decision::StatusChanged { old, old_step, .. } => (old.as_deref(), old_step.as_deref()),
            _ => (None, None),
        };
        let steps = match res.jsonapi() {
            Some(j) if j.step => Some((old_step, rec.step.as_deref())),
            _ => None,
        };
        Some(NewEvent {
            resource: res,
            action,
            uid: &rec.uid,
            owner: rec.owner.as_deref(),
            dataset_slug: rec.dataset_slug.as_deref(),
            old_status,
            new_status: rec.status.as_deref(),
            object,
            download: None,
            moved_from: moved.map(|(o, s)| (o.as_deref(), s.as_deref())),
            steps,
        })
    }
}

/// (owner_name, dataset_slug) of a row.
pub(crate) type Scope = (Option<String>, Option<String>);

/// Which rows a listing covers: all of a table, one owner's, some datasets of
/// one owner, or (JSON:API) one project's.
#[derive(Debug, Clone, Default)]
pub struct ScopeFilter {
    pub owner: Option<String>,
    pub dataset_slugs: Option<Vec<String>>,
    pub project_id: Option<String>,
}

/// A present row that a complete listing did not return.
#[derive(Debug, Clone)]
pub struct Missing {
    pub uid: String,
    pub owner: Option<String>,
    pub dataset_slug: Option<String>,
    /// A dataset's or slice's own slug (its direct GET is by slug).
    pub slug: Option<String>,
}

/// A present dataset, as the item and sequence listings need it.
#[derive(Debug, Clone)]
pub struct DatasetRef {
    pub owner: String,
    pub slug: String,
    pub uid: String,
    pub is_sequence: Option<bool>,
}

/// The records, as `sync` reads and changes them.
impl super::Store {
    /// The datasets whose items and sequences are listed (`scope.datasets`, or all).
    pub async fn datasets_in_scope(&self, slugs: &[String]) -> super::Result<Vec<DatasetRef>> {
        if let Some(pg) = self.pg() {
            return pg.datasets_in_scope(slugs).await;
        }
        let slugs = slugs.to_vec();
        Ok(self.read(move |c| datasets_in_scope(c, &slugs)).await?)
    }

    /// Slices whose memberships were last listed before `stale_before`: (uid, owner, slug).
    pub async fn slices_to_relist(
        &self,
        stale_before: &str,
    ) -> super::Result<Vec<(String, String, String)>> {
        if let Some(pg) = self.pg() {
            return pg.slices_to_relist(stale_before).await;
        }
        let s = stale_before.to_string();
        Ok(self.read(move |c| slices_to_relist(c, &s)).await?)
    }

    /// One page of a slice's membership, under `generation`.
    pub async fn put_slice_items(
        &self,
        slice: &str,
        items: Vec<String>,
        generation: i64,
    ) -> super::Result<()> {
        if let Some(pg) = self.pg() {
            return pg.put_slice_items(slice, items, generation).await;
        }
        let s = slice.to_string();
        Ok(self
            .call(move |c| put_slice_items(c, &s, &items, generation))
            .await?)
    }

    /// A slice's membership listing completed: members it no longer returned go,
    /// and its scope succeeded.
    pub async fn slice_listed(
        &self,
        slice: &str,
        generation: i64,
        scope: &str,
        now: &str,
        total: u64,
    ) -> super::Result<()> {
        if let Some(pg) = self.pg() {
            return pg.slice_listed(slice, generation, scope, now, total).await;
        }
        let (sl, s, n) = (slice.to_string(), scope.to_string(), now.to_string());
        Ok(self
            .call(move |c| {
                finish_slice_items(c, &sl, generation)?;
                super::sqlite::state::success(c, &s, &n, total, 0)
            })
            .await?)
    }

    /// Live rows of `res` in a scope.
    pub async fn live_count(&self, res: Resource, filter: ScopeFilter) -> super::Result<u64> {
        if let Some(pg) = self.pg() {
            return pg.live_count(res, filter).await;
        }
        Ok(self.read(move |c| live_count(c, res, &filter)).await?)
    }

    /// The uids of every live row of `res`.
    pub async fn present_uids(
        &self,
        res: Resource,
    ) -> super::Result<std::collections::HashSet<String>> {
        if let Some(pg) = self.pg() {
            return pg.present_uids(res).await;
        }
        Ok(self.read(move |c| present_uids(c, res)).await?)
    }

    /// Live rows of a scope that a complete listing did not return (their
    /// positions, not in `seen`).
    pub async fn missing(
        &self,
        res: Resource,
        filter: ScopeFilter,
        seen: RoaringTreemap,
    ) -> super::Result<Vec<i64>> {
        if let Some(pg) = self.pg() {
            return pg.missing(res, filter, seen).await;
        }
        Ok(self.read(move |c| missing(c, res, &filter, &seen)).await?)
    }

    /// What a deletion check needs of the rows at `rows` (from [`Store::missing`]).
    pub async fn missing_detail(
        &self,
        res: Resource,
        rows: Vec<i64>,
    ) -> super::Result<Vec<Missing>> {
        if let Some(pg) = self.pg() {
            return pg.missing_detail(res, rows).await;
        }
        Ok(self.read(move |c| missing_detail(c, res, &rows)).await?)
    }

    /// Tombstones a row (and writes its deletion event when `emit`): whether it
    /// was live.
    pub async fn tombstone(
        &self,
        res: Resource,
        uid: &str,
        emit: bool,
        now: &str,
    ) -> super::Result<bool> {
        if let Some(pg) = self.pg() {
            return pg.tombstone(res, uid, emit, now).await;
        }
        let (u, n) = (uid.to_string(), now.to_string());
        Ok(self.call(move |c| tombstone(c, res, &u, emit, &n)).await?)
    }
}

/// What one [`super::Batch::apply_pages`] did, and what it hands back.
pub struct Applied {
    pub outcome: PageOutcome,
    pub seen: RoaringTreemap,
    /// The pages, to be freed where they were allocated.
    pub pages: Vec<Vec<Incoming>>,
}

impl super::Batch {
    /// [`apply_pages`] in this batch's transaction.
    #[allow(clippy::too_many_arguments)]
    pub async fn apply_pages(
        &self,
        res: Resource,
        pages: Vec<Vec<Incoming>>,
        emit: impl Fn(&Incoming) -> bool + Send + 'static,
        queue: Option<QueueRule>,
        mostly_new: bool,
        now: &str,
        mut seen: RoaringTreemap,
    ) -> super::Result<Applied> {
        if let Some(pg) = self.store.pg() {
            // its own transaction: a batch on PostgreSQL is each call's pages
            return pg
                .apply_pages(res, pages, emit, queue, mostly_new, now, seen)
                .await;
        }
        let n = now.to_string();
        Ok(self
            .call(move |c| {
                let outcome = apply_pages(c, res, &pages, &emit, queue, mostly_new, &n, &mut seen)?;
                Ok(Applied {
                    outcome,
                    seen,
                    pages,
                })
            })
            .await?)
    }
}
