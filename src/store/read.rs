//! The mirror opened by the commands that only read it (`status`, `events`,
//! `exports list`): no API key, no migration, nothing written; a SQLite file
//! or the PostgreSQL schema from any host.

use std::path::PathBuf;
use std::time::Duration;

use rusqlite::Connection;

use super::sqlite::open_read_only;

/// A mirror opened read-only: a SQLite file (see [`open_read_only`]) or the
/// PostgreSQL schema from any host. What the commands that only read it ask.
// one per command: its size does not matter
#[allow(clippy::large_enum_variant)]
pub enum ReadOnly {
    Sqlite { conn: Connection, path: PathBuf },
    Postgres(super::postgres::Reader),
}

impl ReadOnly {
    pub async fn open(at: &super::Location) -> anyhow::Result<ReadOnly> {
        Ok(match at {
            super::Location::Sqlite(path) => ReadOnly::Sqlite {
                conn: open_read_only(path)?,
                path: path.to_path_buf(),
            },
            super::Location::Postgres(t) => {
                ReadOnly::Postgres(super::postgres::Reader::open(t).await?)
            }
        })
    }

    /// What `status` reports.
    pub async fn status(&self) -> super::Result<serde_json::Value> {
        match self {
            ReadOnly::Sqlite { conn, .. } => Ok(super::sqlite::report::status(conn)?),
            ReadOnly::Postgres(r) => r.status().await,
        }
    }

    /// Present exports and their downloads (`exports list`).
    pub async fn exports(&self) -> super::Result<Vec<super::downloads::Listed>> {
        match self {
            ReadOnly::Sqlite { conn, .. } => Ok(super::sqlite::downloads::list(conn)?),
            ReadOnly::Postgres(r) => r.exports().await,
        }
    }

    /// Up to `limit` events after `after` whose type matches `glob`.
    pub async fn events(
        &self,
        after: i64,
        glob: &str,
        limit: u32,
    ) -> super::Result<Vec<super::events::Event>> {
        match self {
            ReadOnly::Sqlite { conn, .. } => {
                Ok(super::sqlite::events::list(conn, after, glob, limit)?)
            }
            ReadOnly::Postgres(r) => r.events(after, glob, limit).await,
        }
    }

    /// The sequence number `--since` names (an event id or a number).
    pub async fn seq_of(&self, since: &str) -> super::Result<Option<i64>> {
        match self {
            ReadOnly::Sqlite { conn, .. } => Ok(super::sqlite::events::seq_of(conn, since)?),
            ReadOnly::Postgres(r) => r.seq_of(since).await,
        }
    }

    /// Waits until there may be new events (`events --follow`): SQLite is
    /// looked at again after a moment, opened anew so that it reads through a
    /// daemon started meanwhile; PostgreSQL wakes on the writer's NOTIFY.
    pub async fn changed(&mut self) -> anyhow::Result<()> {
        match self {
            ReadOnly::Sqlite { conn, path } => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                *conn = open_read_only(path)?;
                Ok(())
            }
            ReadOnly::Postgres(r) => r.changed().await,
        }
    }
}
