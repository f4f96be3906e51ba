//! What a store operation fails with, whichever database is behind it.

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
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
        }
    }
}
