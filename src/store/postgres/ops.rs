//! The store's operations in PostgreSQL's SQL, one for each of
//! [`crate::store::Store`]'s: sync state, the download queue, the outbox and
//! deliveries, retention and `status`. Same meaning as the SQLite ones beside
//! `store/`; where they differ it is only in the SQL.

use std::collections::HashMap;
use std::time::SystemTime;

use serde_json::{Value, json};
use tokio_postgres::Transaction;

use super::{Db, at, jsonb_text, text, text_value};
use crate::config::Resource;
use crate::store::downloads::{Job, Outcome as DownloadOutcome};
use crate::store::events::{Event, NewEvent};
use crate::store::outbox::{Outcome, Place};
use crate::store::records::ScopeFilter;
use crate::store::report::{Collection, DOWNLOAD_STATES, Snapshot, Tally};
use crate::store::retention::CHUNK;
use crate::store::state::{Incremental, Listed, next_watermark};
use crate::store::{Result, now_rfc3339};

/// The transaction lock taken before an event is appended (see [`super::Db`]).
pub(super) const EVENTS_LOCK: i64 = 0x4156_4D53_0000_0001;

/// Appends one event in `tx` and notifies `events --follow` (delivered at commit).
pub(super) async fn append_event(
    tx: &Transaction<'_>,
    channel: &str,
    ev: &NewEvent<'_>,
    now: &str,
) -> std::result::Result<(), tokio_postgres::Error> {
    let (id, kind, payload) = crate::store::events::document(ev, now);
    // the lock first (the row's seq is drawn after it), held until commit
    tx.execute(
        "WITH e AS (
           INSERT INTO events (id, type, resource, uid, owner, dataset_slug, old_status, new_status, created_at, payload)
           SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::jsonb FROM (SELECT pg_advisory_xact_lock($12)) AS l
           RETURNING seq)
         SELECT pg_notify($11, '') FROM e",
        &[
            &id,
            &kind,
            &ev.resource.singular(),
            &text_value(ev.uid),
            &ev.owner.map(text_value),
            &ev.dataset_slug.map(text_value),
            &ev.old_status.map(text_value),
            &ev.new_status.map(text_value),
            &at(now),
            &jsonb_text(&payload.to_string()),
            &channel,
            &EVENTS_LOCK,
        ],
    )
    .await
    .map(drop)
}

/// `--type`'s glob (`*` any run of characters) as a LIKE pattern.
pub(super) fn like(glob: &str) -> String {
    let mut p = String::with_capacity(glob.len());
    for c in glob.chars() {
        match c {
            '*' => p.push('%'),
            '%' | '_' | '\\' => {
                p.push('\\');
                p.push(c);
            }
            c => p.push(c),
        }
    }
    p
}

pub(super) fn event(r: &tokio_postgres::Row) -> Event {
    Event {
        seq: r.get(0),
        id: r.get(1),
        kind: r.get(2),
        uid: r.get(3),
        owner: r.get(4),
        dataset_slug: r.get(5),
        old_status: r.get(6),
        new_status: r.get(7),
        created_at: text(r.get(8)).unwrap_or_default(),
        payload: r.get(9),
    }
}

pub(super) const EVENTS_AFTER: &str =
    "SELECT seq, id, type, uid, owner, dataset_slug, old_status, new_status, created_at, payload::text
     FROM events WHERE seq > $1 AND type LIKE $2 ORDER BY seq LIMIT $3";

pub(super) const SEQ_OF_PRUNED: &str = "SELECT COALESCE((SELECT min(seq) FROM events WHERE id > $1) - 1, (SELECT max(seq) FROM events))";

/// [`crate::store::events::seq_of`] in PostgreSQL.
pub(super) async fn seq_of(
    c: &tokio_postgres::Client,
    since: &str,
) -> std::result::Result<Option<i64>, tokio_postgres::Error> {
    if let Ok(n) = since.parse::<i64>() {
        return Ok(Some(n));
    }
    let found = c
        .query_opt("SELECT seq FROM events WHERE id = $1", &[&since])
        .await?
        .map(|r| r.get(0));
    if found.is_some() || !since.starts_with("evt_") {
        return Ok(found);
    }
    Ok(c.query_one(SEQ_OF_PRUNED, &[&since]).await?.get(0))
}

impl Db {
    pub async fn ping(&self) -> Result<()> {
        self.with(async |c| c.execute("SELECT 1", &[]).await.map(drop))
            .await
    }

    // ---- sync state ----

    pub async fn scope_attempt(&self, scope: &str, res: Resource, now: &str) -> Result<()> {
        self.with(async |c| {
            let tx = c.transaction().await?;
            attempt(&tx, scope, res, now).await?;
            tx.commit().await
        })
        .await
    }

    pub async fn listing_begins(
        &self,
        scopes: &[String],
        res: Resource,
        now: &str,
        live: Option<ScopeFilter>,
    ) -> Result<(HashMap<Option<String>, bool>, Option<u64>)> {
        self.with(async |c| {
            let tx = c.transaction().await?;
            let mut m = HashMap::new();
            let mut last: Option<u64> = None;
            for s in scopes {
                attempt(&tx, s, res, now).await?;
                let row = tx
                    .query_one(
                        "SELECT baseline_done, CASE WHEN last_success_at IS NOT NULL THEN records END
                         FROM sync_state WHERE scope = $1",
                        &[s],
                    )
                    .await?;
                let slug = s.split_once('/').map(|(_, slug)| slug.to_string());
                m.insert(slug, row.get::<_, bool>(0));
                if let Some(n) = row.get::<_, Option<i64>>(1) {
                    last = Some(last.unwrap_or(0).saturating_add(n as u64));
                }
            }
            if let Some(filter) = &live {
                last = Some(super::records::live_count(&tx, res, filter).await?);
            }
            tx.commit().await?;
            Ok((m, last))
        })
        .await
    }

    pub async fn slice_listing_begins(&self, scope: &str, now: &str) -> Result<Option<u64>> {
        self.with(async |c| {
            let tx = c.transaction().await?;
            attempt(&tx, scope, Resource::Slices, now).await?;
            let n: Option<i64> = tx
                .query_one(
                    "SELECT CASE WHEN last_success_at IS NOT NULL THEN records END FROM sync_state WHERE scope = $1",
                    &[&scope],
                )
                .await?
                .get(0);
            tx.commit().await?;
            Ok(n.map(|n| n as u64))
        })
        .await
    }

    pub async fn scopes_succeeded(
        &self,
        scopes: &[String],
        now: &str,
        listed: u64,
        skipped: u64,
    ) -> Result<()> {
        self.with(async |c| {
            c.execute(
                SUCCESS,
                &[&scopes, &at(now), &(listed as i64), &(skipped as i64)],
            )
            .await
            .map(drop)
        })
        .await
    }

    pub async fn scopes_failed(
        &self,
        scopes: &[String],
        error: &str,
        skipped: u64,
        outran: Option<u64>,
    ) -> Result<()> {
        let outran = outran.map(|n| n as i64);
        self.with(async |c| {
            c.execute(
                "UPDATE sync_state SET records = COALESCE($4, records), last_error = $2, skipped = $3
                 WHERE scope = ANY($1)",
                &[&scopes, &error, &(skipped as i64), &outran],
            )
            .await
            .map(drop)
        })
        .await
    }

    pub async fn incremental_state(&self, scope: &str) -> Result<Incremental> {
        self.with(async |c| {
            let row = c
                .query_opt(
                    "SELECT watermark, full_at, filter_failed_at FROM sync_state WHERE scope = $1",
                    &[&scope],
                )
                .await?;
            Ok(row.map_or_else(Incremental::default, |r| Incremental {
                watermark: r.get(0),
                full_at: text(r.get(1)),
                filter_failed_at: text(r.get(2)),
            }))
        })
        .await
    }

    pub async fn jsonapi_listed(
        &self,
        scope: &str,
        newest: Option<String>,
        how: Listed,
        clear_filter_failure: bool,
        now: &str,
    ) -> Result<()> {
        self.with(async |c| {
            let tx = c.transaction().await?;
            if clear_filter_failure {
                tx.execute(FILTER_FAILED, &[&scope, &None::<SystemTime>, &None::<&str>])
                    .await?;
            }
            let old: Option<String> = tx
                .query_opt("SELECT watermark FROM sync_state WHERE scope = $1", &[&scope])
                .await?
                .and_then(|r| r.get(0));
            let watermark = next_watermark(old, newest.as_deref(), how);
            tx.execute(
                "UPDATE sync_state SET watermark = $2, full_at = CASE WHEN $3 THEN $4 ELSE full_at END
                 WHERE scope = $1",
                &[&scope, &watermark, &(how == Listed::Full { stable: true }), &at(now)],
            )
            .await?;
            tx.commit().await
        })
        .await
    }

    pub async fn jsonapi_filter_failed(&self, scope: &str, error: &str, now: &str) -> Result<()> {
        self.with(async |c| {
            c.execute(FILTER_FAILED, &[&scope, &at(now), &Some(error)])
                .await
                .map(drop)
        })
        .await
    }

    pub async fn set_service_state(&self, key: &str, value: Option<String>) -> Result<()> {
        let now = at(&now_rfc3339());
        self.with(async |c| {
            match &value {
                Some(v) => {
                    c.execute(
                        "INSERT INTO service_state (key, value, updated_at) VALUES ($1, $2, $3)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                        &[&key, v, &now],
                    )
                    .await
                }
                None => {
                    c.execute("DELETE FROM service_state WHERE key = $1", &[&key])
                        .await
                }
            }
            .map(drop)
        })
        .await
    }

    // ---- downloads ----

    pub async fn downloads_due(&self) -> Result<Vec<Job>> {
        let now = SystemTime::now();
        self.with(async |c| {
            let rows = c
                .query(
                    "SELECT export_uid, url, file_name, attempts FROM downloads
                     WHERE (status IN ('pending', 'downloading')
                            OR (status = 'waiting_for_space' AND retry_at <= $1))
                       AND url IS NOT NULL AND file_name IS NOT NULL
                     ORDER BY created_at, export_uid",
                    &[&now],
                )
                .await?;
            Ok(rows.iter().map(job_of).collect())
        })
        .await
    }

    pub async fn download_attempt(&self, uid: &str) -> Result<u32> {
        self.with(async |c| {
            let r = c
                .query_one(
                    "UPDATE downloads SET status = 'downloading', attempts = attempts + 1, updated_at = now()
                     WHERE export_uid = $1 RETURNING attempts",
                    &[&uid],
                )
                .await?;
            Ok(r.get::<_, i64>(0) as u32)
        })
        .await
    }

    pub async fn download_attempt_failed(&self, uid: &str, error: &str) -> Result<()> {
        self.update_download(
            "UPDATE downloads SET error = $2, updated_at = now() WHERE export_uid = $1",
            uid,
            error,
        )
        .await
    }

    pub async fn download_set_url(&self, uid: &str, url: &str) -> Result<()> {
        self.update_download(
            "UPDATE downloads SET url = $2 WHERE export_uid = $1",
            uid,
            url,
        )
        .await
    }

    async fn update_download(&self, sql: &str, uid: &str, value: &str) -> Result<()> {
        self.with(async |c| c.execute(sql, &[&uid, &value]).await.map(drop))
            .await
    }

    pub async fn download_complete(
        &self,
        uid: &str,
        path: &str,
        bytes: u64,
        sha256: &str,
    ) -> Result<()> {
        let now = now_rfc3339();
        let channel = super::channel(&self.target.schema);
        self.with(async |c| {
            let tx = c.transaction().await?;
            tx.execute(
                "UPDATE downloads SET status = 'downloaded', path = $2, bytes = $3, sha256 = $4, error = NULL,
                 completed_at = $5, updated_at = $5 WHERE export_uid = $1",
                &[&uid, &path, &(bytes as i64), &sha256, &at(&now)],
            )
            .await?;
            let detail = json!({"path": path, "bytes": bytes, "sha256": sha256});
            download_event(&tx, &channel, uid, "downloaded", detail, &now).await?;
            tx.commit().await
        })
        .await
    }

    pub async fn download_fail(&self, uid: &str, error: &str) -> Result<()> {
        let now = now_rfc3339();
        let channel = super::channel(&self.target.schema);
        self.with(async |c| {
            let tx = c.transaction().await?;
            let attempts: i64 = tx
                .query_one(
                    "UPDATE downloads SET status = 'failed', error = $2, updated_at = $3 WHERE export_uid = $1
                     RETURNING attempts",
                    &[&uid, &error, &at(&now)],
                )
                .await?
                .get(0);
            let detail = json!({"error": error, "attempts": attempts});
            download_event(&tx, &channel, uid, "download_failed", detail, &now).await?;
            tx.commit().await
        })
        .await
    }

    pub async fn download_wait_for_space(
        &self,
        uid: &str,
        error: &str,
        retry_at: &str,
    ) -> Result<()> {
        self.with(async |c| {
            c.execute(
                "UPDATE downloads SET status = 'waiting_for_space', error = $2, retry_at = $3, updated_at = now()
                 WHERE export_uid = $1",
                &[&uid, &error, &at(retry_at)],
            )
            .await
            .map(drop)
        })
        .await
    }

    pub async fn download_set_upload(
        &self,
        uid: &str,
        upload: Option<(String, String)>,
    ) -> Result<()> {
        let (key, id) = upload.unzip();
        self.with(async |c| {
            c.execute(
                "UPDATE downloads SET upload_key = $2, upload_id = $3 WHERE export_uid = $1",
                &[&uid, &key, &id],
            )
            .await
            .map(drop)
        })
        .await
    }

    pub async fn unfinished_uploads(&self) -> Result<Vec<(String, String, String)>> {
        self.with(async |c| {
            let rows = c
                .query(
                    "SELECT export_uid, upload_key, upload_id FROM downloads
                     WHERE upload_id IS NOT NULL AND upload_key IS NOT NULL",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect())
        })
        .await
    }

    pub async fn download_outcome(&self, uid: &str) -> Result<Option<DownloadOutcome>> {
        self.with(async |c| {
            let row = c
                .query_opt(
                    "SELECT status, path, bytes, sha256, error FROM downloads WHERE export_uid = $1",
                    &[&uid],
                )
                .await?;
            Ok(row.map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))))
        })
        .await
    }

    pub async fn request_download(
        &self,
        uid: &str,
        link: &str,
        name: &str,
    ) -> Result<std::result::Result<Job, String>> {
        let now = at(&now_rfc3339());
        self.with(async |c| {
            let tx = c.transaction().await?;
            let done: Option<String> = tx
                .query_opt(
                    "SELECT path FROM downloads WHERE export_uid = $1 AND status = 'downloaded'",
                    &[&uid],
                )
                .await?
                .and_then(|r| r.get(0));
            if let Some(path) = done
                && (path.contains("://") || std::path::Path::new(&path).exists())
            {
                return Ok(Err(path));
            }
            // a name already given (to a partial file, say) is kept
            let job = tx
                .query_one(
                    "INSERT INTO downloads (export_uid, url, file_name, status, created_at, updated_at)
                     VALUES ($1, $2, $3, 'pending', $4, $4)
                     ON CONFLICT (export_uid) DO UPDATE SET status = 'pending', attempts = 0, error = NULL,
                       url = excluded.url, updated_at = excluded.updated_at,
                       file_name = COALESCE(downloads.file_name, excluded.file_name)
                     RETURNING export_uid, url, file_name, attempts",
                    &[&uid, &link, &name, &now],
                )
                .await?;
            tx.commit().await?;
            Ok(Ok(job_of(&job)))
        })
        .await
    }

    // ---- events and deliveries ----

    pub async fn events_after(&self, after: i64, glob: &str, limit: u32) -> Result<Vec<Event>> {
        self.with(async |c| {
            let rows = c
                .query(EVENTS_AFTER, &[&after, &like(glob), &(limit as i64)])
                .await?;
            Ok(rows.iter().map(event).collect())
        })
        .await
    }

    pub async fn seq_of(&self, since: &str) -> Result<Option<i64>> {
        self.with(async |c| seq_of(c, since).await).await
    }

    pub async fn sink_place(&self, sink: &str) -> Result<Place> {
        self.with(async |c| {
            let row = c
                .query_opt(
                    "SELECT cursor, disabled_reason IS NOT NULL, rewinds FROM sink_state WHERE sink = $1",
                    &[&sink],
                )
                .await?;
            Ok(row.map_or(
                Place {
                    cursor: 0,
                    disabled: false,
                    rewinds: 0,
                },
                |r| Place {
                    cursor: r.get(0),
                    disabled: r.get(1),
                    rewinds: r.get(2),
                },
            ))
        })
        .await
    }

    pub async fn advance_sink(&self, sink: &str, pos: i64, rewinds: i64) -> Result<()> {
        self.with(async |c| c.execute(ADVANCE, &[&sink, &pos, &rewinds]).await.map(drop))
            .await
    }

    pub async fn register_sinks(&self, sinks: &[(String, bool, Option<String>)]) -> Result<()> {
        self.with(async |c| {
            let tx = c.transaction().await?;
            tx.execute("LOCK TABLE sink_state IN EXCLUSIVE MODE", &[])
                .await?;
            for (name, from_start, legacy) in sinks {
                let known = tx
                    .query_opt("SELECT 1 FROM sink_state WHERE sink = $1", &[name])
                    .await?
                    .is_some();
                if known {
                    continue;
                }
                if let Some(old) = legacy {
                    let moved = tx
                        .execute(
                            "UPDATE sink_state SET sink = $2 WHERE sink = $1",
                            &[old, name],
                        )
                        .await?;
                    if moved == 1 {
                        tx.execute(
                            "UPDATE deliveries SET sink = $2 WHERE sink = $1",
                            &[old, name],
                        )
                        .await?;
                        tracing::info!(sink = %name, "kept the place of sink {old}");
                        continue;
                    }
                }
                tx.execute(
                    "INSERT INTO sink_state (sink, cursor)
                     SELECT $1, CASE WHEN $2 THEN 0 ELSE COALESCE(max(seq), 0) END FROM events",
                    &[name, from_start],
                )
                .await?;
            }
            tx.commit().await
        })
        .await
    }

    pub async fn delivery_state(
        &self,
        sink: &str,
        seq: i64,
    ) -> Result<(u32, Option<SystemTime>, bool)> {
        self.with(async |c| {
            let row = c
                .query_opt(
                    "SELECT attempts, next_attempt_at, status FROM deliveries WHERE sink = $1 AND event_seq = $2",
                    &[&sink, &seq],
                )
                .await?;
            Ok(row.map_or((0, None, false), |r| {
                (
                    r.get::<_, i64>(0) as u32,
                    r.get(1),
                    r.get::<_, String>(2) != "pending",
                )
            }))
        })
        .await
    }

    pub async fn record_delivery(&self, sink: &str, o: Outcome) -> Result<()> {
        self.with(async |c| {
            let tx = c.transaction().await?;
            tx.execute(
                "INSERT INTO deliveries (event_seq, sink, status, attempts, next_attempt_at, last_error, delivered_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (sink, event_seq) DO UPDATE SET status = excluded.status, attempts = excluded.attempts,
                   next_attempt_at = excluded.next_attempt_at, last_error = excluded.last_error,
                   delivered_at = excluded.delivered_at",
                &[
                    &o.seq,
                    &sink,
                    &o.status,
                    &(o.attempts as i64),
                    &o.next_at.as_deref().and_then(at),
                    &o.error,
                    &o.delivered_at.as_deref().and_then(at),
                ],
            )
            .await?;
            if let Some((pos, rewinds)) = o.past {
                tx.execute(ADVANCE, &[&sink, &pos, &rewinds]).await?;
            }
            tx.commit().await
        })
        .await
    }

    pub async fn disable_sink(&self, sink: &str, pos: i64, reason: &str) -> Result<()> {
        self.with(async |c| {
            c.execute(
                "INSERT INTO sink_state (sink, cursor, disabled_reason) VALUES ($1, $2, $3)
                 ON CONFLICT (sink) DO UPDATE SET disabled_reason = excluded.disabled_reason",
                &[&sink, &pos, &reason],
            )
            .await
            .map(drop)
        })
        .await
    }

    pub async fn redeliver(&self, sink: Option<&str>, since_seq: i64) -> Result<usize> {
        self.with(async |c| {
            let tx = c.transaction().await?;
            tx.execute("LOCK TABLE sink_state IN EXCLUSIVE MODE", &[])
                .await?;
            let firsts = tx
                .query(
                    "SELECT sink, min(event_seq) FROM deliveries WHERE status = 'failed' AND event_seq > $1
                       AND ($2::text IS NULL OR sink = $2) GROUP BY sink",
                    &[&since_seq, &sink],
                )
                .await?;
            let n = tx
                .execute(
                    "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = NULL
                     WHERE status = 'failed' AND event_seq > $1 AND ($2::text IS NULL OR sink = $2)",
                    &[&since_seq, &sink],
                )
                .await?;
            for r in &firsts {
                let (s, first): (String, i64) = (r.get(0), r.get(1));
                tx.execute(
                    "UPDATE sink_state SET cursor = LEAST(cursor, $2), rewinds = rewinds + 1 WHERE sink = $1",
                    &[&s, &(first - 1)],
                )
                .await?;
            }
            tx.execute(
                "UPDATE sink_state SET disabled_reason = NULL
                 WHERE disabled_reason IS NOT NULL AND ($1::text IS NULL OR sink = $1)",
                &[&sink],
            )
            .await?;
            tx.commit().await?;
            Ok(n as usize)
        })
        .await
    }

    // ---- retention and reports ----

    /// Up to [`CHUNK`] settled events created before `before`, with their
    /// deliveries (see [`crate::store::sqlite::retention::prune_events`]).
    pub async fn prune_events(&self, before: &str, sinks: &[String]) -> Result<usize> {
        let (before, chunk) = (at(before), CHUNK as i64);
        self.with(async |c| {
            let tx = c.transaction().await?;
            // a configured sink without a row has settled nothing yet
            let settled: i64 = match sinks.is_empty() {
                true => i64::MAX,
                false => tx
                    .query_one(
                        "SELECT CASE WHEN count(*) < $2 THEN 0 ELSE
                           COALESCE(min(CASE WHEN disabled_reason IS NULL THEN cursor END), 9223372036854775807) END
                         FROM sink_state WHERE sink = ANY($1)",
                        &[&sinks, &(sinks.len() as i64)],
                    )
                    .await?
                    .get(0),
            };
            let chosen =
                "SELECT seq FROM events WHERE seq <= $1 AND created_at < $2 ORDER BY seq LIMIT $3";
            let args: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&settled, &before, &chunk];
            tx.execute(&format!("DELETE FROM deliveries WHERE event_seq IN ({chosen})"), &args)
                .await?;
            let n = tx
                .execute(&format!("DELETE FROM events WHERE seq IN ({chosen})"), &args)
                .await?;
            tx.commit().await?;
            Ok(n as usize)
        })
        .await
    }

    /// Up to [`CHUNK`] rows of each table tombstoned before `before` (and the
    /// membership of the slices among them).
    pub async fn prune_tombstones(&self, before: &str) -> Result<usize> {
        let (before, chunk) = (at(before), CHUNK as i64);
        self.with(async |c| {
            let tx = c.transaction().await?;
            let mut n = 0;
            for res in Resource::ALL {
                let t = res.table();
                let chosen = format!(
                    "SELECT id FROM {t} WHERE deleted_at IS NOT NULL AND deleted_at < $1 LIMIT $2"
                );
                if res == Resource::Slices {
                    tx.execute(
                        &format!("DELETE FROM slice_items WHERE slice_uid IN (SELECT uid FROM slices WHERE id IN ({chosen}))"),
                        &[&before, &chunk],
                    )
                    .await?;
                }
                n += tx
                    .execute(&format!("DELETE FROM {t} WHERE id IN ({chosen})"), &[&before, &chunk])
                    .await?;
            }
            tx.commit().await?;
            Ok(n as usize)
        })
        .await
    }

    pub async fn status(&self) -> Result<Value> {
        let shown = self.target.display();
        self.with(async |c| status(c, shown).await).await
    }

    pub async fn metrics(&self) -> Result<Snapshot> {
        self.with(async |c| metrics(c).await).await
    }
}

async fn attempt(
    tx: &Transaction<'_>,
    scope: &str,
    res: Resource,
    now: &str,
) -> std::result::Result<(), tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO sync_state (scope, resource, last_attempt_at) VALUES ($1, $2, $3)
         ON CONFLICT (scope) DO UPDATE SET last_attempt_at = excluded.last_attempt_at",
        &[&scope, &res.table(), &at(now)],
    )
    .await
    .map(drop)
}

pub(super) const SUCCESS: &str =
    "UPDATE sync_state SET baseline_done = true, last_success_at = $2, last_error = NULL,
     records = $3, skipped = $4 WHERE scope = ANY($1)";

const FILTER_FAILED: &str =
    "UPDATE sync_state SET filter_failed_at = $2, filter_error = $3 WHERE scope = $1";

const ADVANCE: &str = "INSERT INTO sink_state (sink, cursor) VALUES ($1, $2)
     ON CONFLICT (sink) DO UPDATE SET cursor = GREATEST(sink_state.cursor, excluded.cursor)
     WHERE sink_state.rewinds = $3";

fn job_of(r: &tokio_postgres::Row) -> Job {
    Job {
        export_uid: r.get(0),
        url: r.get(1),
        file_name: r.get(2),
        attempts: r.get::<_, i64>(3) as u32,
    }
}

/// `export.downloaded` / `export.download_failed`, with the export as stored.
async fn download_event(
    tx: &Transaction<'_>,
    channel: &str,
    uid: &str,
    action: &str,
    detail: Value,
    now: &str,
) -> std::result::Result<(), tokio_postgres::Error> {
    let row = tx
        .query_opt("SELECT raw, status FROM exports WHERE uid = $1", &[&uid])
        .await?;
    let (object, status): (Value, Option<String>) =
        row.map_or((Value::Null, None), |r| (r.get(0), r.get(1)));
    let ev = NewEvent::download(uid, action, status.as_deref(), &object, detail);
    append_event(tx, channel, &ev, now).await
}

/// What `status` reports, from any connection to the schema.
pub(super) async fn status(
    c: &tokio_postgres::Client,
    database: String,
) -> std::result::Result<Value, tokio_postgres::Error> {
    let mut collections = Vec::new();
    for res in Resource::ALL {
        let t = res.table();
        let by_status = c
            .query(
                &format!("SELECT COALESCE(status, '(none)'), count(*) FROM {t} WHERE deleted_at IS NULL GROUP BY 1 ORDER BY 1"),
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let counts = c
            .query_one(
                &format!("SELECT count(*) FILTER (WHERE deleted_at IS NULL), count(*) FILTER (WHERE deleted_at IS NOT NULL) FROM {t}"),
                &[],
            )
            .await?;
        let s = c
            .query_one(
                "SELECT count(*), max(last_success_at), min(last_success_at), count(last_error),
                        COALESCE(sum(skipped), 0)::bigint, max(full_at)
                 FROM sync_state WHERE resource = $1",
                &[&t],
            )
            .await?;
        let errors = c
            .query(
                "SELECT scope, last_error FROM sync_state WHERE resource = $1 AND last_error IS NOT NULL ORDER BY scope LIMIT 10",
                &[&t],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut col = Collection {
            present: counts.get(0),
            deleted: counts.get(1),
            by_status,
            scopes: s.get(0),
            last_success: text(s.get(1)),
            oldest_success: text(s.get(2)),
            failing: s.get(3),
            skipped: s.get(4),
            errors,
            ..Collection::default()
        };
        if res.jsonapi().is_some() {
            col.last_full = text(s.get(5));
            col.refused = c
                .query(
                    "SELECT scope, filter_failed_at, filter_error FROM sync_state
                     WHERE resource = $1 AND filter_failed_at IS NOT NULL ORDER BY scope LIMIT 10",
                    &[&t],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), text(r.get(1)).unwrap_or_default(), r.get(2)))
                .collect();
        }
        collections.push((res, col));
    }
    let count = async |sql: &str| -> std::result::Result<i64, tokio_postgres::Error> {
        Ok(c.query_one(sql, &[]).await?.get(0))
    };
    let mut downloads = [0; 5];
    for (n, states) in downloads.iter_mut().zip(DOWNLOAD_STATES) {
        *n = count(&format!(
            "SELECT count(*) FROM downloads WHERE status IN ('{states}')"
        ))
        .await?;
    }
    let paused: Option<String> = c
        .query_opt(
            "SELECT value FROM service_state WHERE key = 'api_paused_until'",
            &[],
        )
        .await?
        .map(|r| r.get(0));
    let now = now_rfc3339();
    let disabled_sinks = c
        .query(
            "SELECT sink, disabled_reason FROM sink_state WHERE disabled_reason IS NOT NULL",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(crate::store::report::shape(Tally {
        database,
        api_paused_until: paused.filter(|t| *t > now),
        bytes: size(c).await?,
        free: 0,
        wal: 0,
        collections,
        events: count("SELECT count(*) FROM events").await?,
        last_event: c.query_one("SELECT max(id) FROM events", &[]).await?.get(0),
        downloads,
        deliveries_pending: count("SELECT count(*) FROM deliveries WHERE status = 'pending'")
            .await?,
        deliveries_failed: count("SELECT count(*) FROM deliveries WHERE status = 'failed'").await?,
        disabled_sinks,
    }))
}

/// The schema's tables and indexes, in bytes.
async fn size(c: &tokio_postgres::Client) -> std::result::Result<i64, tokio_postgres::Error> {
    Ok(c.query_one(
        "SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = current_schema() AND c.relkind = 'r'",
        &[],
    )
    .await?
    .get(0))
}

async fn metrics(
    c: &tokio_postgres::Client,
) -> std::result::Result<Snapshot, tokio_postgres::Error> {
    async fn pairs<T: for<'a> tokio_postgres::types::FromSql<'a>>(
        c: &tokio_postgres::Client,
        sql: &str,
    ) -> std::result::Result<Vec<(String, T)>, tokio_postgres::Error> {
        Ok(c.query(sql, &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }
    Ok(Snapshot {
        last_success: pairs(
            c,
            "SELECT resource, extract(epoch FROM max(last_success_at))::float8 FROM sync_state
             WHERE last_success_at IS NOT NULL GROUP BY resource",
        )
        .await?,
        delivered: pairs(c, "SELECT sink, count(*) FROM deliveries WHERE status = 'delivered' GROUP BY sink").await?,
        failed: pairs(c, "SELECT sink, count(*) FROM deliveries WHERE status = 'failed' GROUP BY sink").await?,
        pending: pairs(
            c,
            "SELECT s.sink, (SELECT count(*) FROM events e WHERE e.seq > s.cursor) FROM sink_state s",
        )
        .await?,
        downloads: pairs(c, "SELECT status, count(*) FROM downloads GROUP BY status").await?,
        database: vec![("used".into(), size(c).await?), ("free".into(), 0)],
    })
}
