//! `sync_state`: one row per listing scope — baseline done, last attempt and
//! success, the last error, records listed and records skipped.

use rusqlite::{Connection, OptionalExtension, params};

use std::collections::HashMap;

use crate::config::Resource;

/// Whether the scope has had its first complete listing (the silent baseline).
pub fn baseline_done(conn: &Connection, scope: &str) -> rusqlite::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT baseline_done FROM sync_state WHERE scope = ?1",
            [scope],
            |r| r.get::<_, bool>(0),
        )
        .optional()?
        .unwrap_or(false))
}

pub fn attempt(
    conn: &Connection,
    scope: &str,
    resource: Resource,
    now: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO sync_state (scope, resource, last_attempt_at) VALUES (?1, ?2, ?3)
         ON CONFLICT(scope) DO UPDATE SET last_attempt_at = excluded.last_attempt_at",
        params![scope, resource.table(), now],
    )?;
    Ok(())
}

pub fn success(
    conn: &Connection,
    scope: &str,
    now: &str,
    records: u64,
    skipped: u64,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE sync_state SET baseline_done = 1, last_success_at = ?2, last_error = NULL,
         records = ?3, skipped = ?4 WHERE scope = ?1",
        params![scope, now, records as i64, skipped as i64],
    )?;
    Ok(())
}

/// The scope's last complete size (records listed), if it had a complete listing.
pub fn last_size(conn: &Connection, scope: &str) -> rusqlite::Result<Option<u64>> {
    let n: Option<i64> = conn
        .query_row(
            "SELECT records FROM sync_state WHERE scope = ?1 AND last_success_at IS NOT NULL",
            [scope],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    Ok(n.map(|n| n as u64))
}

/// A listing cut for running far past its last size: the size it reached is
/// what the next one is measured against (a collection that really grew gets
/// through then; an endless one costs ten times more each cycle, never forever).
pub fn outran(conn: &Connection, scope: &str, received: u64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE sync_state SET records = ?2 WHERE scope = ?1",
        params![scope, received as i64],
    )?;
    Ok(())
}

pub fn failure(conn: &Connection, scope: &str, error: &str, skipped: u64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE sync_state SET last_error = ?2, skipped = ?3 WHERE scope = ?1",
        params![scope, error, skipped as i64],
    )?;
    Ok(())
}

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

pub fn incremental(conn: &Connection, scope: &str) -> rusqlite::Result<Incremental> {
    Ok(conn
        .query_row(
            "SELECT watermark, full_at, filter_failed_at FROM sync_state WHERE scope = ?1",
            [scope],
            |r| {
                Ok(Incremental {
                    watermark: r.get(0)?,
                    full_at: r.get(1)?,
                    filter_failed_at: r.get(2)?,
                })
            },
        )
        .optional()?
        .unwrap_or_default())
}

/// Which listing of a JSON:API scope completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    /// What changed since the watermark.
    Incremental,
    /// Everything; `stable` when the collection did not change under it.
    Full { stable: bool },
}

/// After a complete listing (the scope's row exists): its newest `updated_at`
/// becomes the watermark (a full listing sets it, an incremental one only
/// moves it on), and a stable full listing is the scope's `full_at`.
pub fn listed(
    conn: &Connection,
    scope: &str,
    newest: Option<&str>,
    how: Listed,
    now: &str,
) -> rusqlite::Result<()> {
    let old: Option<String> = conn
        .query_row(
            "SELECT watermark FROM sync_state WHERE scope = ?1",
            [scope],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    let watermark = next_watermark(old, newest, how);
    conn.execute(
        "UPDATE sync_state SET watermark = ?2, full_at = CASE WHEN ?3 THEN ?4 ELSE full_at END
         WHERE scope = ?1",
        params![scope, watermark, how == Listed::Full { stable: true }, now],
    )?;
    Ok(())
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

/// The server ignored or refused the filter: the scope stays on full listings
/// for a while (`status` shows why); `None` clears it once the filter works.
pub fn filter_failed(
    conn: &Connection,
    scope: &str,
    failed: Option<(&str, &str)>,
) -> rusqlite::Result<()> {
    let (at, error) = failed.unzip();
    conn.execute(
        "UPDATE sync_state SET filter_failed_at = ?2, filter_error = ?3 WHERE scope = ?1",
        params![scope, at, error],
    )?;
    Ok(())
}

/// Sets one of the running daemon's `service_state` values (what `status`,
/// which reads only the database, should see); `None` removes it.
pub fn set_service(
    c: &Connection,
    key: &str,
    value: Option<&str>,
    now: &str,
) -> rusqlite::Result<()> {
    match value {
        Some(v) => c.execute(
            "INSERT INTO service_state (key, value, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            params![key, v, now],
        ),
        None => c.execute("DELETE FROM service_state WHERE key = ?1", [key]),
    }
    .map(drop)
}

/// One `service_state` value.
pub fn service(c: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    c.query_row(
        "SELECT value FROM service_state WHERE key = ?1",
        [key],
        |r| r.get(0),
    )
    .optional()
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
                    last = Some(super::records::live_count(c, res, &filter)?);
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
