//! Reading the SQLite mirror beside the writer: a small pool of read-only
//! connections for the daemon, and a read-only open for the commands that
//! only read.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rusqlite::Connection;

use super::MIGRATIONS_DIR;
use crate::store::Store;

/// Reads at once ([`Store::read`]), each on a read-only connection kept for the
/// next: the writer's 64 MiB page cache is shared by nobody, so every reader
/// costs its own cache and blocking thread.
pub(super) const MAX_READERS: usize = 2;
/// The page cache of a read connection.
const READER_CACHE_KIB: i64 = 2048;

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
    let writer_gone = writer_gone(path);
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

/// Neither the `-wal` nor the `-shm` file of the database at `path` exists: no
/// daemon has it open, and [`open_read_only`] opens it `immutable`.
pub(super) fn writer_gone(path: &Path) -> bool {
    let beside = |suffix: &str| {
        let mut p = path.as_os_str().to_os_string();
        p.push(suffix);
        PathBuf::from(p).exists()
    };
    !beside("-wal") && !beside("-shm")
}

impl Store {
    /// Runs `f` on a read-only connection of its own, on a blocking thread: a read
    /// never ends the writer's open batch early (as a job on the writer's thread
    /// does), and sees what has been committed, up to a second behind the writer.
    pub async fn read<F, R>(&self, f: F) -> rusqlite::Result<R>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let _turn = self.inner().reading.acquire().await.expect("never closed");
        let inner = self.inner().clone();
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
}
