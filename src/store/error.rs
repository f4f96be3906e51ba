//! What a store operation fails with, whichever database is behind it.

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {}", crate::store::postgres::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The PostgreSQL server could not be reached (it is tried again).
    #[error("{0}")]
    Unavailable(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A database that no retry can help: gone, not a database, corrupt, or not
    /// writable (permissions, a read-only file system).
    pub fn is_unusable(&self) -> bool {
        use rusqlite::ErrorCode::*;
        match self {
            Error::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(CannotOpen | NotADatabase | DatabaseCorrupt | ReadOnly | PermissionDenied)
            ),
            // a lost connection or a restart is a fault like a 5xx; a role that
            // may not write, or a read-only server, is not
            Error::Postgres(e) => e
                .code()
                .is_some_and(|c| matches!(c.code(), "42501" | "25006")),
            Error::Unavailable(_) => false,
        }
    }
}
