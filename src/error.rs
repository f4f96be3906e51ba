//! The crate's error types and the one place that maps them to exit codes.
//! Library code returns these; commands add context with anyhow.

use std::fmt;

/// Exit codes of SPEC §1.
pub const EXIT_OK: u8 = 0;
pub const EXIT_WORK_FAILED: u8 = 1;
pub const EXIT_CONFIG: u8 = 2;
pub const EXIT_AUTH: u8 = 3;

/// Every problem found in a configuration, each with its key path.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration:")?;
        for p in &self.0 {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

/// A failed API call. Texts name the endpoint (never the key, never a query string
/// that could carry a signature).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the API rejected the API key (401 at {0}); check AVALA_API_KEY or api.api_key_file")]
    Unauthorized(String),
    #[error("permission denied (403) at {0}")]
    Forbidden(String),
    #[error("not found (404) at {0}")]
    NotFound(String),
    #[error("HTTP {status} at {endpoint}: {body}")]
    Status {
        status: u16,
        endpoint: String,
        body: String,
    },
    #[error("network error at {endpoint}: {message}")]
    Transport { endpoint: String, message: String },
    #[error("malformed response at {endpoint}: {message}")]
    Malformed { endpoint: String, message: String },
    #[error("refusing to follow {0}: it points away from the API host (the key would go with it)")]
    ForeignHost(String),
    #[error("redirect ({status}) at {endpoint} not followed: the API key would go with it")]
    Redirect { status: u16, endpoint: String },
    #[error("gave up at {endpoint} after {attempts} attempts: {last}")]
    RetriesExhausted {
        endpoint: String,
        attempts: u32,
        #[source]
        last: Box<ApiError>,
    },
    /// Reading or writing the mirror failed: that scope's cycle fails (and is
    /// retried next cycle) unless the store itself is unusable ([`ApiError::is_fatal`]).
    #[error("local database error: {0}")]
    Store(#[from] crate::store::Error),
    /// Not a fault of the API's nor of the mirror's: a resource the
    /// configuration cannot list, or a task of the daemon that died.
    #[error("{0}")]
    Internal(String),
    /// A listing the API answered in a way that cannot be right (it loops, runs
    /// past its count, or answers far more than asked): it ends incomplete.
    #[error(
        "the listing at {endpoint} cannot be trusted: {message}; it is incomplete and nothing was deleted"
    )]
    Untrusted { endpoint: String, message: String },
    /// A listing without a `count` that ran far past its scope's last complete
    /// size: a cursor handing out new records without end (SPEC §6).
    #[error(
        "the listing at {endpoint} ran to {received} records, more than ten times its last complete size ({last}); it is incomplete and nothing was deleted (the next listing of this scope may run to ten times {received})"
    )]
    TooLong {
        endpoint: String,
        received: u64,
        last: u64,
    },
    /// An incremental listing whose server did not apply `filter[updated_at__gte]`.
    #[error("the server ignored filter[updated_at__gte] at {endpoint}: {message}")]
    FilterIgnored { endpoint: String, message: String },
    #[error(
        "the answer at {endpoint} is larger than api.max_response_bytes ({limit} bytes); refused"
    )]
    TooLarge { endpoint: String, limit: u64 },
}

impl ApiError {
    /// Whether another attempt can help (5xx, timeouts, resets, malformed bodies).
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::Status { status, .. } => *status >= 500 || *status == 408,
            ApiError::Transport { .. } | ApiError::Malformed { .. } => true,
            _ => false,
        }
    }

    /// 403/404 on one scope: report it and go on with the others.
    pub fn is_scope_missing(&self) -> bool {
        matches!(self, ApiError::Forbidden(_) | ApiError::NotFound(_))
    }

    /// Whether this ends `run` and `sync` (SPEC §6): a rejected key, a store
    /// that cannot be used at all, or the daemon's own fault. Anything else
    /// (whatever the upstream sent, a full disk, a busy or failing read or
    /// write) fails that scope's cycle, which is tried again next cycle.
    pub fn is_fatal(&self) -> bool {
        match self {
            ApiError::Unauthorized(_) | ApiError::Internal(_) => true,
            ApiError::Store(e) => e.is_unusable(),
            _ => false,
        }
    }
}

/// Maps any command error to its exit code: config errors 2, a rejected key 3, else 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.downcast_ref::<ConfigError>().is_some() {
            return EXIT_CONFIG;
        }
        if let Some(ApiError::Unauthorized(_)) = cause.downcast_ref::<ApiError>() {
            return EXIT_AUTH;
        }
    }
    EXIT_WORK_FAILED
}
