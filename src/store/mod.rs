//! The mirror's store: one interface, two backends. Everything above
//! `store/` calls the named operations on [`Store`] and [`Batch`] (and reads
//! through [`ReadOnly`]) without knowing which database is behind them: SQLite
//! (`sqlite/`, the embedded default) or PostgreSQL (`postgres/`, SPEC §9).
//! Beside this file, one file per part of the mirror holds what both share:
//! its types, the `Store` operations (each picks its backend), and what needs
//! no SQL (event documents, report shapes, watermark rules).

pub mod downloads;
mod error;
pub mod events;
pub mod lock;
pub mod outbox;
pub mod postgres;
mod read;
pub mod records;
pub mod report;
pub mod retention;
pub mod sqlite;
pub mod state;

use std::path::PathBuf;
use std::sync::Arc;

pub use error::{Error, Result};
pub use read::ReadOnly;
pub use sqlite::wal::MAX_WAL_BYTES;
pub use sqlite::writer::Batch;
pub use sqlite::{BATCH_WINDOW, open_read_only};

/// The mirror database. Cloning shares the one writer (SQLite's thread, or
/// PostgreSQL's connection).
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(Arc<sqlite::Inner>),
    Postgres(Arc<postgres::Db>),
}

/// Where the mirror lives: `store.path` (SQLite, the default) or `store.url`.
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(Box<postgres::Target>),
}

impl Location {
    /// For messages and `status`: the file, or the URL without its password and the schema.
    pub fn display(&self) -> String {
        match self {
            Location::Sqlite(p) => p.display().to_string(),
            Location::Postgres(t) => t.display(),
        }
    }
}

impl Store {
    /// Opens (creating if needed) and migrates the mirror the configuration
    /// names: SQLite at `store.path`, or PostgreSQL at `store.url` (a refused
    /// login there is a configuration error, exit 2).
    pub async fn open_config(cfg: &crate::config::Config) -> anyhow::Result<Store> {
        match &cfg.store_pg {
            None => Store::open_with_max_wal(&cfg.store_path, cfg.max_wal),
            Some(target) => Store::open_postgres(target).await,
        }
    }

    /// Opens (creating the schema if needed) and migrates a PostgreSQL mirror.
    pub async fn open_postgres(target: &postgres::Target) -> anyhow::Result<Store> {
        let db = postgres::Db::open(target)
            .await
            .map_err(postgres::OpenError::into_error)?;
        Ok(Store {
            backend: Backend::Postgres(Arc::new(db)),
        })
    }

    /// The PostgreSQL backend, when the mirror is there.
    pub(crate) fn pg(&self) -> Option<&postgres::Db> {
        match &self.backend {
            Backend::Postgres(db) => Some(db),
            Backend::Sqlite(_) => None,
        }
    }

    /// Where the mirror is, for messages.
    pub fn location(&self) -> Location {
        match &self.backend {
            Backend::Sqlite(_) => Location::Sqlite(self.sqlite_path()),
            Backend::Postgres(db) => Location::Postgres(Box::new(db.target().clone())),
        }
    }

    /// A lost PostgreSQL connection, while it lasts: (why, since) (`/healthz`).
    pub fn unavailable(&self) -> Option<(String, std::time::SystemTime)> {
        self.pg().and_then(postgres::Db::down)
    }

    /// What `/metrics` reads from the mirror at a scrape.
    pub async fn metrics(&self) -> Result<report::Snapshot> {
        if let Some(pg) = self.pg() {
            return pg.metrics().await;
        }
        let path = self.sqlite_path();
        Ok(
            tokio::task::spawn_blocking(move || sqlite::report::metrics(&path))
                .await
                .expect("metrics read panicked")?,
        )
    }
}

impl Store {
    /// A round trip through the writer (the watchdog's proof of life).
    pub async fn ping(&self) -> Result<()> {
        if let Some(pg) = self.pg() {
            return pg.ping().await;
        }
        self.call(|c| c.query_row("SELECT 1", [], |_| Ok(())))
            .await?;
        Ok(())
    }
}

pub use crate::time::now_rfc3339;
