//! One writer per mirror: every command that does the mirror's work (`run`, `sync`,
//! `demo`, a download) holds an exclusive `flock` on `<db>.lock` beside the
//! database while it runs. The kernel drops it when the process ends, even by
//! kill -9, so a lock is never left stale. The file names the holder's pid and
//! command, for the message a second writer gets. A PostgreSQL mirror has no
//! file beside it: there a session advisory lock on the schema does the same
//! (`store::postgres::lock`), and the holder is named by its connection's
//! `application_name`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

/// Held while it lives; the lock file itself stays (removing it would race
/// with a process about to lock it).
#[derive(Debug)]
pub struct WriterLock {
    _file: Option<File>,
    _session: Option<crate::store::postgres::lock::Advisory>,
}

/// Another process holds the mirror's writer lock.
#[derive(Debug, thiserror::Error)]
#[error(
    "another avala-mirror ({holder}) is working on the mirror {db}; this command would do its work a second time, so it does nothing (stop that process first, or wait for it to finish)"
)]
pub struct Locked {
    pub db: String,
    /// "pid 1234, `run`", as the holder wrote it.
    pub holder: String,
    /// The holder is the daemon (`run`), which takes requests through the database.
    pub is_daemon: bool,
}

/// What `acquire` can meet.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(transparent)]
    Locked(#[from] Locked),
    #[error("cannot use the lock file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot take the writer lock of the PostgreSQL mirror {at}: {why}")]
    Postgres { at: String, why: String },
    /// The server refused the login: the configuration's fault (exit 2).
    #[error("store.url")]
    Refused(#[source] crate::error::ConfigError),
}

/// The lock file of the database at `db`.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    db.with_file_name(name)
}

impl WriterLock {
    /// Takes the lock of the database at `db` for `command`, or says who has it.
    /// Never waits.
    pub fn acquire(db: &Path, command: &str) -> Result<WriterLock, LockError> {
        let path = lock_path(db);
        let io = |source| LockError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                // the holder writes its line right after it locks: give it a moment
                let mut said = String::new();
                for _ in 0..50 {
                    said.clear();
                    let _ = file.rewind().and_then(|()| file.read_to_string(&mut said));
                    if said.ends_with('\n') && said.lines().count() >= 2 {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                let mut lines = said.lines();
                let (pid, cmd) = (lines.next().unwrap_or("?"), lines.next().unwrap_or("?"));
                return Err(Locked {
                    db: db.display().to_string(),
                    holder: format!("pid {pid}, `{cmd}`"),
                    is_daemon: cmd == "run",
                }
                .into());
            }
            Err(e) => return Err(io(e.into())),
        }
        // ours now: say who we are (the holder's text is read only by others)
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}\n{command}", std::process::id()).map_err(io)?;
        Ok(WriterLock {
            _file: Some(file),
            _session: None,
        })
    }

    /// The writer lock of the mirror at `at`: the lock file beside a SQLite
    /// database, or the advisory lock of a PostgreSQL schema.
    pub async fn acquire_at(
        at: &crate::store::Location,
        command: &str,
    ) -> Result<WriterLock, LockError> {
        match at {
            crate::store::Location::Sqlite(db) => WriterLock::acquire(db, command),
            crate::store::Location::Postgres(t) => Ok(WriterLock {
                _file: None,
                _session: Some(crate::store::postgres::lock::Advisory::take(t, command).await?),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_told_who_holds_the_mirror() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("m.db");
        let held = WriterLock::acquire(&db, "run").unwrap();
        assert!(dir.path().join("m.db.lock").exists());
        // flock is per open file: a second open, even in this process, is refused
        let err = WriterLock::acquire(&db, "sync").unwrap_err();
        let LockError::Locked(locked) = err else {
            panic!("{err}")
        };
        assert!(locked.is_daemon);
        let text = locked.to_string();
        assert!(
            text.contains(&format!("pid {}, `run`", std::process::id())),
            "{text}"
        );
        drop(held);
        let again = WriterLock::acquire(&db, "sync").unwrap();
        drop(again);
    }
}
