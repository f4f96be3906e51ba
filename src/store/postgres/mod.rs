//! The mirror in PostgreSQL (SPEC §9). One connection does the writing, on the
//! async driver (tokio-postgres): each operation is one round trip or one
//! transaction, and a page batch is a handful of set-based statements
//! (`unnest` of arrays), never a round trip a row. A connection that was lost
//! is opened again by the next operation; the one that failed returns its error
//! (its transaction rolled back), like a 5xx from the API, and the cycle is
//! retried. Everything in this folder is PostgreSQL's SQL; what it shares with
//! SQLite (diff decisions, event documents, report shapes) lives above it.

pub mod lock;
mod ops;
mod read;
mod records;
pub mod target;

use std::borrow::Cow;
use std::sync::Mutex;
use std::time::SystemTime;

use include_dir::{Dir, include_dir};
use tokio_postgres::Client;

pub use read::Reader;
pub use target::{Password, Target};

static MIGRATIONS: Dir = include_dir!("$CARGO_MANIFEST_DIR/migrations/postgres");

/// The channel the writer notifies on commit of new events (`events --follow`).
pub fn channel(schema: &str) -> String {
    format!("{schema}_events")
}

/// The PostgreSQL mirror, as the daemon writes it.
pub struct Db {
    target: Target,
    /// A few connections, so that listings side by side write side by side
    /// (the server's work on a connection uses one core). Transactions that
    /// append events take [`ops::EVENTS_LOCK`] first, so events commit in the
    /// order of their `seq` and a reader never skips one.
    clients: Vec<tokio::sync::Mutex<Option<Client>>>,
    next: std::sync::atomic::AtomicUsize,
    /// The last connection failure, until an operation works again (`/healthz`).
    down: Mutex<Option<(String, SystemTime)>>,
}

/// Why the mirror could not be opened at start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The server refused the login or the database: a configuration error.
    #[error("PostgreSQL at {at} refused the connection: {why}")]
    Refused { at: String, why: String },
    #[error("cannot open the PostgreSQL mirror at {at}: {why}")]
    Other { at: String, why: String },
}

impl OpenError {
    /// Why connecting to `target` failed: refused (the role, the password, the
    /// database: 28…, 3D000) or anything else.
    fn of(target: &Target, e: &tokio_postgres::Error) -> OpenError {
        let (at, why) = (target.display(), describe(e));
        match e.code().map(|c| c.code()) {
            Some(c) if c.starts_with("28") || c == "3D000" => OpenError::Refused { at, why },
            _ => OpenError::Other { at, why },
        }
    }

    /// The error a command ends with: a refused login is the configuration's
    /// fault (exit 2), anything else a failure (exit 1).
    pub fn into_error(self) -> anyhow::Error {
        match self {
            OpenError::Refused { .. } => {
                crate::error::ConfigError(vec![format!("store.url: {self}")]).into()
            }
            e => e.into(),
        }
    }
}

impl Db {
    /// Connects, creates the schema if needed and applies its migrations.
    pub async fn open(target: &Target) -> Result<Db, OpenError> {
        let client = connect(target).await?;
        migrate(&client, &target.schema)
            .await
            .map_err(|e| OpenError::Other {
                at: target.display(),
                why: format!("migrating: {}", describe(&e)),
            })?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut clients = vec![tokio::sync::Mutex::new(Some(client))];
        clients.extend((1..cores.clamp(2, 4)).map(|_| tokio::sync::Mutex::new(None)));
        Ok(Db {
            target: target.clone(),
            clients,
            next: std::sync::atomic::AtomicUsize::new(0),
            down: Mutex::new(None),
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// A free connection (else the next in turn), opened (again) if needed.
    async fn client(&self) -> super::Result<tokio::sync::MutexGuard<'_, Option<Client>>> {
        use std::sync::atomic::Ordering::Relaxed;
        let free = self.clients.iter().find_map(|c| c.try_lock().ok());
        let mut guard = match free {
            Some(g) => g,
            None => {
                let turn = self.next.fetch_add(1, Relaxed) % self.clients.len();
                self.clients[turn].lock().await
            }
        };
        if guard.as_ref().is_none_or(Client::is_closed) {
            let again = guard.take().is_some();
            match connect(&self.target).await {
                Ok(c) => {
                    if again {
                        tracing::info!(at = %self.target.display(), "connected to PostgreSQL again");
                    }
                    *guard = Some(c);
                }
                Err(e) => {
                    self.note_down(&e.to_string());
                    return Err(super::Error::Unavailable(e.to_string()));
                }
            }
        }
        Ok(guard)
    }

    /// Runs `f` on the connection; notes a lost connection for `/healthz`.
    async fn with<R>(
        &self,
        f: impl AsyncFnOnce(&mut Client) -> Result<R, tokio_postgres::Error>,
    ) -> super::Result<R> {
        let mut guard = self.client().await?;
        let client = guard.as_mut().expect("connected");
        match f(client).await {
            Ok(r) => {
                self.down.lock().unwrap_or_else(|p| p.into_inner()).take();
                Ok(r)
            }
            Err(e) => {
                if e.is_closed() || client.is_closed() {
                    self.note_down(&describe(&e));
                }
                Err(e.into())
            }
        }
    }

    fn note_down(&self, why: &str) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if down.is_none() {
            tracing::warn!("PostgreSQL connection lost: {why}");
            *down = Some((why.to_string(), SystemTime::now()));
        }
    }

    /// The connection failure `/healthz` shows, while it lasts: (why, since).
    pub fn down(&self) -> Option<(String, SystemTime)> {
        self.down.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A connection with the schema as its search path; the driver's connection
/// task runs beside it until the client is dropped.
pub(super) async fn connect(target: &Target) -> Result<Client, OpenError> {
    connect_with(target, &target.config).await
}

pub(super) async fn connect_with(
    target: &Target,
    config: &tokio_postgres::Config,
) -> Result<Client, OpenError> {
    let (client, connection) = target
        .connect(config)
        .await
        .map_err(|e| OpenError::of(target, &e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("PostgreSQL connection ended: {e}");
        }
    });
    let schema = &target.schema;
    client
        .batch_execute(&format!("SET search_path TO {schema}"))
        .await
        .map_err(|e| OpenError::Other {
            at: target.display(),
            why: describe(&e),
        })?;
    Ok(client)
}

/// The server's message, with its detail, or the driver's.
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({d})", db.message()),
            None => db.message().to_string(),
        },
        None => {
            // the driver's message, then why (a certificate, a refused connection)
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            text
        }
    }
}

/// Creates the schema and applies the migrations it lacks, each in its own
/// transaction, under a transaction lock so two processes never both migrate.
async fn migrate(client: &Client, schema: &str) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
               version bigint PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        ))
        .await?;
    let mut dirs: Vec<&Dir> = MIGRATIONS.dirs().collect();
    dirs.sort_by_key(|d| d.path());
    for (n, dir) in dirs.into_iter().enumerate() {
        let version = n as i64 + 1;
        let name = dir.path().display().to_string();
        let sql = dir
            .get_file(dir.path().join("up.sql"))
            .and_then(|f| f.contents_utf8())
            .expect("migrations/postgres/*/up.sql");
        client.batch_execute("BEGIN").await?;
        let applied = async {
            client
                .execute(
                    "SELECT pg_advisory_xact_lock(hashtext('avala_mirror.migrate'))",
                    &[],
                )
                .await?;
            let done = client
                .query_opt(
                    &format!("SELECT 1 FROM {schema}.schema_migrations WHERE version = $1"),
                    &[&version],
                )
                .await?;
            if done.is_none() {
                client.batch_execute(sql).await?;
                client
                    .execute(
                        &format!(
                            "INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)"
                        ),
                        &[&version, &name],
                    )
                    .await?;
                tracing::info!(schema, migration = %name, "applied");
            }
            client.batch_execute("COMMIT").await
        }
        .await;
        if let Err(e) = applied {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    }
    Ok(())
}

/// The migrations this build knows.
pub(super) fn known_version() -> i64 {
    MIGRATIONS.dirs().count() as i64
}

/// RFC 3339 text (as the mirror passes times around) as a `timestamptz`.
pub(super) fn at(t: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(t).ok()
}

/// A `timestamptz` as the RFC 3339 text the SQLite mirror holds.
pub(super) fn text(t: Option<SystemTime>) -> Option<String> {
    t.map(|t| humantime::format_rfc3339_seconds(t).to_string())
}

/// Text PostgreSQL accepts: it refuses the NUL character, which JSON may
/// carry (`\u0000`); it becomes U+FFFD, so no record can stop the mirror.
pub(super) fn text_value(s: &str) -> Cow<'_, str> {
    match s.contains('\0') {
        true => Cow::Owned(s.replace('\0', "\u{FFFD}")),
        false => Cow::Borrowed(s),
    }
}

/// JSON text `jsonb` accepts: a `\u0000` escape (refused by jsonb) becomes
/// `\ufffd`; every other byte is kept.
pub(super) fn jsonb_text(raw: &str) -> Cow<'_, str> {
    if !raw.contains("\\u0000") {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find("\\u0000") {
        // an escape only after an even run of backslashes (`\\u0000` is text)
        let slashes = rest[..i].bytes().rev().take_while(|b| *b == b'\\').count();
        out.push_str(&rest[..i]);
        out.push_str(if slashes % 2 == 0 {
            "\\ufffd"
        } else {
            "\\u0000"
        });
        rest = &rest[i + 6..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}
