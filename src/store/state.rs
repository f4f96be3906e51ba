//! `sync_state`: one row per listing scope — baseline done, last attempt and
//! success, the last error, records listed and records skipped.

use super::sqlite::state::*;
use crate::config::Resource;
use std::collections::HashMap;

/// An incrementally listed scope's state (SPEC §8).
#[derive(Debug, Default, Clone)]
pub struct Incremental {
    /// The largest `updated_at` of its last complete listing.
    pub watermark: Option<String>,
    /// Its last complete, stable full listing.
    pub full_at: Option<String>,
    /// When the server last ignored or refused `filter[updated_at__gte]`.
    pub filter_failed_at: Option<String>,
}

/// Which listing of a JSON:API scope completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    /// What changed since the watermark.
    Incremental,
    /// Everything; `stable` when the collection did not change under it.
    Full { stable: bool },
}

/// The watermark after a listing: a full listing sets it to its newest
/// `updated_at`, an incremental one only moves it on.
pub fn next_watermark(old: Option<String>, newest: Option<&str>, how: Listed) -> Option<String> {
    let at = |t: Option<&str>| t.and_then(crate::time::instant);
    match (how != Listed::Incremental, newest) {
        (true, _) => newest.map(str::to_owned).or(old),
        (false, Some(n)) if at(Some(n)) > at(old.as_deref()) => Some(n.to_owned()),
        (false, _) => old,
    }
}

/// The listings' bookkeeping in `sync_state`, as `sync` uses it. `now` is when
/// the listing began: its success is dated then.
impl super::Store {
    /// A listing of `scope` begins.
    pub async fn scope_attempt(&self, scope: &str, res: Resource, now: &str) -> super::Result<()> {
        if let Some(pg) = self.pg() {
            return pg.scope_attempt(scope, res, now).await;
        }
        let (s, n) = (scope.to_string(), now.to_string());
        Ok(self.call(move |c| attempt(c, &s, res, &n)).await?)
    }

    /// A listing of `scopes` begins: which are past their silent baseline (by
    /// the dataset slug after a scope's `/`), and how many records their last
    /// complete listings had; with `live`, the scope's live rows instead.
    pub async fn listing_begins(
        &self,
        scopes: &[String],
        res: Resource,
        now: &str,
        live: Option<super::records::ScopeFilter>,
    ) -> super::Result<(HashMap<Option<String>, bool>, Option<u64>)> {
        if let Some(pg) = self.pg() {
            return pg.listing_begins(scopes, res, now, live).await;
        }
        let (sc, n) = (scopes.to_vec(), now.to_string());
        Ok(self
            .call(move |c| {
                let mut m: HashMap<Option<String>, bool> = HashMap::new();
                let mut last: Option<u64> = None;
                for s in &sc {
                    attempt(c, s, res, &n)?;
                    let slug = s.split_once('/').map(|(_, slug)| slug.to_string());
                    m.insert(slug, baseline_done(c, s)?);
                    if let Some(n) = last_size(c, s)? {
                        last = Some(last.unwrap_or(0).saturating_add(n));
                    }
                }
                if let Some(filter) = live {
                    last = Some(super::sqlite::records::live_count(c, res, &filter)?);
                }
                Ok::<_, rusqlite::Error>((m, last))
            })
            .await?)
    }

    /// A slice's membership listing begins: the size of its last complete one.
    pub async fn slice_listing_begins(&self, scope: &str, now: &str) -> super::Result<Option<u64>> {
        if let Some(pg) = self.pg() {
            return pg.slice_listing_begins(scope, now).await;
        }
        let (s, n) = (scope.to_string(), now.to_string());
        Ok(self
            .call(move |c| {
                attempt(c, &s, Resource::Slices, &n)?;
                last_size(c, &s)
            })
            .await?)
    }

    /// Complete listings of `scopes`.
    pub async fn scopes_succeeded(
        &self,
        scopes: &[String],
        now: &str,
        listed: u64,
        skipped: u64,
    ) -> super::Result<()> {
        if let Some(pg) = self.pg() {
            return pg.scopes_succeeded(scopes, now, listed, skipped).await;
        }
        let (sc, n) = (scopes.to_vec(), now.to_string());
        Ok(self
            .call(move |c| {
                sc.iter()
                    .try_for_each(|s| success(c, s, &n, listed, skipped))
            })
            .await?)
    }

    /// Failed listings of `scopes`; `outran`: the records received past the
    /// listing's bound.
    pub async fn scopes_failed(
        &self,
        scopes: &[String],
        error: &str,
        skipped: u64,
        outran: Option<u64>,
    ) -> super::Result<()> {
        if let Some(pg) = self.pg() {
            return pg.scopes_failed(scopes, error, skipped, outran).await;
        }
        let (sc, m) = (scopes.to_vec(), error.to_string());
        Ok(self
            .call(move |c| {
                sc.iter().try_for_each(|s| {
                    if let Some(n) = outran {
                        self::outran(c, s, n)?;
                    }
                    failure(c, s, &m, skipped)
                })
            })
            .await?)
    }

    /// A JSON:API scope's watermark and full-listing state.
    pub async fn incremental_state(&self, scope: &str) -> super::Result<Incremental> {
        if let Some(pg) = self.pg() {
            return pg.incremental_state(scope).await;
        }
        let s = scope.to_string();
        Ok(self.read(move |c| incremental(c, &s)).await?)
    }

    /// A JSON:API listing completed, with the newest `updated_at` it saw; an
    /// incremental one that worked clears an earlier filter failure.
    pub async fn jsonapi_listed(
        &self,
        scope: &str,
        newest: Option<String>,
        how: Listed,
        clear_filter_failure: bool,
        now: &str,
    ) -> super::Result<()> {
        if let Some(pg) = self.pg() {
            return pg
                .jsonapi_listed(scope, newest, how, clear_filter_failure, now)
                .await;
        }
        let (s, n) = (scope.to_string(), now.to_string());
        Ok(self
            .call(move |c| {
                if clear_filter_failure {
                    filter_failed(c, &s, None)?;
                }
                listed(c, &s, newest.as_deref(), how, &n)
            })
            .await?)
    }

    /// The server ignored or refused `filter[updated_at__gte]` for `scope`.
    pub async fn jsonapi_filter_failed(
        &self,
        scope: &str,
        error: &str,
        now: &str,
    ) -> super::Result<()> {
        if let Some(pg) = self.pg() {
            return pg.jsonapi_filter_failed(scope, error, now).await;
        }
        let (s, e, n) = (scope.to_string(), error.to_string(), now.to_string());
        Ok(self
            .call(move |c| filter_failed(c, &s, Some((&n, &e))))
            .await?)
    }

    /// Daemon state worth showing (`api_paused_until`), or `None` to clear it.
    pub async fn set_service_state(&self, key: &str, value: Option<String>) -> super::Result<()> {
        if let Some(pg) = self.pg() {
            return pg.set_service_state(key, value).await;
        }
        let (k, n) = (key.to_string(), crate::time::now_rfc3339());
        Ok(self
            .call(move |c| set_service(c, &k, value.as_deref(), &n))
            .await?)
    }
}
