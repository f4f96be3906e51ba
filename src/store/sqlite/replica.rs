//! What `serve` reads (SPEC §11): live rows in the API's order, a page at a
//! time, on read-only connections of its own. `serve` runs beside a daemon (or
//! inside one) and never writes; the records come back as the JSON text the API
//! sent, never parsed here.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::open_read_only;
use super::read::writer_gone;

/// Reads at once; more wait their turn.
const READERS: usize = 4;

/// A live record: its position in its listing, its JSON, and for an export
/// whether its archive is on disk.
#[derive(Debug, Clone)]
pub struct Row {
    pub key: i64,
    pub raw: String,
    pub archived: bool,
}

/// A page-number listing of v1: every match, in order (the server pages them).
#[derive(Debug, Clone)]
pub enum Listed {
    /// Every dataset in the mirror (`GET /datasets/`, the SDK's workspace list).
    Workspace,
    Datasets {
        owner: String,
    },
    Slices {
        owner: String,
    },
    /// An owner's sequences, across datasets or in the named ones.
    Sequences {
        owner: String,
        slugs: Option<Vec<String>>,
    },
}

/// A cursor listing of v1 (`None` from [`Replica::after`]: the dataset or slice is
/// not in the mirror).
#[derive(Debug, Clone)]
pub enum Cursored {
    Items {
        owner: String,
        slug: String,
    },
    Sequences {
        owner: String,
        slug: String,
    },
    SliceItems {
        owner: String,
        slug: String,
    },
    /// Newest first.
    Exports,
}

/// One v1 record.
#[derive(Debug, Clone)]
pub enum One {
    Dataset {
        uid: String,
    },
    DatasetBySlug {
        owner: String,
        slug: String,
    },
    SliceItem {
        owner: String,
        slug: String,
        uid: String,
    },
    Item {
        owner: String,
        slug: String,
        uid: String,
    },
    Sequence {
        owner: String,
        slug: String,
        uid: String,
    },
    Slice {
        owner: String,
        slug: String,
    },
    Export {
        uid: String,
    },
}

/// A downloaded archive.
#[derive(Debug, Clone)]
pub struct Archive {
    pub path: PathBuf,
    pub sha256: String,
}

/// Read-only connections to the mirror at `path`, kept for the next read.
pub struct Replica {
    path: PathBuf,
    pool: Mutex<Vec<Pooled>>,
    turns: tokio::sync::Semaphore,
}

struct Pooled {
    conn: Connection,
    /// Opened `immutable` (no daemon had the file open): stale once one does.
    immutable: bool,
}

impl Replica {
    /// Checks that `path` is a mirror this build reads (see [`open_read_only`]).
    pub fn open(path: &Path) -> anyhow::Result<Replica> {
        let first = Pooled::open(path)?;
        Ok(Replica {
            path: path.to_path_buf(),
            pool: Mutex::new(vec![first]),
            turns: tokio::sync::Semaphore::new(READERS),
        })
    }

    /// Runs `f` on a pooled connection on a blocking thread. A connection that
    /// failed is dropped and `f` runs once more on a fresh one: the daemon may have
    /// started (an `immutable` open goes stale) or stopped (its `-shm` went away).
    async fn read<R: Send + 'static>(
        &self,
        f: impl Fn(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> anyhow::Result<R> {
        let _turn = self.turns.acquire().await.expect("never closed");
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let path = self.path.clone();
        let (out, conn) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let pooled = match pooled {
                Some(p) if !p.immutable || writer_gone(&path) => p,
                _ => Pooled::open(&path)?,
            };
            match f(&pooled.conn) {
                Ok(out) => Ok((out, pooled)),
                Err(_) => {
                    drop(pooled);
                    let fresh = Pooled::open(&path)?;
                    Ok((f(&fresh.conn)?, fresh))
                }
            }
        })
        .await
        .expect("replica read panicked")?;
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
        Ok(out)
    }

    /// Every live record of a page-number listing, in the API's order.
    pub async fn all(&self, l: Listed) -> anyhow::Result<Vec<Row>> {
        self.read(move |c| {
            let (table, owner, slugs) = match &l {
                Listed::Workspace => {
                    let sql = "SELECT rowid, raw, 0 FROM datasets WHERE deleted_at IS NULL ORDER BY rowid";
                    return c.prepare_cached(sql)?.query_map([], row)?.collect();
                }
                Listed::Datasets { owner } => ("datasets", owner, None),
                Listed::Slices { owner } => ("slices", owner, None),
                Listed::Sequences { owner, slugs } => (
                    "sequences",
                    owner,
                    Some(slugs.as_ref().map(|s| serde_json::to_string(s).expect("strings serialize"))),
                ),
            };
            let Some(slugs) = slugs else {
                let sql = format!(
                    "SELECT rowid, raw, 0 FROM {table} WHERE owner_name = ?1 AND deleted_at IS NULL ORDER BY rowid"
                );
                return c.prepare_cached(&sql)?.query_map([owner], row)?.collect();
            };
            c.prepare_cached(
                "SELECT s.rowid, s.raw, 0 FROM sequences s WHERE s.owner_name = ?1 AND s.deleted_at IS NULL
                   AND (?2 IS NULL OR s.dataset_slug IN (SELECT value FROM json_each(?2)))
                   AND EXISTS (SELECT 1 FROM datasets d WHERE d.owner_name = s.owner_name
                               AND d.slug = s.dataset_slug AND d.deleted_at IS NULL)
                 ORDER BY s.rowid",
            )?
            .query_map(params![owner, slugs], row)?
            .collect()
        })
        .await
    }

    /// Up to `limit` live records after the position `after`, and whether more
    /// follow; `None` when the listing's dataset or slice is not in the mirror.
    pub async fn after(
        &self,
        l: Cursored,
        after: Option<i64>,
        limit: usize,
    ) -> anyhow::Result<Option<(Vec<Row>, bool)>> {
        self.read(move |c| {
            let after = after.unwrap_or(0);
            let n = limit as i64 + 1;
            let mut rows: Vec<Row> = match &l {
                Cursored::Items { owner, slug } | Cursored::Sequences { owner, slug } => {
                    if !dataset_live(c, owner, slug)? {
                        return Ok(None);
                    }
                    let table = match l {
                        Cursored::Items { .. } => "items",
                        _ => "sequences",
                    };
                    let sql = format!(
                        "SELECT rowid, raw, 0 FROM {table} WHERE owner_name = ?1 AND dataset_slug = ?2
                         AND deleted_at IS NULL AND rowid > ?3 ORDER BY rowid LIMIT ?4"
                    );
                    let mut st = c.prepare_cached(&sql)?;
                    st.query_map(params![owner, slug, after, n], row)?
                        .collect::<rusqlite::Result<_>>()?
                }
                Cursored::SliceItems { owner, slug } => {
                    let Some(slice) = slice_uid(c, owner, slug)? else {
                        return Ok(None);
                    };
                    let mut st = c.prepare_cached(
                        "SELECT i.rowid, i.raw, 0 FROM slice_items s JOIN items i ON i.uid = s.item_uid
                         WHERE s.slice_uid = ?1 AND i.deleted_at IS NULL AND i.rowid > ?2
                         ORDER BY i.rowid LIMIT ?3",
                    )?;
                    st.query_map(params![slice, after, n], row)?
                        .collect::<rusqlite::Result<_>>()?
                }
                Cursored::Exports => {
                    // newest first; the position is the last export's rowid
                    let mut st = c.prepare_cached(&format!(
                        "SELECT e.rowid, e.raw, {ARCHIVED} FROM exports e
                         WHERE e.deleted_at IS NULL AND (?1 = 0 OR (coalesce(e.created_at, ''), e.rowid) <
                           (SELECT coalesce(created_at, ''), rowid FROM exports WHERE rowid = ?1))
                         ORDER BY coalesce(e.created_at, '') DESC, e.rowid DESC LIMIT ?2"
                    ))?;
                    st.query_map(params![after, n], row)?
                        .collect::<rusqlite::Result<_>>()?
                }
            };
            let more = rows.len() > limit;
            rows.truncate(limit);
            Ok(Some((rows, more)))
        })
        .await
    }

    /// One live v1 record.
    pub async fn one(&self, o: One) -> anyhow::Result<Option<Row>> {
        self.read(move |c| {
            let live = "deleted_at IS NULL";
            let s = |v: &String| v.clone();
            let (sql, args) = match &o {
                One::Dataset { uid } => (
                    format!("SELECT rowid, raw, 0 FROM datasets WHERE uid = ?1 AND {live}"),
                    vec![s(uid)],
                ),
                One::DatasetBySlug { owner, slug } => (
                    format!("SELECT rowid, raw, 0 FROM datasets WHERE owner_name = ?1 AND slug = ?2 AND {live}"),
                    vec![s(owner), s(slug)],
                ),
                One::SliceItem { owner, slug, uid } => {
                    let Some(slice) = slice_uid(c, owner, slug)? else {
                        return Ok(None);
                    };
                    (
                        "SELECT i.rowid, i.raw, 0 FROM slice_items s JOIN items i ON i.uid = s.item_uid
                         WHERE s.slice_uid = ?1 AND s.item_uid = ?2 AND i.deleted_at IS NULL"
                            .to_string(),
                        vec![slice, s(uid)],
                    )
                }
                One::Item { owner, slug, uid } | One::Sequence { owner, slug, uid } => {
                    if !dataset_live(c, owner, slug)? {
                        return Ok(None);
                    }
                    let table = match o {
                        One::Item { .. } => "items",
                        _ => "sequences",
                    };
                    (
                        format!(
                            "SELECT rowid, raw, 0 FROM {table} WHERE uid = ?1 AND owner_name = ?2
                             AND dataset_slug = ?3 AND {live}"
                        ),
                        vec![s(uid), s(owner), s(slug)],
                    )
                }
                One::Slice { owner, slug } => (
                    format!("SELECT rowid, raw, 0 FROM slices WHERE owner_name = ?1 AND slug = ?2 AND {live}"),
                    vec![s(owner), s(slug)],
                ),
                One::Export { uid } => (
                    format!("SELECT e.rowid, e.raw, {ARCHIVED} FROM exports e WHERE e.uid = ?1 AND e.{live}"),
                    vec![s(uid)],
                ),
            };
            c.query_row(&sql, rusqlite::params_from_iter(args), row)
                .optional()
        })
        .await
    }

    /// A page of a JSON:API collection (its table) and the count of all matches.
    pub async fn collection(
        &self,
        table: &'static str,
        list: crate::contract::jsonapi::List,
    ) -> anyhow::Result<(Vec<String>, u64)> {
        self.read(move |c| {
            let mut wheres = vec!["deleted_at IS NULL".to_string()];
            let mut args: Vec<String> = vec![];
            for (name, value) in &list.filters {
                let column = if name == "id" {
                    "uid"
                } else {
                    column_name(name)
                };
                args.push(value.clone());
                wheres.push(format!("{column} = ?{}", args.len()));
            }
            let order = if list.by_updated {
                "updated_at, rowid"
            } else {
                "rowid"
            };
            let filter = wheres.join(" AND ");
            let params = rusqlite::params_from_iter(args.iter());
            let Some(since) = list.since else {
                let count: i64 = c.query_row(
                    &format!("SELECT count(*) FROM {table} WHERE {filter}"),
                    rusqlite::params_from_iter(args.iter()),
                    |r| r.get(0),
                )?;
                let sql = format!(
                    "SELECT raw FROM {table} WHERE {filter} ORDER BY {order} LIMIT {} OFFSET {}",
                    list.size,
                    list.offset().min(i64::MAX as u64)
                );
                let page = c
                    .prepare_cached(&sql)?
                    .query_map(params, |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                return Ok((page, count as u64));
            };
            // a time compared as a time, whatever its textual form
            let mut st = c.prepare_cached(&format!(
                "SELECT rowid, updated_at FROM {table} WHERE {filter} ORDER BY {order}"
            ))?;
            let matches: Vec<i64> = st
                .query_map(params, |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?))
                })?
                .filter_map(|r| match r {
                    Ok((rowid, at)) => at
                        .as_deref()
                        .and_then(crate::time::instant)
                        .filter(|t| *t >= since)
                        .map(|_| Ok(rowid)),
                    Err(e) => Some(Err(e)),
                })
                .collect::<rusqlite::Result<_>>()?;
            let mut raw = c.prepare_cached(&format!("SELECT raw FROM {table} WHERE rowid = ?1"))?;
            let page = matches
                .iter()
                .skip(list.offset().min(usize::MAX as u64) as usize)
                .take(list.size as usize)
                .map(|rowid| raw.query_row([rowid], |r| r.get(0)))
                .collect::<rusqlite::Result<_>>()?;
            Ok((page, matches.len() as u64))
        })
        .await
    }

    /// One live record of a JSON:API collection.
    pub async fn resource(
        &self,
        table: &'static str,
        id: String,
    ) -> anyhow::Result<Option<String>> {
        self.read(move |c| {
            c.query_row(
                &format!("SELECT raw FROM {table} WHERE uid = ?1 AND deleted_at IS NULL"),
                [&id],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    /// A downloaded archive of a live export.
    pub async fn archive(&self, uid: String) -> anyhow::Result<Option<Archive>> {
        self.read(move |c| {
            c.query_row(
                &format!(
                    "SELECT d.path, d.sha256 FROM downloads d JOIN exports e ON e.uid = d.export_uid
                     WHERE d.export_uid = ?1 AND {ON_DISK} AND e.deleted_at IS NULL"
                ),
                [&uid],
                |r| {
                    Ok(Archive {
                        path: PathBuf::from(r.get::<_, String>(0)?),
                        sha256: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    })
                },
            )
            .optional()
        })
        .await
    }

    /// When the listings behind `scope` (a `sync_state` scope, or a prefix of
    /// scopes such as `items:owner`) last all completed: the oldest of their last
    /// successes, or `None` when one never did.
    pub async fn synced_at(&self, scope: String) -> anyhow::Result<Option<String>> {
        self.read(move |c| {
            let (never, oldest): (i64, Option<String>) = c.query_row(
                "SELECT count(*) FILTER (WHERE last_success_at IS NULL), min(last_success_at)
                 FROM sync_state WHERE scope = ?1
                   OR substr(scope, 1, length(?1) + 1) IN (?1 || ':', ?1 || '/')",
                [&scope],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(oldest.filter(|_| never == 0))
        })
        .await
    }
}

/// A [`Row`] from `(position, raw, archived)`.
fn row(r: &rusqlite::Row) -> rusqlite::Result<Row> {
    Ok(Row {
        key: r.get(0)?,
        raw: r.get(1)?,
        archived: r.get(2)?,
    })
}

/// A `downloads d` row whose archive is on local disk (not in object storage,
/// where `path` is a URL).
macro_rules! on_disk {
    () => {
        "d.status = 'downloaded' AND d.path IS NOT NULL AND d.path NOT LIKE '%://%'"
    };
}
const ON_DISK: &str = on_disk!();

/// Whether an export's archive is on local disk, as a column of an exports query.
const ARCHIVED: &str = concat!(
    "EXISTS (SELECT 1 FROM downloads d WHERE d.export_uid = e.uid AND ",
    on_disk!(),
    ")"
);

/// The column a documented JSON:API filter reads (the names are the reference's).
fn column_name(filter: &str) -> &'static str {
    match filter {
        "project_id" => "project_id",
        "dataset_id" => "dataset_id",
        "entry_id" => "entry_id",
        "note_feed_id" => "note_feed_id",
        _ => "uid",
    }
}

fn dataset_live(c: &Connection, owner: &str, slug: &str) -> rusqlite::Result<bool> {
    c.prepare_cached(
        "SELECT 1 FROM datasets WHERE owner_name = ?1 AND slug = ?2 AND deleted_at IS NULL",
    )?
    .exists(params![owner, slug])
}

fn slice_uid(c: &Connection, owner: &str, slug: &str) -> rusqlite::Result<Option<String>> {
    c.query_row(
        "SELECT uid FROM slices WHERE owner_name = ?1 AND slug = ?2 AND deleted_at IS NULL",
        params![owner, slug],
        |r| r.get(0),
    )
    .optional()
}

impl Pooled {
    fn open(path: &Path) -> anyhow::Result<Pooled> {
        // looked at first: a daemon starting meanwhile makes it stale, not missed
        let immutable = writer_gone(path);
        let conn = open_read_only(path)?;
        conn.pragma_update(None, "cache_size", -8192)?;
        Ok(Pooled { conn, immutable })
    }
}
