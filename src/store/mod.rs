//! SQLite and nothing else: open (WAL, busy timeout), migrations from `migrations/`,
//! and one thread that owns the writer connection and runs closures on it in turn.
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
pub mod lock;
pub mod outbox;
pub mod records;
pub mod report;
pub mod retention;
pub mod state;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, LazyLock, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use include_dir::{Dir, include_dir};
use rusqlite::Connection;
use rusqlite_migration::Migrations;

static MIGRATIONS_DIR: Dir = include_dir!("$CARGO_MANIFEST_DIR/migrations");
static MIGRATIONS: LazyLock<Migrations<'static>> =
    LazyLock::new(|| Migrations::from_directory(&MIGRATIONS_DIR).expect("valid migrations/"));

/// How long a batch's transaction stays open at most: the lag readers see.
pub const BATCH_WINDOW: Duration = Duration::from_secs(1);

/// The WAL size past which the writer drains the WAL so that it starts over (see
/// [`WalCap`]): it grows to this and about two seconds of writes.
const WAL_CAP_BYTES: u64 = 256 << 20;

/// Reads at once ([`Store::read`]), each on a read-only connection kept for the
/// next: the writer's 64 MiB page cache is shared by nobody, so every reader
/// costs its own cache and blocking thread.
const MAX_READERS: usize = 2;
/// The page cache of a read connection.
const READER_CACHE_KIB: i64 = 2048;

/// How long the writer waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// `store.max_wal` by default: past it, while a reader's open transaction keeps
/// the WAL from starting over, the writer waits ([`WalCap::wait_for_readers`]).
pub const MAX_WAL_BYTES: u64 = 1 << 30;

/// What the WAL file is cut back to after it starts over, outside a listing.
const JOURNAL_SIZE_LIMIT: i64 = 64 << 20;

/// A closure for the store thread; false when it failed (a batch is then rolled back).
type Work = Box<dyn FnOnce(&mut Connection, Option<rusqlite::Error>) -> bool + Send>;

enum Job {
    /// Runs on its own: an open batch is committed first.
    Alone(Work),
    /// Runs inside the shared transaction (begun if needed); gets the error of a
    /// failed commit or rollback of batch `key`'s earlier work instead of running.
    Batched(u64, Work),
    /// Hands the connection to a caller's thread until it sends it back.
    Lend(mpsc::SyncSender<(Connection, mpsc::SyncSender<Connection>)>),
    /// Commits batch `key` now, answering with the outcome.
    Commit(u64, tokio::sync::oneshot::Sender<rusqlite::Result<()>>),
}

/// The mirror database. Cloning shares the one writer thread.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
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

/// The writer's wait for a reader past `store.max_wal`, as others see it.
#[derive(Default)]
struct WalWait {
    /// The WAL's size in bytes while waiting; 0 when not.
    bytes: AtomicU64,
    /// When the waiting writer last looked (ms since 1970).
    beat: AtomicU64,
}

fn millis_now() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Store {
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
            inner: Arc::new(Inner {
                jobs: Mutex::new(Some(tx)),
                path: path.to_path_buf(),
                readers: Mutex::new(Vec::new()),
                reading: tokio::sync::Semaphore::new(MAX_READERS),
                writer: Mutex::new(Some(writer)),
                checkpointer: Mutex::new(checkpointer),
                waiting,
            }),
        })
    }

    /// The WAL's size while the writer waits out `store.max_wal` for a reader
    /// (shown by `/healthz`); 0 when it is not waiting.
    pub fn wal_waiting(&self) -> u64 {
        self.inner.waiting.bytes.load(Ordering::Relaxed)
    }

    /// Whether the writer is waiting out `store.max_wal` and was seen alive
    /// doing so within `within`: busy, not hung (SPEC §7, the watchdog).
    pub fn waiting_alive(&self, within: Duration) -> bool {
        let beat = self.inner.waiting.beat.load(Ordering::Relaxed);
        self.wal_waiting() > 0 && Duration::from_millis(millis_now().saturating_sub(beat)) <= within
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

    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

/// A read-only connection, for the commands that only read the mirror (`status`,
/// `events`, `exports list`): no migration, no write, and no file left behind.
/// A WAL database is read through the writer's `-wal` and `-shm` files when they
/// exist (a daemon has it open); when neither does, everything is in the
/// database file and it is opened `immutable`, since a plain read-only open would
/// create both files, owned by whoever ran the command, and a daemon running as
/// another user could then not open its own database.
pub fn open_read_only(path: &Path) -> anyhow::Result<Connection> {
    use rusqlite::OpenFlags;
    if !path.exists() {
        anyhow::bail!(
            "no mirror database at {} (run `avala-mirror sync` first, or name it with --db)",
            path.display()
        );
    }
    let beside = |suffix: &str| {
        let mut p = path.as_os_str().to_os_string();
        p.push(suffix);
        PathBuf::from(p).exists()
    };
    let writer_gone = !beside("-wal") && !beside("-shm");
    let abs = std::path::absolute(path)?;
    let mut uri = url::Url::from_file_path(&abs)
        .map_err(|()| anyhow::anyhow!("{} is not a file path", abs.display()))?;
    uri.set_query(Some(if writer_gone {
        "mode=ro&immutable=1"
    } else {
        "mode=ro"
    }));
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(uri.as_str(), flags)
        .with_context(|| format!("opening {} read-only", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .with_context(|| format!("reading {}", path.display()))?;
    let known = MIGRATIONS_DIR.dirs().count() as i64;
    if version == 0 {
        anyhow::bail!("{} is not an avala-mirror database", path.display());
    }
    if version != known {
        anyhow::bail!(
            "{} is at schema version {version} and this avala-mirror reads version {known}: {}",
            path.display(),
            if version < known {
                "run `avala-mirror sync` (or restart the daemon) once to upgrade it"
            } else {
                "use the avala-mirror that wrote it"
            }
        );
    }
    Ok(conn)
}

impl Store {
    fn send(&self, job: Job) {
        assert!(self.try_send(job), "store thread alive");
    }

    fn try_send(&self, job: Job) -> bool {
        let jobs = self.inner.jobs.lock().unwrap_or_else(|p| p.into_inner());
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

    /// Runs `f` on a read-only connection of its own, on a blocking thread: a read
    /// never ends the writer's open batch early (as a job on the writer's thread
    /// does), and sees what has been committed, up to a second behind the writer.
    pub async fn read<F, R>(&self, f: F) -> rusqlite::Result<R>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let _turn = self.inner.reading.acquire().await.expect("never closed");
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop();
            let conn = match pooled {
                Some(c) => c,
                None => {
                    let c = Connection::open_with_flags(
                        &inner.path,
                        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                    )?;
                    c.busy_timeout(Duration::from_secs(10))?;
                    // scans, mostly: a small cache, as each reader has its own
                    c.pragma_update(None, "cache_size", -READER_CACHE_KIB)?;
                    c
                }
            };
            let out = f(&conn);
            inner
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
            out
        })
        .await
        .expect("store read panicked")
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

    /// A new batch: work that may share one transaction (one listing's pages).
    pub fn batch(&self) -> Batch {
        static KEYS: AtomicU64 = AtomicU64::new(1);
        Batch {
            store: self.clone(),
            key: KEYS.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// Work sharing one transaction; see the module documentation.
pub struct Batch {
    store: Store,
    key: u64,
}

impl Batch {
    /// Runs `f` inside the batch's transaction. When `f` fails, the batch's whole
    /// transaction is rolled back (so `f` is never half-applied, and no savepoint
    /// journals every page it touches); an error of an earlier commit of this
    /// batch comes back instead of running `f`.
    pub async fn call<F, R>(&self, f: F) -> rusqlite::Result<R>
    where
        F: FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.store.send(Job::Batched(
            self.key,
            Box::new(move |c, failed| {
                let result = match failed {
                    Some(e) => Err(e),
                    None => f(c),
                };
                let ok = result.is_ok();
                let _ = tx.send(result);
                ok
            }),
        ));
        rx.await.expect("store task panicked")
    }

    /// Commits what the batch has written (or reports why an earlier commit failed).
    pub async fn commit(&self) -> rusqlite::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.store.send(Job::Commit(self.key, tx));
        rx.await.expect("store task panicked")
    }
}

impl Drop for Batch {
    /// Commits now rather than at the end of the window (a listing that stopped early).
    fn drop(&mut self) {
        let (tx, _) = tokio::sync::oneshot::channel();
        self.store.try_send(Job::Commit(self.key, tx));
    }
}

/// A lent connection, returned to the store thread when dropped (even by a panic).
struct Lent(Option<Connection>, mpsc::SyncSender<Connection>);

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            let _ = self.1.send(conn);
        }
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

/// The transaction the batches writing at the time share, open for up to
/// [`BATCH_WINDOW`]; `keys` are the batches with work in it.
struct Open {
    deadline: Instant,
    keys: Vec<u64>,
}

/// The store thread: runs jobs in order, keeping one transaction open across the
/// jobs of every batch (listings side by side) for up to [`BATCH_WINDOW`]. When
/// that transaction is rolled back, each batch with work in it is told, by its
/// next job or commit, so no listing counts rolled-back pages as written.
fn serve(
    mut conn: Connection,
    jobs: mpsc::Receiver<Job>,
    committed: mpsc::SyncSender<()>,
    mut wal: WalCap,
) {
    let mut open: Option<Open> = None;
    let mut failed: HashMap<u64, rusqlite::Error> = HashMap::new();
    loop {
        if open.is_none() {
            wal.after_job(&conn, &committed);
        }
        let job = match &open {
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
            Some(o) => {
                match jobs.recv_timeout(o.deadline.saturating_duration_since(Instant::now())) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => {
                        end_batch(&mut conn, &mut open, &mut failed);
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        end_batch(&mut conn, &mut open, &mut failed);
                        return;
                    }
                }
            }
        };
        match job {
            Job::Alone(work) => {
                end_batch(&mut conn, &mut open, &mut failed);
                work(&mut conn, None);
            }
            Job::Lend(to) => {
                end_batch(&mut conn, &mut open, &mut failed);
                let (back, returned) = mpsc::sync_channel(1);
                conn = match to.send((conn, back)) {
                    Ok(()) => match returned.recv() {
                        Ok(conn) => conn,
                        Err(_) => return,
                    },
                    Err(mpsc::SendError((conn, _))) => conn,
                };
            }
            Job::Commit(key, reply) => {
                if open.as_ref().is_some_and(|o| o.keys.contains(&key)) {
                    end_batch(&mut conn, &mut open, &mut failed);
                }
                let outcome = failed.remove(&key).map_or(Ok(()), Err);
                if let Err(Err(e)) = reply.send(outcome) {
                    // a batch dropped before its end: its listing is not complete anyway
                    tracing::warn!(
                        "the last writes of a listing that stopped early were lost: {e}"
                    );
                }
            }
            Job::Batched(key, work) => {
                if let Some(e) = failed.remove(&key) {
                    work(&mut conn, Some(e));
                    continue;
                }
                if open.is_none() {
                    // the WAL file keeps its size while a listing writes (see `end_batch`)
                    let begin = "PRAGMA journal_size_limit = -1; BEGIN IMMEDIATE";
                    if let Err(e) = conn.execute_batch(begin) {
                        work(&mut conn, Some(e));
                        continue;
                    }
                    open = Some(Open {
                        deadline: Instant::now() + BATCH_WINDOW,
                        keys: vec![],
                    });
                }
                if let Some(o) = open.as_mut().filter(|o| !o.keys.contains(&key)) {
                    o.keys.push(key);
                }
                let ok = work(&mut conn, None);
                if !ok && !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                if conn.is_autocommit() {
                    // rolled back, here or by SQLite itself (an I/O error, a full disk):
                    // the other batches' earlier work in it is gone too
                    let keys = open.take().map(|o| o.keys).unwrap_or_default();
                    for k in keys.into_iter().filter(|k| ok || *k != key) {
                        let why = "rolled back with another listing's failed write";
                        failed.insert(k, shared_error(why, None));
                    }
                } else if open.as_ref().is_some_and(|o| Instant::now() >= o.deadline)
                    || wal.drained()
                {
                    end_batch(&mut conn, &mut open, &mut failed);
                }
            }
        }
    }
}

/// Commits the open transaction, if any; a failed commit is rolled back and kept
/// for the next job or commit of each batch that had work in it.
fn end_batch(
    conn: &mut Connection,
    open: &mut Option<Open>,
    failed: &mut HashMap<u64, rusqlite::Error>,
) {
    let Some(Open { keys, .. }) = open.take() else {
        return;
    };
    if let Err(e) = conn.execute_batch("COMMIT") {
        tracing::error!("committing a batch of pages: {e}");
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for k in keys {
            failed.insert(k, shared_error("commit failed", Some(&e)));
        }
    }
    // Once the WAL has started over, its next commit outside a batch cuts the file
    // back; within a listing, rewriting it in place spares the kernel allocating it again.
    let _ = conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT);
}

/// One error for each of the batches a failed transaction held (the error type
/// cannot be cloned): SQLite's code, and `why` with the original message.
fn shared_error(why: &str, e: Option<&rusqlite::Error>) -> rusqlite::Error {
    use rusqlite::ffi;
    let code = match e {
        Some(rusqlite::Error::SqliteFailure(code, _)) => *code,
        Some(_) => ffi::Error::new(ffi::SQLITE_ERROR),
        None => ffi::Error::new(ffi::SQLITE_ABORT),
    };
    let message = match e {
        Some(e) => format!("{why}: {e}"),
        None => why.to_string(),
    };
    rusqlite::Error::SqliteFailure(code, Some(message))
}

/// The writer's side of the WAL's growth. The checkpointer copies commits back
/// while the writer goes on, so the WAL never finds everything copied at the
/// start of a write, which is when it starts over. Past [`WAL_CAP_BYTES`] the
/// writer drains it: the batch then open ends as soon as the checkpointer has
/// copied every earlier commit, and the writer itself checkpoints that short
/// batch (waiting for its fsync) before it writes again.
struct WalCap {
    /// [`WAL_CAP_BYTES`] (less in tests), in frames.
    cap: u64,
    /// `store.max_wal`, in frames.
    max: u64,
    page_size: u64,
    /// Frames copied back by the checkpointer's last pass.
    copied: Arc<AtomicU64>,
    draining: bool,
    /// WAL frames after the last commit, and after the one before it.
    last: u64,
    before_last: u64,
    waiting: Arc<WalWait>,
}

impl WalCap {
    /// After a job, with no transaction open: wakes the checkpointer, or past the
    /// cap and once only the last commit is left to copy, checkpoints here.
    fn after_job(&mut self, conn: &Connection, checkpointer: &mpsc::SyncSender<()>) {
        if WAL_FRAMES.get() > self.max {
            self.wait_for_readers(conn);
        }
        let frames = WAL_FRAMES.get();
        if frames != self.last {
            (self.before_last, self.last) = (self.last, frames);
        }
        if frames <= self.cap {
            self.draining = false;
        } else if !self.draining {
            self.draining = true;
        } else if self.copied.load(Ordering::Relaxed) >= self.before_last {
            // busy when the checkpointer is at it: tried again after the next job
            if let Ok((0, log, done)) = checkpoint(conn)
                && log == done
            {
                WAL_FRAMES.set(0);
                self.copied.store(0, Ordering::Relaxed);
                (self.draining, self.last, self.before_last) = (false, 0, 0);
            }
            return;
        }
        let _ = checkpointer.try_send(());
    }

    /// Past `store.max_wal` a reader's open transaction is what keeps the WAL
    /// from starting over (the checkpoints cannot copy past its snapshot), and
    /// every write would grow it: the writer waits, nothing is lost, and it goes
    /// on once a checkpoint has copied everything back and restarted the WAL.
    fn wait_for_readers(&mut self, conn: &Connection) {
        let mut said = false;
        // tried once a second rather than in the busy handler's long waits
        let _ = conn.busy_timeout(Duration::ZERO);
        loop {
            // RESTART succeeds once no reader is left in the WAL
            match conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            }) {
                Ok((0, log, done)) if log == done => break,
                Ok(_) | Err(_) => {}
            }
            self.waiting.beat.store(millis_now(), Ordering::Relaxed);
            if !said {
                said = true;
                let bytes = WAL_FRAMES.get() * self.page_size;
                self.waiting.bytes.store(bytes.max(1), Ordering::Relaxed);
                tracing::warn!(
                    wal_mib = bytes >> 20,
                    "the WAL is past store.max_wal and a reader's open transaction keeps it from starting over; writes wait until it ends (nothing is lost)"
                );
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let _ = conn.busy_timeout(BUSY_TIMEOUT);
        if said {
            tracing::info!("the reader let go; the WAL started over and writes go on");
        }
        self.waiting.bytes.store(0, Ordering::Relaxed);
        WAL_FRAMES.set(0);
        self.copied.store(0, Ordering::Relaxed);
        (self.draining, self.last, self.before_last) = (false, 0, 0);
    }

    /// Whether the open batch should end now, to drain the WAL.
    fn drained(&self) -> bool {
        self.draining && self.copied.load(Ordering::Relaxed) >= self.last
    }
}

/// Copies committed WAL frames into the database off the writer's thread (on the
/// other core, while the writer goes on), and says how far it got.
fn checkpoint_loop(conn: Connection, wake: mpsc::Receiver<()>, copied: Arc<AtomicU64>) {
    while wake.recv().is_ok() {
        match checkpoint(&conn) {
            Ok((0, _, done)) => copied.store(done.max(0) as u64, Ordering::Relaxed),
            Ok(_) => {}
            Err(e) => tracing::debug!("background checkpoint: {e}"),
        }
    }
}

thread_local! {
    /// Frames in the WAL after the last commit on this thread (the store thread).
    static WAL_FRAMES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn note_wal_frames(_: &rusqlite::hooks::Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.set(frames.max(0) as u64);
    Ok(())
}

/// A passive checkpoint: (busy, frames in the WAL, frames copied back).
fn checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
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

pub use crate::time::now_rfc3339;

#[cfg(test)]
mod tests {
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
