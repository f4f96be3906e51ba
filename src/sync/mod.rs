//! One listing → one diff per page → one transaction per page; after a complete,
//! stable listing, rows it missed are checked with a direct GET and only a 404
//! deletes them. Each resource is a set of listings built from the config and the
//! mirror (datasets feed the item and sequence listings).
//!
//! Listings of different scopes run side by side (up to [`LISTINGS_PER_SLOT`] per
//! request slot of `api.concurrency`), so the rate budget, not the round trip,
//! bounds a crawl; a cursor listing stays sequential within itself. Each listing
//! writes its pages in order, so events keep detection order within a scope.

pub mod diff;
mod jsonapi;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytestring::ByteString;
use futures_util::StreamExt;
use reqwest::Url;
use roaring::RoaringTreemap;

use crate::api::page::{Ahead, Pager, Paging};
use crate::api::{Client, Priority, v1};
use crate::config::{Config, Resource};
use crate::error::ApiError;
use crate::store::records::{self, Missing, ScopeFilter};
use crate::store::{Store, now_rfc3339};
use diff::{Head, Incoming, Rejected};

/// How many dataset slugs go in one `dataset__slug__in` listing.
const SLUGS_PER_BATCH: usize = 20;

/// Deletion checks made before judging a listing: when most of the first ones
/// find the record still there, the listing (not the records) was wrong, and the
/// rest of its missing rows wait for a later cycle instead of costing a request each.
const CHECK_SAMPLE: usize = 20;

/// A slice's membership is relisted at least every this many slice intervals,
/// even when the slice record is unchanged (SPEC §6).
const RELIST_SLICES_EVERY: u32 = 6;

/// Rows a deletion pass reads at a time: it holds rowids, not records.
const DETAIL_CHUNK: usize = 256;

/// Listings under way at once per request slot (`api.concurrency`). One listing
/// has one request in flight at a time, and spends part of each round trip
/// between requests; two per slot keep every slot busy until the last scopes,
/// and the page budget (`api::page`) bounds the memory they hold.
pub const LISTINGS_PER_SLOT: usize = 2;

/// What one resource's cycle did.
#[derive(Debug, Default, Clone)]
pub struct CycleReport {
    pub resource: Option<Resource>,
    pub listed: u64,
    pub created: u64,
    pub updated: u64,
    pub status_changed: u64,
    pub deleted: u64,
    pub skipped: u64,
    pub events: u64,
    /// Export archives queued for download.
    pub queued: u64,
    /// Scopes that failed or were skipped, with the reason.
    pub failures: Vec<(String, String)>,
    /// Of those, the ones that failed (not skipped for a 403/404 on their scope).
    pub hard_failures: u64,
    /// Scopes listed completely.
    pub scopes_ok: u64,
    /// Listings done but for their deletion checks, which wait for the end of the
    /// resource's cycle ([`Syncer::finish`]).
    finishing: Vec<Finish>,
}

/// What a complete, stable listing leaves to do once every listing of its
/// resource's cycle is done: check the rows it missed, so that a record that
/// moved to another scope has been seen there first (one `updated` event, not a
/// deletion and a creation).
#[derive(Debug, Clone)]
struct Finish {
    resource: Resource,
    scopes: Vec<String>,
    filter: ScopeFilter,
    prio: Priority,
    /// The rowids listed.
    seen: RoaringTreemap,
    emit_by_slug: HashMap<Option<ByteString>, bool>,
    now: String,
}

impl CycleReport {
    /// Folds in what one listing (or a group of them) did.
    fn merge(&mut self, o: CycleReport) {
        self.listed += o.listed;
        self.created += o.created;
        self.updated += o.updated;
        self.status_changed += o.status_changed;
        self.deleted += o.deleted;
        self.skipped += o.skipped;
        self.events += o.events;
        self.queued += o.queued;
        self.failures.extend(o.failures);
        self.hard_failures += o.hard_failures;
        self.scopes_ok += o.scopes_ok;
        self.finishing.extend(o.finishing);
    }

    /// A good cycle (SPEC §6): nothing failed, and at least one scope was listed
    /// unless there was none to list; a 404 on every scope is not good.
    pub fn is_good(&self) -> bool {
        self.hard_failures == 0 && (self.scopes_ok > 0 || self.failures.is_empty())
    }

    fn add(&mut self, o: &records::PageOutcome) {
        self.listed += o.created + o.updated + o.status_changed + o.unchanged;
        self.created += o.created;
        self.updated += o.updated;
        self.status_changed += o.status_changed;
        self.deleted += o.deleted;
        self.events += o.events;
        self.queued += o.queued;
    }
}

/// Called after each applied page with (scope, records in the page).
pub type ProgressFn = Arc<dyn Fn(&str, u64) + Send + Sync>;

#[derive(Clone)]
pub struct Syncer {
    pub client: Arc<Client>,
    /// The JSON:API service's client, when `[jsonapi]` is on: its own quota.
    pub jsonapi: Option<Arc<Client>>,
    pub store: Store,
    pub cfg: Arc<Config>,
    pub progress: Option<ProgressFn>,
}

impl Syncer {
    /// The clients of both services (the JSON:API one when `[jsonapi]` is on)
    /// over `store`.
    pub fn new(cfg: Arc<Config>, store: Store) -> Result<Syncer, reqwest::Error> {
        let jsonapi = match &cfg.jsonapi {
            Some(j) => Some(Client::new(&j.api)?),
            None => None,
        };
        Ok(Syncer {
            client: Client::new(&cfg.api)?,
            jsonapi,
            store,
            cfg,
            progress: None,
        })
    }
}

/// How a listing fills the scoping columns of its records (from the listing, SPEC §3).
#[derive(Clone)]
enum Attribution {
    Fixed(Option<ByteString>),
    /// Cross-dataset listing: a record's `dataset_uid` names its dataset among these.
    ByDatasetUid(HashMap<String, ByteString>),
    /// A JSON:API resource object, which names its own scope in `columns`;
    /// with a narrowing, only those whose `field` (`id`, or an attribute) is one
    /// of `ids` are kept.
    JsonApi {
        columns: Vec<&'static str>,
        narrowing: Option<Narrowing>,
        /// `jsonapi.overlap`: an `updated_at` later than the clock plus this
        /// moves no watermark (one record stamped 2099 must not hide the rest).
        overlap: std::time::Duration,
    },
}

#[derive(Clone)]
struct Narrowing {
    field: &'static str,
    ids: Arc<std::collections::HashSet<String>>,
}

impl Narrowing {
    /// Whether the record (its head, read with `columns`) is one the narrowing keeps.
    fn keeps(&self, head: &Head, columns: &[&str]) -> bool {
        let value = match self.field {
            "id" => Some(&*head.uid),
            field => columns
                .iter()
                .position(|c| *c == field)
                .and_then(|k| head.columns[k].as_deref()),
        };
        value.is_some_and(|v| self.ids.contains(v))
    }
}

struct Listing {
    resource: Resource,
    client: Arc<Client>,
    url: Url,
    /// How the next page is found (a JSON:API listing: by number or by key).
    paging: fn(&Url) -> Paging,
    /// The JSON:API project this listing is narrowed to (`filter[project_id]`).
    project: Option<String>,
    /// Whether a complete listing shows what was deleted (not so an incremental one).
    deletions: bool,
    prio: Priority,
    owner: Option<String>,
    /// The dataset slugs this listing covers; each is its own sync_state scope.
    slugs: Vec<String>,
    attribution: Attribution,
}

enum ListingEnd {
    Done(Listed),
    /// A record could not be attributed to one dataset: list them one by one.
    NeedsSplit,
}

/// What a complete listing saw.
struct Listed {
    /// The collection did not change under it, so its deletion checks are queued.
    stable: bool,
    /// The largest `updated_at` among its records (JSON:API).
    newest: Option<(i128, String)>,
}

impl Listing {
    fn scopes(&self) -> Vec<String> {
        let r = self.resource.table();
        if let Some(p) = &self.project {
            return vec![format!("{r}:{p}")];
        }
        match (&self.owner, self.slugs.is_empty()) {
            (None, _) => vec![r.to_string()],
            (Some(o), true) => vec![format!("{r}:{o}")],
            (Some(o), false) => self.slugs.iter().map(|s| format!("{r}:{o}/{s}")).collect(),
        }
    }

    fn filter(&self) -> ScopeFilter {
        ScopeFilter {
            owner: self.owner.clone(),
            dataset_slugs: (!self.slugs.is_empty()).then(|| self.slugs.clone()),
            project_id: self.project.clone(),
        }
    }
}

impl Syncer {
    /// One complete cycle of one resource. Errors only for what stops everything
    /// ([`ApiError::is_fatal`]); failures of scopes, or of the resource as a
    /// whole (reading the mirror to build its listings), are in the report.
    pub async fn sync_resource(&self, res: Resource) -> Result<CycleReport, ApiError> {
        let mut report = match self.cycle_of(res).await {
            Ok(report) => report,
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                let mut report = CycleReport::default();
                let scope = res.table().to_string();
                if let Err(db) = self.store.scope_attempt(&scope, res, &now_rfc3339()).await {
                    tracing::error!("recording the failure: {db}");
                }
                self.record_failure(&mut report, &[scope], &e).await;
                report
            }
        };
        report.resource = Some(res);
        let m = &crate::metrics::METRICS;
        let label = crate::metrics::label("resource", res.table());
        m.records_synced.get_or_create(&label).inc_by(report.listed);
        m.events_emitted.get_or_create(&label).inc_by(report.events);
        Ok(report)
    }

    /// [`Syncer::sync_resource`] but for the failures of the resource as a whole.
    async fn cycle_of(&self, res: Resource) -> Result<CycleReport, ApiError> {
        let mut report = match res {
            Resource::Datasets => {
                let users = self.cfg.scope.owners.iter().map(|owner| {
                    self.simple(res, v1::datasets_of_user(&self.client, owner), Some(owner))
                });
                let orgs =
                    self.cfg.scope.organizations.iter().map(|org| {
                        self.simple(res, v1::datasets_of_org(&self.client, org), Some(org))
                    });
                self.each_alone(users.chain(orgs).collect()).await?
            }
            Resource::Exports => {
                let l = self.simple(res, v1::exports(&self.client), None);
                self.run_alone(l).await?
            }
            Resource::Items => {
                let listings = self.datasets().await?.into_iter().map(
                    |records::DatasetRef { owner, slug, .. }| {
                        let mut l = self.simple(
                            res,
                            v1::items_of(&self.client, &owner, &slug),
                            Some(&owner),
                        );
                        l.prio = Priority::Low;
                        l.attribution = Attribution::Fixed(Some(slug.as_str().into()));
                        l.slugs = vec![slug];
                        l
                    },
                );
                self.each_alone(listings.collect()).await?
            }
            Resource::Sequences => self.sync_sequences().await?,
            Resource::Slices => self.sync_slices().await?,
            _ => self.sync_jsonapi(res).await?,
        };
        let finishing = std::mem::take(&mut report.finishing);
        let finished = finishing.into_iter().map(|f| async move {
            let mut r = CycleReport::default();
            let scopes = f.scopes.clone();
            match self.finish(f, &mut r).await {
                Ok(()) => {}
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => self.record_failure(&mut r, &scopes, &e).await,
            }
            Ok(r)
        });
        report.merge(self.side_by_side(finished).await?);
        if res == Resource::Datasets && report.failures.is_empty() {
            self.warn_unmatched_slugs().await?;
        }
        Ok(report)
    }

    /// Runs `work` (one listing, or a few in turn, each) side by side, at most
    /// [`LISTINGS_PER_SLOT`] per request slot at once, and merges their reports. A
    /// rejected key stops them all.
    async fn side_by_side<F>(&self, work: impl Iterator<Item = F>) -> Result<CycleReport, ApiError>
    where
        F: Future<Output = Result<CycleReport, ApiError>>,
    {
        let limit = self.client.concurrency() * LISTINGS_PER_SLOT;
        let mut done = futures_util::stream::iter(work).buffer_unordered(limit);
        let mut report = CycleReport::default();
        while let Some(r) = done.next().await {
            report.merge(r?);
        }
        Ok(report)
    }

    /// Each listing on its own, side by side.
    async fn each_alone(&self, listings: Vec<Listing>) -> Result<CycleReport, ApiError> {
        self.side_by_side(listings.into_iter().map(|l| self.run_alone(l)))
            .await
    }

    /// One listing with a report of its own.
    async fn run_alone(&self, l: Listing) -> Result<CycleReport, ApiError> {
        let mut report = CycleReport::default();
        self.run_reported(&l, &mut report).await?;
        Ok(report)
    }

    fn simple(&self, res: Resource, url: Url, owner: Option<&String>) -> Listing {
        Listing {
            resource: res,
            client: self.client.clone(),
            url,
            paging: |_| Paging::Next,
            project: None,
            deletions: true,
            prio: Priority::High,
            owner: owner.cloned(),
            slugs: vec![],
            attribution: Attribution::Fixed(None),
        }
    }

    /// A `scope.datasets` slug that names no dataset of the owners in scope is
    /// most likely a typo: say so once per datasets cycle.
    async fn warn_unmatched_slugs(&self) -> Result<(), ApiError> {
        let wanted = &self.cfg.scope.datasets;
        if wanted.is_empty() {
            return Ok(());
        }
        let present = self.datasets().await?;
        for slug in wanted
            .iter()
            .filter(|s| !present.iter().any(|d| &d.slug == *s))
        {
            tracing::warn!(
                "scope.datasets: no dataset named \"{slug}\" among the owners and organizations in scope; check the slug"
            );
        }
        Ok(())
    }

    async fn datasets(&self) -> Result<Vec<records::DatasetRef>, ApiError> {
        self.store
            .datasets_in_scope(&self.cfg.scope.datasets)
            .await
            .map_err(db_error)
    }

    /// Sequences through the cross-dataset endpoint, `SLUGS_PER_BATCH` datasets a call,
    /// batches side by side; a batch whose records cannot be told apart falls back
    /// to one listing per dataset.
    async fn sync_sequences(&self) -> Result<CycleReport, ApiError> {
        let mut by_owner: Vec<(String, Vec<(String, String)>)> = Vec::new();
        for records::DatasetRef {
            owner,
            slug,
            uid,
            is_sequence,
        } in self.datasets().await?
        {
            if is_sequence == Some(false) {
                continue;
            }
            match by_owner.last_mut() {
                Some((o, list)) if *o == owner => list.push((slug, uid)),
                _ => by_owner.push((owner, vec![(slug, uid)])),
            }
        }
        let batches = by_owner.iter().flat_map(|(owner, datasets)| {
            datasets
                .chunks(SLUGS_PER_BATCH)
                .map(move |batch| self.sequence_batch(owner, batch))
        });
        let batches: Vec<_> = batches.collect();
        self.side_by_side(batches.into_iter()).await
    }

    /// One `dataset__slug__in` listing, or one listing per dataset when it cannot be used.
    async fn sequence_batch(
        &self,
        owner: &str,
        batch: &[(String, String)],
    ) -> Result<CycleReport, ApiError> {
        let mut report = CycleReport::default();
        let slugs: Vec<String> = batch.iter().map(|(s, _)| s.clone()).collect();
        if batch.len() > 1 {
            let l = Listing {
                resource: Resource::Sequences,
                client: self.client.clone(),
                paging: |_| Paging::Next,
                project: None,
                deletions: true,
                url: v1::sequences_across(&self.client, owner, &slugs),
                prio: Priority::High,
                owner: Some(owner.to_string()),
                slugs: slugs.clone(),
                attribution: Attribution::ByDatasetUid(
                    batch
                        .iter()
                        .map(|(s, u)| (u.clone(), s.as_str().into()))
                        .collect(),
                ),
            };
            let mut batch_report = CycleReport::default();
            match self.run_reported(&l, &mut batch_report).await? {
                Some(ListingEnd::Done(_)) => return Ok(batch_report),
                Some(ListingEnd::NeedsSplit) => {}
                None => {
                    // one bad dataset fails the batch: it alone should fail, so each
                    // dataset is listed on its own and reports for itself
                    tracing::warn!(
                        owner,
                        "a batch of {} datasets' sequences failed; listing them one by one",
                        batch.len()
                    );
                    batch_report.failures.clear();
                    batch_report.hard_failures = 0;
                }
            }
            report.merge(batch_report);
        }
        let one_by_one = slugs.into_iter().map(|slug| Listing {
            resource: Resource::Sequences,
            client: self.client.clone(),
            paging: |_| Paging::Next,
            project: None,
            deletions: true,
            url: v1::sequences_of(&self.client, owner, &slug),
            prio: Priority::High,
            owner: Some(owner.to_string()),
            slugs: vec![slug.clone()],
            attribution: Attribution::Fixed(Some(slug.into())),
        });
        report.merge(self.each_alone(one_by_one.collect()).await?);
        Ok(report)
    }

    /// Slices of every owner and organization side by side, then the membership of
    /// each slice that changed since its membership was last listed, side by side.
    async fn sync_slices(&self) -> Result<CycleReport, ApiError> {
        let owners = self
            .cfg
            .scope
            .owners
            .iter()
            .chain(&self.cfg.scope.organizations);
        let listings = owners.map(|owner| {
            self.simple(
                Resource::Slices,
                v1::slices_of(&self.client, owner),
                Some(owner),
            )
        });
        let mut report = self.each_alone(listings.collect()).await?;
        // a membership is relisted at least every RELIST_SLICES_EVERY intervals
        let every = self.cfg.schedule[&Resource::Slices].saturating_mul(RELIST_SLICES_EVERY);
        let stale_before = humantime::format_rfc3339_seconds(
            SystemTime::now().checked_sub(every).unwrap_or(UNIX_EPOCH),
        )
        .to_string();
        let stale = self
            .store
            .slices_to_relist(&stale_before)
            .await
            .map_err(db_error)?;
        let members = stale.into_iter().map(|(uid, owner, slug)| async move {
            let mut report = CycleReport::default();
            let scope = format!("slice_items:{uid}");
            match self.sync_slice_items(&uid, &owner, &slug, &scope).await {
                Ok(()) => report.scopes_ok += 1,
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => self.record_failure(&mut report, &[scope], &e).await,
            }
            Ok(report)
        });
        report.merge(self.side_by_side(members).await?);
        Ok(report)
    }

    async fn sync_slice_items(
        &self,
        uid: &str,
        owner: &str,
        slug: &str,
        scope: &str,
    ) -> Result<(), ApiError> {
        let now = now_rfc3339();
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let last = self
            .store
            .slice_listing_begins(scope, &now)
            .await
            .map_err(db_error)?;
        let url = v1::slice_items(&self.client, owner, slug);
        let pager = Pager::new(self.client.clone(), url, Priority::Low).last_size(last);
        let mut pages = pager.prefetch(|page| {
            let uids = page
                .records()
                .filter_map(|r| Some(Head::parse(&r, false, &[]).ok()?.uid.into_owned()));
            uids.collect::<Vec<String>>()
        });
        let mut total = 0u64;
        while let Some(page) = pages.next().await {
            // its place in the page budget is kept until the page is written
            let Ahead {
                value: uids,
                held: _held,
            } = page?;
            total += uids.len() as u64;
            self.store
                .put_slice_items(uid, uids, generation)
                .await
                .map_err(db_error)?;
        }
        self.store
            .slice_listed(uid, generation, scope, &now, total)
            .await
            .map_err(db_error)
    }

    /// Runs a listing, folding its result into the report; a failed scope is recorded
    /// and the cycle goes on. Only a rejected key stops it.
    async fn run_reported(
        &self,
        l: &Listing,
        report: &mut CycleReport,
    ) -> Result<Option<ListingEnd>, ApiError> {
        match self.run_listing(l, report).await {
            Ok(end) => Ok(Some(end)),
            Err(e) if e.is_fatal() => Err(e),
            Err(e) => {
                self.record_failure(report, &l.scopes(), &e).await;
                Ok(None)
            }
        }
    }

    async fn record_failure(&self, report: &mut CycleReport, scopes: &[String], e: &ApiError) {
        let msg = e.to_string();
        if e.is_scope_missing() {
            tracing::warn!(scopes = ?scopes, "skipping scope: {msg}");
        } else {
            tracing::error!(scopes = ?scopes, "listing failed, nothing deleted: {msg}");
        }
        let outran = match e {
            ApiError::TooLong { received, .. } => Some(*received),
            _ => None,
        };
        let res = self
            .store
            .scopes_failed(scopes, &msg, report.skipped, outran)
            .await;
        if let Err(db) = res {
            tracing::error!("recording the failure: {db}");
        }
        for s in scopes {
            report.failures.push((s.clone(), msg.clone()));
        }
        if !e.is_scope_missing() {
            report.hard_failures += 1;
        }
    }

    async fn run_listing(
        &self,
        l: &Listing,
        report: &mut CycleReport,
    ) -> Result<ListingEnd, ApiError> {
        let scopes = l.scopes();
        let now = now_rfc3339();
        let (res, emit_initial) = (l.resource, self.cfg.emit_initial);
        let paging = (l.paging)(&l.url);
        // a listing by key is bounded by the scope's live rows (SPEC §6), the
        // others by their last complete size
        let live = matches!(paging, Paging::Keyed(_)).then(|| l.filter());
        // Which scopes are past their silent baseline (SPEC §2 events.emit_initial),
        // and how many records their last complete listings had.
        let (baseline, last_size) = self
            .store
            .listing_begins(&scopes, res, &now, live)
            .await
            .map_err(db_error)?;
        let first_listing = !baseline.values().any(|done| *done);
        let queue = (res == Resource::Exports && self.cfg.downloads.enabled).then_some(
            records::QueueRule {
                backfill: self.cfg.downloads.backfill,
                past_baseline: !first_listing,
            },
        );
        let emit_by_slug: HashMap<Option<ByteString>, bool> = baseline
            .into_iter()
            .map(|(slug, done)| (slug.map(ByteString::from), done || emit_initial))
            .collect();

        let attribution = l.attribution.clone();
        let owner = l.owner.clone();
        let fields = res.spec().fields;
        let mut pages = Pager::paged(l.client.clone(), l.url.clone(), l.prio, paging)
            .last_size(last_size)
            .prefetch(move |page| convert(page, &attribution, owner.as_deref(), fields));
        let mut seen = RoaringTreemap::new();
        // the listing's pages share transactions (committed at least every second)
        let writes = self.store.batch();
        let (mut listed, mut skipped, mut duplicates) = (0u64, 0u64, 0u64);
        let mut newest: Option<(i128, String)> = None;
        while let Some(first) = pages.next().await {
            // Take what else is already waiting: pages written together, by one job.
            let mut group = vec![first?];
            let mut after = None;
            while group.len() < crate::api::page::AHEAD {
                match pages.ready() {
                    Some(Ok(page)) => group.push(page),
                    Some(Err(e)) => {
                        after = Some(Err(e));
                        break;
                    }
                    None => break,
                }
            }
            let mut batches = Vec::with_capacity(group.len());
            let mut held = Vec::with_capacity(group.len());
            for Ahead {
                value:
                    Converted {
                        batch,
                        rejected,
                        needs_split,
                        newest: page_newest,
                    },
                held: place,
            } in group
            {
                held.push(place);
                if page_newest.as_ref().map(|n| n.0) > newest.as_ref().map(|n| n.0) {
                    newest = page_newest;
                }
                for (index, why) in rejected {
                    skipped += 1;
                    tracing::warn!(scope = %scopes[0], index, "skipping a record: {why}");
                }
                if needs_split {
                    after = Some(Ok(ListingEnd::NeedsSplit));
                    break;
                }
                batches.push(batch);
            }
            let count: u64 = batches.iter().map(|b| b.len() as u64).sum();
            let emit = emit_by_slug.clone();
            let on = move |r: &Incoming| emit.get(&r.dataset_slug).copied().unwrap_or(emit_initial);
            let records::Applied {
                outcome,
                seen: s,
                pages: applied,
            } = writes
                .apply_pages(res, batches, on, queue, first_listing, &now, seen)
                .await
                .map_err(db_error)?;
            // the records are freed here, where they were allocated
            drop((applied, held));
            seen = s;
            // (a listing by key meets a record again when it changed meanwhile)
            if count > 0 && outcome.duplicates == count && l.deletions {
                // a cursor handing out what it already gave, forever
                return Err(ApiError::Untrusted {
                    endpoint: crate::api::client::endpoint(&l.url),
                    message: format!("{count} records in a row it had already returned"),
                });
            }
            report.add(&outcome);
            skipped += outcome.refused;
            duplicates += outcome.duplicates;
            listed += count;
            if let Some(p) = &self.progress {
                p(&scopes[0], count);
            }
            if let Some(end) = after {
                report.skipped += skipped;
                return end;
            }
        }
        report.skipped += skipped;
        writes.commit().await.map_err(db_error)?;
        let unstable = pages.finish().await || duplicates > 0;
        report.scopes_ok += scopes.len() as u64;
        self.store
            .scopes_succeeded(&scopes, &now, listed, skipped)
            .await
            .map_err(db_error)?;
        let listed = Listed {
            stable: !unstable,
            newest,
        };
        if unstable {
            tracing::warn!(scope = %scopes[0], "the collection changed during the listing; deletions wait for a stable one");
        } else if l.deletions {
            report.finishing.push(Finish {
                resource: res,
                filter: l.filter(),
                prio: l.prio,
                seen,
                emit_by_slug,
                scopes,
                now,
            });
        }
        Ok(ListingEnd::Done(listed))
    }

    /// A listing's deletion checks (see [`Finish`]), side by side at the
    /// listing's priority; a row is deleted only if a direct GET answers 404.
    async fn finish(&self, f: Finish, report: &mut CycleReport) -> Result<(), ApiError> {
        let Finish {
            resource: res,
            scopes,
            filter,
            prio,
            seen,
            emit_by_slug,
            now,
        } = f;
        let missing = self
            .store
            .missing(res, filter, seen)
            .await
            .map_err(db_error)?;
        let total = missing.len();
        // rows read a chunk at a time, their checks side by side, their
        // tombstones in the listing's order
        let (mut checked, mut gone) = (0usize, 0usize);
        for chunk in missing.chunks(DETAIL_CHUNK) {
            let rows = self
                .store
                .missing_detail(res, chunk.to_vec())
                .await
                .map_err(db_error)?;
            let mut checks = futures_util::stream::iter(rows)
                .map(|m| async move { (self.confirm_gone(res, &m, prio).await, m) })
                .buffered(self.client.concurrency());
            while let Some((is_gone, m)) = checks.next().await {
                checked += 1;
                if !is_gone? {
                    if checked >= CHECK_SAMPLE && gone * 2 < checked && checked < total {
                        tracing::warn!(
                            scope = %scopes[0],
                            "the listing missed {total} rows, but {} of the first {checked} checked are still there; not trusting it, the other {} wait for the next cycle",
                            checked - gone,
                            total - checked
                        );
                        return Ok(());
                    }
                    continue;
                }
                gone += 1;
                let emit = emit_by_slug
                    .get(&m.dataset_slug.as_deref().map(ByteString::from))
                    .copied()
                    .unwrap_or(self.cfg.emit_initial);
                let deleted = self
                    .store
                    .tombstone(res, &m.uid, emit, &now)
                    .await
                    .map_err(db_error)?;
                if deleted {
                    report.deleted += 1;
                    report.events += emit as u64;
                }
            }
        }
        Ok(())
    }

    /// A row missing from a complete listing is gone only if a direct GET says 404.
    async fn confirm_gone(
        &self,
        res: Resource,
        m: &Missing,
        prio: Priority,
    ) -> Result<bool, ApiError> {
        if let (Some(j), Some(c)) = (res.jsonapi(), &self.jsonapi) {
            return self
                .gone_if_404(c, &crate::api::jsonapi::show(c, j.path, &m.uid), prio, m)
                .await;
        }
        let c = &self.client;
        let owner = m.owner.as_deref().unwrap_or_default();
        let url = match (res, m.dataset_slug.as_deref(), m.slug.as_deref()) {
            (Resource::Exports, _, _) => v1::export(c, &m.uid),
            (Resource::Items, Some(ds), _) => v1::item(c, owner, ds, &m.uid),
            (Resource::Sequences, Some(ds), _) => v1::sequence(c, owner, ds, &m.uid),
            (Resource::Datasets, _, Some(slug)) => v1::dataset_probe(c, owner, slug),
            (Resource::Slices, _, Some(slug)) => v1::slice(c, owner, slug),
            _ => return Ok(false),
        };
        self.gone_if_404(c, &url, prio, m).await
    }

    /// Whether GET `url` answers 404 (any other answer keeps the row).
    async fn gone_if_404(
        &self,
        c: &Client,
        url: &Url,
        prio: Priority,
        m: &Missing,
    ) -> Result<bool, ApiError> {
        match c.fetch(url, prio, |_| Ok(())).await {
            Err(ApiError::NotFound(_)) => Ok(true),
            Ok(_) => {
                tracing::debug!(uid = %m.uid, "missing from the listing but still there; kept");
                Ok(false)
            }
            Err(e) if e.is_fatal() => Err(e),
            Err(e) => {
                tracing::warn!(uid = %m.uid, "could not confirm a deletion, kept: {e}");
                Ok(false)
            }
        }
    }
}

/// A page made ready for the store, off the writer's path.
struct Converted {
    batch: Vec<Incoming>,
    /// (index in the page, why) of records skipped for their shape.
    rejected: Vec<(usize, Rejected)>,
    /// A record could not be attributed to one of the listing's datasets.
    needs_split: bool,
    /// The largest `updated_at` of the page's records (JSON:API), parsed and as given.
    newest: Option<(i128, String)>,
}

fn convert(
    page: crate::api::page::Page,
    attribution: &Attribution,
    owner: Option<&str>,
    fields: &[crate::config::Field],
) -> Converted {
    let records = page.records();
    let owner = owner.map(ByteString::from);
    let by_dataset_uid = matches!(attribution, Attribution::ByDatasetUid(_));
    let mut out = Converted {
        batch: Vec::with_capacity(records.len()),
        rejected: vec![],
        needs_split: false,
        newest: None,
    };
    if let Attribution::JsonApi {
        columns,
        narrowing,
        overlap,
    } = attribution
    {
        let overlap = i128::try_from(overlap.as_nanos()).unwrap_or(i128::MAX);
        let latest = crate::time::nanos(SystemTime::now()).saturating_add(overlap);
        for (i, raw) in records.enumerate() {
            match Head::parse_jsonapi(&raw, columns) {
                Ok(head) => {
                    if let Some(t) = head.updated_at.as_deref()
                        && let Some(at) = crate::time::instant(t)
                        && at <= latest
                        && out.newest.as_ref().is_none_or(|n| n.0 < at)
                    {
                        out.newest = Some((at, t.to_string()));
                    }
                    if narrowing.as_ref().is_some_and(|n| !n.keeps(&head, columns)) {
                        continue;
                    }
                    out.batch.push(Incoming::new(head, &raw, None, None));
                }
                Err(why) => out.rejected.push((i, why)),
            }
        }
        return out;
    }
    for (i, raw) in records.enumerate() {
        let head = match Head::parse(&raw, by_dataset_uid, fields) {
            Ok(head) => head,
            Err(why) => {
                out.rejected.push((i, why));
                continue;
            }
        };
        let slug = match attribution {
            Attribution::Fixed(slug) => slug.as_ref(),
            Attribution::JsonApi { .. } => None,
            Attribution::ByDatasetUid(map) => {
                match head.dataset_uid.as_ref().and_then(|u| map.get(&**u)) {
                    Some(slug) => Some(slug),
                    None => {
                        out.needs_split = true;
                        return out;
                    }
                }
            }
        };
        out.batch
            .push(Incoming::new(head, &raw, owner.as_ref(), slug));
    }
    out
}

fn db_error(e: impl Into<crate::store::Error>) -> ApiError {
    // Ends the listing; the batch was rolled back to its last commit, nothing half-applied.
    ApiError::Store(e.into())
}
