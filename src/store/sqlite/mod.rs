//! SQLite, the embedded default. Here: opening (WAL, busy timeout) and migrations from `migrations/`. Beside it: the thread that owns
//! the writer connection and runs closures on it in turn (`writer`), the WAL's
//! growth and the checkpointer (`wal`), reads beside the writer (`read`), and
//! one file of SQL per part of the mirror (records, events, outbox, …).
//!
//! A listing's pages may share one transaction ([`Batch`]), with the pages of the
//! other listings running side by side: committed after [`BATCH_WINDOW`], before
//! any other work runs on the connection, or when a listing asks. At a million rows a commit rewrites most of the random-uid index,
//! so fewer, larger commits are what makes a first sync fast. A page is never
//! half-applied: when work in a batch fails, the batch's whole transaction is rolled
//! back (the next sync finds the same differences again and writes them then), and
//! a page's events always commit with its rows.
//! A second thread checkpoints the WAL after each commit, on the other core.

pub mod downloads;
pub mod events;
pub mod outbox;
pub(super) mod read;
pub mod records;
pub mod replica;
pub mod report;
pub mod retention;
pub mod state;
pub(super) mod wal;
pub(super) mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, LazyLock, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use include_dir::{Dir, include_dir};
use rusqlite::Connection;
use rusqlite_migration::Migrations;

pub use read::open_read_only;

use super::{Backend, Store};
use read::MAX_READERS;
use wal::{
    MAX_WAL_BYTES, WAL_CAP_BYTES, WalCap, WalWait, checkpoint_loop, millis_now, note_wal_frames,
};
use writer::{Job, Lent, serve};

static MIGRATIONS_DIR: Dir = include_dir!("$CARGO_MANIFEST_DIR/migrations/sqlite");
pub(crate) static MIGRATIONS: LazyLock<Migrations<'static>> = LazyLock::new(|| {
    Migrations::from_directory(&MIGRATIONS_DIR).expect("valid migrations/sqlite/")
});

/// How long a batch's transaction stays open at most: the lag readers see.
pub const BATCH_WINDOW: Duration = Duration::from_secs(1);

/// How long the writer waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the WAL file is cut back to after it starts over, outside a listing.
const JOURNAL_SIZE_LIMIT: i64 = 64 << 20;

/// The SQLite store's own parts: its writer thread's queue, its readers, its
/// checkpointer and its WAL state (each store its own: none is process-wide).
pub(super) struct Inner {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    path: PathBuf,
    /// Read-only connections for [`Store::read`], kept for the next read.
    readers: Mutex<Vec<Connection>>,
    /// Reads under way at once, at most [`MAX_READERS`].
    reading: tokio::sync::Semaphore,
    writer: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
    waiting: Arc<WalWait>,
}

impl Store {
    /// The WAL's size while the writer waits out `store.max_wal` for a reader
    /// (shown by `/healthz`); 0 when it is not waiting.
    pub fn wal_waiting(&self) -> u64 {
        match &self.backend {
            Backend::Sqlite(inner) => inner.waiting.bytes.load(Ordering::Relaxed),
            Backend::Postgres(_) => 0,
        }
    }

    /// Whether the writer is waiting out `store.max_wal` and was seen alive
    /// doing so within `within`: busy, not hung (SPEC §7, the watchdog).
    pub fn waiting_alive(&self, within: Duration) -> bool {
        if self.pg().is_some() {
            return false;
        }
        let beat = self.inner().waiting.beat.load(Ordering::Relaxed);
        self.wal_waiting() > 0 && Duration::from_millis(millis_now().saturating_sub(beat)) <= within
    }

    /// The SQLite file (`/metrics` reads it on a connection of its own).
    pub(super) fn sqlite_path(&self) -> PathBuf {
        self.inner().path.clone()
    }

    /// SQLite's internals; every operation asked [`Store::pg`] first.
    fn inner(&self) -> &Arc<Inner> {
        match &self.backend {
            Backend::Sqlite(inner) => inner,
            Backend::Postgres(_) => panic!("a SQLite operation on the PostgreSQL mirror"),
        }
    }

    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        Store::open_with(path, WAL_CAP_BYTES, MAX_WAL_BYTES)
    }

    /// Opens with `store.max_wal` (see [`WalCap`]).
    pub fn open_with_max_wal(path: &Path, max_wal_bytes: u64) -> anyhow::Result<Store> {
        Store::open_with(path, WAL_CAP_BYTES, max_wal_bytes)
    }

    fn open_with(path: &Path, wal_cap_bytes: u64, max_wal_bytes: u64) -> anyhow::Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the directory of {}", path.display()))?;
        }
        let mut conn = open_connection(path)?;
        MIGRATIONS
            .to_latest(&mut conn)
            .with_context(|| format!("migrating {}", path.display()))?;
        // the writer wakes the checkpointer after each commit; it ends with the writer
        let (committed, wake) = mpsc::sync_channel(1);
        let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        let waiting = Arc::new(WalWait::default());
        let wal = WalCap {
            cap: wal_cap_bytes / page_size.max(512) as u64,
            max: max_wal_bytes / page_size.max(512) as u64,
            page_size: page_size.max(512) as u64,
            copied: Arc::new(AtomicU64::new(0)),
            draining: false,
            last: 0,
            before_last: 0,
            waiting: waiting.clone(),
        };
        let copied = wal.copied.clone();
        let checkpointer = Connection::open(path)
            .map_err(anyhow::Error::from)
            .and_then(|c| {
                // never waits: a busy checkpoint is simply tried again later
                c.busy_timeout(Duration::ZERO)?;
                Ok(std::thread::Builder::new()
                    .name("checkpoint".into())
                    .spawn(move || checkpoint_loop(c, wake, copied))?)
            })
            .map_err(|e| tracing::warn!("no background checkpoints: {e}"))
            .ok();
        if checkpointer.is_some() {
            // the checkpointer's job now, but for the writer's drain past the cap
            // (`WalCap`); replaces the writer's own checkpoints at `wal_autocheckpoint`
            conn.wal_hook(Some(note_wal_frames));
        }
        let (tx, rx) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("store".into())
            .spawn(move || serve(conn, rx, committed, wal))
            .context("starting the store thread")?;
        Ok(Store {
            backend: Backend::Sqlite(Arc::new(Inner {
                jobs: Mutex::new(Some(tx)),
                path: path.to_path_buf(),
                readers: Mutex::new(Vec::new()),
                reading: tokio::sync::Semaphore::new(MAX_READERS),
                writer: Mutex::new(Some(writer)),
                checkpointer: Mutex::new(checkpointer),
                waiting,
            })),
        })
    }

    /// Opens a database that must exist already (status, events): a missing one is an
    /// error, not a new empty mirror.
    pub fn open_existing(path: &Path) -> anyhow::Result<Store> {
        if !path.exists() {
            anyhow::bail!(
                "no mirror database at {} (run `avala-mirror sync` first)",
                path.display()
            );
        }
        Store::open(path)
    }

    /// The SQLite file (tests; a PostgreSQL mirror has none).
    pub fn path(&self) -> &Path {
        &self.inner().path
    }

    fn send(&self, job: Job) {
        assert!(self.try_send(job), "store thread alive");
    }

    fn try_send(&self, job: Job) -> bool {
        let jobs = self.inner().jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.as_ref().is_some_and(|j| j.send(job).is_ok())
    }

    /// Runs `f` with the connection on the store thread.
    pub async fn call<F, R>(&self, f: F) -> R
    where
        F: FnOnce(&mut Connection) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Job::Alone(Box::new(move |c, _| {
            let _ = tx.send(f(c));
            true
        })));
        rx.await.expect("store task panicked")
    }

    /// Runs `f` with the connection on this thread (tests, short reads): the store
    /// thread lends its connection and waits for it back.
    pub fn with<R>(&self, f: impl FnOnce(&mut Connection) -> R) -> R {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Job::Lend(tx));
        let (conn, back) = rx.recv().expect("store thread alive");
        let mut lent = Lent(Some(conn), back);
        f(lent.0.as_mut().expect("lent"))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // the writer commits an open batch once its queue is closed
        drop(self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take());
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = writer
            && w.thread().id() != std::thread::current().id()
        {
            let _ = w.join();
        }
        let checkpointer = self
            .checkpointer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(handle) = checkpointer {
            let _ = handle.join();
        }
    }
}

fn open_connection(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Large pages: fewer WAL frames (two writes each) and B-tree splits for rows
    // of a few hundred bytes. A first sync's writer used ~10 % less CPU than with
    // 8 KiB; 32 KiB measured the same as 16 KiB. (Only a new database takes it.)
    conn.pragma_update(None, "page_size", 16_384)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // 40 MiB of page cache holds much of the uid index of a million rows. 64 MiB
    // made a first sync ~10 % faster, but with ten datasets listed side by side
    // it took the peak RSS to 102-104 MiB (bench, `--datasets 10`), over 100;
    // 48 MiB (10 % faster than 40 on a v1 first sync) left a million JSON:API
    // entries and 200,000 comments at 100-102 MiB (`jsonapi_bench`), 40 at 89.
    conn.pragma_update(None, "cache_size", -40_960)?;
    // Without the background checkpointer: checkpoints at 128 MiB of WAL, so an
    // index page rewritten by many commits of a large first sync is copied back
    // once, not once per 32 MiB.
    conn.pragma_update(None, "wal_autocheckpoint", 8192)?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn migrations_are_valid() {
        super::MIGRATIONS.validate().unwrap();
    }

    /// A store with a scratch table, and a second connection reading like another process.
    fn scratch() -> (tempfile::TempDir, Store, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let store = Store::open(&path).unwrap();
        store.with(|c| c.execute_batch("CREATE TABLE t (x INTEGER)").unwrap());
        let reader = Connection::open(&path).unwrap();
        (dir, store, reader)
    }

    fn rows(reader: &Connection) -> i64 {
        reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    fn insert(c: &mut Connection) -> rusqlite::Result<()> {
        c.execute("INSERT INTO t VALUES (1)", []).map(drop)
    }

    /// Tables where [`orphan`] succeeds but its transaction's COMMIT fails (a
    /// deferred foreign key), as a full disk would make a commit fail.
    fn fails_at_commit(store: &Store) {
        store.with(|c| {
            c.execute_batch(
                "CREATE TABLE parent (id INTEGER PRIMARY KEY);
                 CREATE TABLE child (p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);",
            )
            .unwrap()
        });
    }

    fn orphan(c: &mut Connection) -> rusqlite::Result<()> {
        c.execute("INSERT INTO child VALUES (7)", []).map(drop)
    }

    #[tokio::test]
    async fn a_batch_is_seen_by_readers_once_committed() {
        let (_dir, store, reader) = scratch();
        let batch = store.batch();
        batch.call(insert).await.unwrap();
        batch.call(insert).await.unwrap();
        assert_eq!(rows(&reader), 0, "open batch is not visible yet");
        batch.commit().await.unwrap();
        assert_eq!(rows(&reader), 2);
    }

    #[tokio::test]
    async fn other_work_commits_an_open_batch_first() {
        let (_dir, store, reader) = scratch();
        let batch = store.batch();
        batch.call(insert).await.unwrap();
        let n: i64 = store
            .call(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(rows(&reader), 1, "committed before the other job ran");
    }

    #[tokio::test]
    async fn a_read_leaves_the_open_batch_alone() {
        let (_dir, store, reader) = scratch();
        let batch = store.batch();
        batch.call(insert).await.unwrap();
        let count =
            |c: &Connection| c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0));
        assert_eq!(
            store.read(count).await.unwrap(),
            0,
            "a read sees what is committed"
        );
        assert_eq!(rows(&reader), 0, "and did not commit the batch early");
        batch.call(insert).await.unwrap();
        batch.commit().await.unwrap();
        assert_eq!(store.read(count).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn batches_side_by_side_share_one_transaction() {
        let (_dir, store, reader) = scratch();
        let (first, second) = (store.batch(), store.batch());
        for _ in 0..3 {
            first.call(insert).await.unwrap();
            second.call(insert).await.unwrap();
        }
        assert_eq!(
            rows(&reader),
            0,
            "interleaved work did not commit each time"
        );
        second.commit().await.unwrap();
        assert_eq!(rows(&reader), 6);
        first.commit().await.unwrap();
    }

    #[tokio::test]
    async fn a_failure_in_one_of_two_interleaved_batches_is_reported_to_both() {
        let (_dir, store, reader) = scratch();
        let (first, second) = (store.batch(), store.batch());
        first.call(insert).await.unwrap();
        second.call(insert).await.unwrap();
        let missing =
            |c: &mut Connection| c.execute("INSERT INTO missing VALUES (1)", []).map(drop);
        second.call(missing).await.unwrap_err();
        // the first batch's page went with the rollback: it must not count as written
        let err = first.commit().await.unwrap_err();
        assert!(err.to_string().contains("rolled back"), "{err}");
        assert!(
            second.commit().await.is_ok(),
            "the failing batch saw its own error"
        );
        assert_eq!(rows(&reader), 0);

        // a failed commit (a deferred foreign key: at COMMIT, as a full disk would)
        // leaves both unfinished, and a third failure does not hide the first
        fails_at_commit(&store);
        let third = store.batch();
        first.call(insert).await.unwrap();
        second.call(orphan).await.unwrap();
        let err = second.commit().await.unwrap_err();
        assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
        third.call(insert).await.unwrap();
        third.call(missing).await.unwrap_err();
        let err = first.commit().await.unwrap_err();
        assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
        third.commit().await.unwrap();
        assert_eq!(rows(&reader), 0);
    }

    #[tokio::test]
    async fn failed_work_rolls_back_the_whole_batch() {
        let (_dir, store, reader) = scratch();
        let batch = store.batch();
        batch.call(insert).await.unwrap();
        let err = batch
            .call(|c| {
                insert(c)?;
                c.execute("INSERT INTO missing VALUES (1)", []).map(drop)
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        batch.commit().await.unwrap();
        assert_eq!(rows(&reader), 0, "no part of the batch is kept");
        // the batch goes on in a new transaction
        batch.call(insert).await.unwrap();
        batch.commit().await.unwrap();
        assert_eq!(rows(&reader), 1);
    }

    #[tokio::test]
    async fn a_failed_commit_rolls_back_and_is_reported_to_the_batch() {
        let (_dir, store, reader) = scratch();
        // a deferred foreign key fails at COMMIT, not at the insert
        fails_at_commit(&store);
        let batch = store.batch();
        batch.call(insert).await.unwrap();
        batch.call(orphan).await.unwrap();
        let err = batch.commit().await.unwrap_err();
        assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
        assert_eq!(rows(&reader), 0, "the failed commit kept nothing");

        // committed by other work: the error waits for the batch's next job
        batch.call(orphan).await.unwrap();
        store.call(|_| ()).await;
        let err = batch.call(insert).await.unwrap_err();
        assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
        batch.call(insert).await.unwrap();
        batch.commit().await.unwrap();
        assert_eq!(rows(&reader), 1, "the batch goes on after the error");
    }

    #[tokio::test]
    async fn a_batch_commits_when_dropped_or_after_its_window() {
        let (_dir, store, reader) = scratch();
        let batch = store.batch();
        batch.call(insert).await.unwrap();
        drop(batch);
        store.with(|_| ()); // after the commit the drop queued
        assert_eq!(rows(&reader), 1);

        let batch = store.batch();
        batch.call(insert).await.unwrap();
        let deadline = Instant::now() + BATCH_WINDOW * 5;
        while rows(&reader) < 2 {
            assert!(Instant::now() < deadline, "not committed after its window");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[tokio::test]
    async fn past_max_wal_writes_wait_for_a_reader_and_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let store = Store::open_with(&path, WAL_CAP_BYTES, 2 << 20).unwrap();
        store.with(|c| c.execute_batch("CREATE TABLE b (x BLOB)").unwrap());
        // a reader holding a transaction open, as a person's query might
        let reader = Connection::open(&path).unwrap();
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM b;")
            .unwrap();
        let wal_path = dir.path().join("m.db-wal");
        let wal = move || std::fs::metadata(&wal_path).map(|m| m.len()).unwrap_or(0);
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..100 {
                    store
                        .call(|c| c.execute("INSERT INTO b VALUES (randomblob(100000))", []))
                        .await
                        .unwrap();
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while store.wal_waiting() == 0 {
            assert!(Instant::now() < deadline, "the writer never waited");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let held = wal();
        assert!(
            held < 4 << 20,
            "the WAL grew to {held} bytes past a 2 MiB max_wal"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            wal(),
            held,
            "nothing more was written while the reader held on"
        );
        assert!(!writer.is_finished());
        reader.execute_batch("COMMIT").unwrap();
        writer.await.unwrap();
        assert_eq!(store.wal_waiting(), 0);
        let rows: i64 = reader
            .query_row("SELECT count(*) FROM b", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 100, "every write went in once the reader let go");
    }

    #[tokio::test]
    async fn a_long_listing_lets_the_wal_start_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        // a cap of 1 MiB; the listing writes 30 MiB at most 10 MiB/s
        let store = Store::open_with(&path, 1 << 20, MAX_WAL_BYTES).unwrap();
        store.with(|c| c.execute_batch("CREATE TABLE b (x BLOB)").unwrap());
        let wal_path = dir.path().join("m.db-wal");
        let wal = || std::fs::metadata(&wal_path).map(|m| m.len()).unwrap_or(0);
        let batch = store.batch();
        let mut largest = 0;
        for _ in 0..300 {
            batch
                .call(|c| {
                    c.execute_batch(
                        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 25)
                         INSERT INTO b SELECT randomblob(4000) FROM n",
                    )
                })
                .await
                .unwrap();
            largest = largest.max(wal());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        batch.commit().await.unwrap();
        let rows: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM b", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 300 * 25);
        // without the cap the checkpointer never catches up with the writer
        // between two commits, and the WAL grows to about 25 MiB
        assert!(largest < 20 << 20, "the WAL grew to {largest} bytes");
    }
}
