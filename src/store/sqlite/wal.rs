//! The WAL's growth: the writer drains it past a cap, waits for readers past
//! `store.max_wal`, and a second thread checkpoints after each commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use rusqlite::Connection;

use super::BUSY_TIMEOUT;

/// The WAL size past which the writer drains the WAL so that it starts over (see
/// [`WalCap`]): it grows to this and about two seconds of writes.
pub(super) const WAL_CAP_BYTES: u64 = 256 << 20;

/// `store.max_wal` by default: past it, while a reader's open transaction keeps
/// the WAL from starting over, the writer waits ([`WalCap::wait_for_readers`]).
pub const MAX_WAL_BYTES: u64 = 1 << 30;

/// The writer's wait for a reader past `store.max_wal`, as others see it.
#[derive(Default)]
pub(super) struct WalWait {
    /// The WAL's size in bytes while waiting; 0 when not.
    pub(super) bytes: AtomicU64,
    /// When the waiting writer last looked (ms since 1970).
    pub(super) beat: AtomicU64,
}

pub(super) fn millis_now() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The writer's side of the WAL's growth. The checkpointer copies commits back
/// while the writer goes on, so the WAL never finds everything copied at the
/// start of a write, which is when it starts over. Past [`WAL_CAP_BYTES`] the
/// writer drains it: the batch then open ends as soon as the checkpointer has
/// copied every earlier commit, and the writer itself checkpoints that short
/// batch (waiting for its fsync) before it writes again.
pub(super) struct WalCap {
    /// [`WAL_CAP_BYTES`] (less in tests), in frames.
    pub(super) cap: u64,
    /// `store.max_wal`, in frames.
    pub(super) max: u64,
    pub(super) page_size: u64,
    /// Frames copied back by the checkpointer's last pass.
    pub(super) copied: Arc<AtomicU64>,
    pub(super) draining: bool,
    /// WAL frames after the last commit, and after the one before it.
    pub(super) last: u64,
    pub(super) before_last: u64,
    pub(super) waiting: Arc<WalWait>,
}

impl WalCap {
    /// After a job, with no transaction open: wakes the checkpointer, or past the
    /// cap and once only the last commit is left to copy, checkpoints here.
    pub(super) fn after_job(&mut self, conn: &Connection, checkpointer: &mpsc::SyncSender<()>) {
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
    pub(super) fn drained(&self) -> bool {
        self.draining && self.copied.load(Ordering::Relaxed) >= self.last
    }
}

/// Copies committed WAL frames into the database off the writer's thread (on the
/// other core, while the writer goes on), and says how far it got.
pub(super) fn checkpoint_loop(conn: Connection, wake: mpsc::Receiver<()>, copied: Arc<AtomicU64>) {
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

pub(super) fn note_wal_frames(
    _: &rusqlite::hooks::Wal,
    frames: std::ffi::c_int,
) -> rusqlite::Result<()> {
    WAL_FRAMES.set(frames.max(0) as u64);
    Ok(())
}

/// A passive checkpoint: (busy, frames in the WAL, frames copied back).
fn checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
}
