//! The store thread: it owns the writer connection and runs jobs on it in
//! turn, keeping one transaction open across the batches writing at the time
//! (see the module documentation of `store`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Instant;

use rusqlite::Connection;

use super::wal::WalCap;
use super::{BATCH_WINDOW, JOURNAL_SIZE_LIMIT};
use crate::store::Store;

/// A closure for the store thread; false when it failed (a batch is then rolled back).
pub(super) type Work = Box<dyn FnOnce(&mut Connection, Option<rusqlite::Error>) -> bool + Send>;

pub(super) enum Job {
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

impl Store {
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
    pub(in crate::store) store: Store,
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
        if self.store.pg().is_some() {
            // each call committed its own transaction
            return Ok(());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.store.send(Job::Commit(self.key, tx));
        rx.await.expect("store task panicked")
    }
}

impl Drop for Batch {
    /// Commits now rather than at the end of the window (a listing that stopped early).
    fn drop(&mut self) {
        if self.store.pg().is_some() {
            return;
        }
        let (tx, _) = tokio::sync::oneshot::channel();
        self.store.try_send(Job::Commit(self.key, tx));
    }
}

/// A lent connection, returned to the store thread when dropped (even by a panic).
pub(super) struct Lent(
    pub(super) Option<Connection>,
    pub(super) mpsc::SyncSender<Connection>,
);

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            let _ = self.1.send(conn);
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
pub(super) fn serve(
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
