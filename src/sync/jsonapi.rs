//! The JSON:API service's collections (SPEC §8), through the same listing,
//! diff, store and deletion checks as the v1 resources. What differs is which
//! listing a cycle runs:
//! - a collection with `filter[updated_at__gte]` is listed from its watermark,
//!   paged by key; a count probe after it, a `full_every`, or a server that
//!   ignores or refuses the filter, make it a full listing instead;
//! - the others are listed in full every cycle, one listing per project in scope.
//!
//! Only a complete, stable full listing leads to deletion checks (a 404 from
//! the show endpoint), like a v1 listing.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Url;

use super::{Attribution, CycleReport, Listing, ListingEnd, Narrowing, Syncer, db_error};
use crate::api::jsonapi;
use crate::api::page::{Keyed, Paging};
use crate::api::{Client, Priority};
use crate::config::Resource;
use crate::error::ApiError;
use crate::store::records::ScopeFilter;
use crate::store::{now_rfc3339, state};
use crate::time::{instant, nanos};

/// After the server ignored or refused the filter, how long a scope stays on
/// full listings before it tries the filter again.
const FILTER_REST: Duration = Duration::from_secs(86_400);

impl Syncer {
    /// One cycle of a JSON:API collection: one scope per project in scope (or
    /// one for the whole collection), side by side.
    pub(super) async fn sync_jsonapi(&self, res: Resource) -> Result<CycleReport, ApiError> {
        let (Some(client), Some(cfg), Some(spec)) =
            (&self.jsonapi, &self.cfg.jsonapi, res.jsonapi())
        else {
            return Err(ApiError::Internal(format!(
                "{res} is a JSON:API collection, and jsonapi.base_url is not set"
            )));
        };
        let projects: Vec<Option<String>> = match spec.by_project && !cfg.projects.is_empty() {
            true => cfg.projects.iter().cloned().map(Some).collect(),
            false => vec![None],
        };
        let narrowing = self.narrowing(res).await?;
        let scopes = projects.into_iter().map(|project| {
            let narrowing = narrowing.clone();
            async move {
                let mut report = CycleReport::default();
                self.jsonapi_scope(client, res, project, narrowing, &mut report)
                    .await?;
                Ok(report)
            }
        });
        self.side_by_side(scopes).await
    }

    /// What a listing of `res` keeps when `jsonapi.projects` narrows it but the
    /// server cannot: the projects themselves, and the comments of note feeds
    /// in the mirror.
    async fn narrowing(&self, res: Resource) -> Result<Option<Narrowing>, ApiError> {
        let projects = match &self.cfg.jsonapi {
            Some(j) if !j.projects.is_empty() => j.projects.clone(),
            _ => return Ok(None),
        };
        let (field, ids) = match res {
            Resource::Projects => ("id", projects.into_iter().collect()),
            Resource::NoteComments => {
                let feeds = self
                    .store
                    .present_uids(Resource::NoteFeeds)
                    .await
                    .map_err(db_error)?;
                ("note_feed_id", feeds)
            }
            _ => return Ok(None),
        };
        Ok(Some(Narrowing {
            field,
            ids: Arc::new(ids),
        }))
    }

    async fn jsonapi_scope(
        &self,
        client: &Arc<Client>,
        res: Resource,
        project: Option<String>,
        narrowing: Option<Narrowing>,
        report: &mut CycleReport,
    ) -> Result<(), ApiError> {
        let (cfg, spec) = (
            self.cfg.jsonapi.as_ref().expect("checked"),
            res.jsonapi().expect("checked"),
        );
        let scope = match &project {
            Some(p) => format!("{}:{p}", res.table()),
            None => res.table().to_string(),
        };
        let st = self
            .store
            .incremental_state(&scope)
            .await
            .map_err(db_error)?;
        let now = SystemTime::now();
        let older_than = |t: &Option<String>, d: Duration| {
            t.as_deref()
                .and_then(instant)
                .is_none_or(|t| nanos(now) - t >= d.as_nanos() as i128)
        };
        let filter_resting =
            st.filter_failed_at.is_some() && !older_than(&st.filter_failed_at, FILTER_REST);
        let mut full = match &st.watermark {
            Some(_) if spec.incremental => {
                older_than(&st.full_at, cfg.full_every) || filter_resting
            }
            _ => true,
        };
        if !full {
            let bound = bound(st.watermark.as_deref().unwrap_or_default(), cfg.overlap);
            let l = self.jsonapi_listing(client, res, &project, &narrowing, Some(&bound));
            match self.run_listing(&l, report).await {
                Ok(ListingEnd::Done(listed)) => {
                    let newest = listed.newest.map(|n| n.1);
                    let cleared = st.filter_failed_at.is_some();
                    self.store
                        .jsonapi_listed(
                            &scope,
                            newest,
                            state::Listed::Incremental,
                            cleared,
                            &now_rfc3339(),
                        )
                        .await
                        .map_err(db_error)?;
                    if narrowing.is_none() {
                        full = self.fewer_on_server(client, res, &project, &scope).await?;
                    }
                }
                Ok(ListingEnd::NeedsSplit) => {}
                Err(
                    e @ (ApiError::FilterIgnored { .. } | ApiError::Status { status: 400, .. }),
                ) => {
                    let msg = e.to_string();
                    tracing::warn!(
                        scope,
                        "{msg}; listing in full, and on full listings for a day"
                    );
                    self.store
                        .jsonapi_filter_failed(&scope, &msg, &now_rfc3339())
                        .await
                        .map_err(db_error)?;
                    full = true;
                }
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    self.record_failure(report, &[scope], &e).await;
                    return Ok(());
                }
            }
        }
        if !full {
            return Ok(());
        }
        let l = self.jsonapi_listing(client, res, &project, &narrowing, None);
        match self.run_listing(&l, report).await {
            Ok(ListingEnd::Done(listed)) => {
                let newest = listed.newest.map(|n| n.1);
                let how = state::Listed::Full {
                    stable: listed.stable,
                };
                self.store
                    .jsonapi_listed(&scope, newest, how, false, &now_rfc3339())
                    .await
                    .map_err(db_error)?;
            }
            Ok(ListingEnd::NeedsSplit) => {}
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => self.record_failure(report, &[scope], &e).await,
        }
        Ok(())
    }

    fn jsonapi_listing(
        &self,
        client: &Arc<Client>,
        res: Resource,
        project: &Option<String>,
        narrowing: &Option<Narrowing>,
        since: Option<&str>,
    ) -> Listing {
        let path = res.jsonapi().expect("a JSON:API collection").path;
        let (url, paging, prio): (Url, fn(&Url) -> Paging, Priority) = match since {
            // what changed is a status poll; a full listing is a crawl
            Some(bound) => (
                jsonapi::since(client, path, project.as_deref(), bound),
                |url| {
                    let bound = url.query_pairs().find(|(k, _)| k == jsonapi::SINCE);
                    Paging::Keyed(Keyed::new(&bound.map(|(_, v)| v).unwrap_or_default()))
                },
                Priority::High,
            ),
            None => (
                jsonapi::full(client, path, project.as_deref()),
                |_| Paging::Number,
                Priority::Low,
            ),
        };
        Listing {
            resource: res,
            client: client.clone(),
            url,
            paging,
            project: project.clone(),
            deletions: since.is_none(),
            prio,
            owner: None,
            slugs: vec![],
            attribution: Attribution::JsonApi {
                columns: res.columns(),
                narrowing: narrowing.clone(),
                overlap: self
                    .cfg
                    .jsonapi
                    .as_ref()
                    .map_or(Duration::ZERO, |j| j.overlap),
            },
        }
    }

    /// The count probe after an incremental listing: one record with the
    /// collection's size. Fewer on the server than live in the mirror means
    /// something was deleted, which only a full listing shows. A failed probe
    /// is logged and waits for the next cycle.
    async fn fewer_on_server(
        &self,
        client: &Client,
        res: Resource,
        project: &Option<String>,
        scope: &str,
    ) -> Result<bool, ApiError> {
        let url = jsonapi::probe(
            client,
            res.jsonapi().expect("checked").path,
            project.as_deref(),
        );
        let server = match client
            .fetch(&url, Priority::High, |b| {
                crate::api::page::parse_document(b).map(|(page, _)| page.count)
            })
            .await
        {
            Ok(f) => f.value,
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                tracing::warn!(scope, "count probe failed, next cycle tries again: {e}");
                return Ok(false);
            }
        };
        let Some(server) = server else {
            tracing::debug!(scope, "the count probe's answer has no meta.count");
            return Ok(false);
        };
        let filter = ScopeFilter {
            project_id: project.clone(),
            ..ScopeFilter::default()
        };
        let mirror = self.store.live_count(res, filter).await.map_err(db_error)?;
        if server < mirror {
            tracing::info!(
                scope,
                "the server counts {server} records and the mirror {mirror}: listing in full to find what was deleted"
            );
        }
        Ok(server < mirror)
    }
}

/// An incremental listing's bound: the watermark less the overlap.
fn bound(watermark: &str, overlap: Duration) -> String {
    let at = instant(watermark).unwrap_or(0) - overlap.as_nanos() as i128;
    let t = UNIX_EPOCH + Duration::from_nanos(at.clamp(0, u64::MAX as i128) as u64);
    humantime::format_rfc3339_micros(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_the_watermark_less_the_overlap() {
        assert_eq!(
            bound("2026-12-01T10:02:00.5+00:00", Duration::from_secs(120)),
            "2026-12-01T10:00:00.500000Z"
        );
    }
}
