//! The typed configuration: TOML file + `AVALA_MIRROR__SECTION__KEY` env overrides,
//! validated in one pass that reports every problem with its key path.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

use crate::error::ConfigError;

/// Every collection the mirror keeps: the v1 resources in the order a cycle
/// needs them, then the JSON:API service's collections (SPEC §8). What tells one
/// from another is its entry in [`SPECS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Datasets,
    Sequences,
    Items,
    Slices,
    Exports,
    Projects,
    JsonapiDatasets,
    Entries,
    Annotations,
    NoteFeeds,
    NoteComments,
    ProjectMembers,
}

/// What a collection is: its table, its event name and, for the JSON:API
/// service, how it is listed. Adding a JSON:API collection is one entry here,
/// one variant above and its table in a migration.
#[derive(Debug)]
pub struct Spec {
    /// Table name, also its name on the command line and in `/healthz`.
    pub table: &'static str,
    /// Singular name used in event types (`sequence.status_changed`).
    pub singular: &'static str,
    /// The top-level fields of a v1 record that the mirror reads as a type.
    pub fields: &'static [Field],
    pub jsonapi: Option<JsonApiSpec>,
}

/// A field the mirror reads as a type (SPEC §6): checked when the record
/// arrives, where another type makes the record wrong-shaped (skipped and
/// counted, never stored to fail a later read); with `column`, kept in the
/// table's column of its name, so that nothing reads it from `raw` again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    pub column: bool,
}

/// The JSON type a [`Field`] must have (or be null or absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string, kept as text.
    Text,
    /// `true` or `false`, kept as 1 or 0.
    Bool,
    /// An attribute naming another record (`project_id`): a string, or an
    /// integer kept as its digits (the reference gives no type for them).
    Id,
}

const fn column(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        column: true,
    }
}

const fn checked(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        column: false,
    }
}

/// How a JSON:API collection is listed (SPEC §8).
#[derive(Debug)]
pub struct JsonApiSpec {
    /// Its path under `jsonapi.base_url`, and its name in `jsonapi.resources`
    /// and `[jsonapi.schedule]`.
    pub path: &'static str,
    /// The reference documents `filter[updated_at__gte]`: incremental listings.
    pub incremental: bool,
    /// `filter[project_id]` narrows it to `jsonapi.projects`.
    pub by_project: bool,
    /// A change of `attributes.wf_step` is a status change (entries).
    pub step: bool,
    /// Listed unless `jsonapi.resources` says otherwise.
    pub default_on: bool,
    /// Its default interval in `[jsonapi.schedule]`.
    pub every: &'static str,
    /// Its table's columns besides the core ones and `updated_at`: attributes
    /// (or, for an `…_id`, the relationship's id) copied from each record.
    pub columns: &'static [&'static str],
}

const fn v1(table: &'static str, singular: &'static str, fields: &'static [Field]) -> Spec {
    Spec {
        table,
        singular,
        fields,
        jsonapi: None,
    }
}

/// [`JsonApiSpec`] flags: incremental, narrowed by project, wf_step, opt-in.
const INCREMENTAL: u8 = 1;
const BY_PROJECT: u8 = 2;
const STEP: u8 = 4;
const OPT_IN: u8 = 8;

const fn jsonapi(
    table: &'static str,
    singular: &'static str,
    path: &'static str,
    flags: u8,
    every: &'static str,
    columns: &'static [&'static str],
) -> Spec {
    Spec {
        table,
        singular,
        fields: &[],
        jsonapi: Some(JsonApiSpec {
            path,
            incremental: flags & INCREMENTAL != 0,
            by_project: flags & BY_PROJECT != 0,
            step: flags & STEP != 0,
            default_on: flags & OPT_IN == 0,
            every,
            columns,
        }),
    }
}

/// One entry per [`Resource`], in its order.
pub const SPECS: [Spec; 12] = [
    // a dataset's slug builds the item and sequence listings; is_sequence skips
    // the sequence listing of a dataset without any
    v1(
        "datasets",
        "dataset",
        &[
            column("slug", Kind::Text),
            column("is_sequence", Kind::Bool),
        ],
    ),
    v1("sequences", "sequence", &[]),
    v1("items", "item", &[]),
    // a slice's slug builds its membership listing
    v1("slices", "slice", &[column("slug", Kind::Text)]),
    // what `exports list` shows; the link is downloaded
    v1(
        "exports",
        "export",
        &[
            column("name", Kind::Text),
            column("format", Kind::Text),
            column("created_at", Kind::Text),
            checked("download_url", Kind::Text),
        ],
    ),
    jsonapi("projects", "project", "projects", INCREMENTAL, "5m", &[]),
    jsonapi(
        "jsonapi_datasets",
        "jsonapi_dataset",
        "datasets",
        INCREMENTAL | BY_PROJECT,
        "5m",
        &["project_id"],
    ),
    jsonapi(
        "entries",
        "entry",
        "entries",
        BY_PROJECT | STEP,
        "60s",
        &["project_id", "dataset_id", "wf_step"],
    ),
    jsonapi(
        "annotations",
        "annotation",
        "annotations",
        BY_PROJECT | OPT_IN,
        "1h",
        &["project_id", "dataset_id", "entry_id"],
    ),
    jsonapi(
        "note_feeds",
        "note_feed",
        "note_feeds",
        INCREMENTAL | BY_PROJECT,
        "60s",
        &[
            "project_id",
            "dataset_id",
            "entry_id",
            "annotation_id",
            "anchor_type",
        ],
    ),
    jsonapi(
        "note_comments",
        "note_comment",
        "note_comments",
        INCREMENTAL,
        "60s",
        &["note_feed_id"],
    ),
    jsonapi(
        "project_members",
        "project_member",
        "project_members",
        BY_PROJECT,
        "1h",
        &["project_id"],
    ),
];

impl Resource {
    pub const ALL: [Resource; 12] = [
        Resource::Datasets,
        Resource::Sequences,
        Resource::Items,
        Resource::Slices,
        Resource::Exports,
        Resource::Projects,
        Resource::JsonapiDatasets,
        Resource::Entries,
        Resource::Annotations,
        Resource::NoteFeeds,
        Resource::NoteComments,
        Resource::ProjectMembers,
    ];

    pub fn spec(self) -> &'static Spec {
        &SPECS[self as usize]
    }

    /// Table name, also the CLI name.
    pub fn table(self) -> &'static str {
        self.spec().table
    }

    /// Singular name used in event types (`sequence.status_changed`).
    pub fn singular(self) -> &'static str {
        self.spec().singular
    }

    /// How it is listed, for a JSON:API collection.
    pub fn jsonapi(self) -> Option<&'static JsonApiSpec> {
        self.spec().jsonapi.as_ref()
    }

    /// The columns its table has besides the core ones, each filled from the
    /// record: the [`Field`]s kept as columns for a v1 resource; `updated_at`
    /// and [`JsonApiSpec::columns`] for a JSON:API collection.
    pub fn columns(self) -> Vec<&'static str> {
        match self.jsonapi() {
            Some(j) => std::iter::once("updated_at")
                .chain(j.columns.iter().copied())
                .collect(),
            None => self
                .spec()
                .fields
                .iter()
                .filter(|f| f.column)
                .map(|f| f.name)
                .collect(),
        }
    }

    /// By table name (`note_feeds`, `jsonapi_datasets`, `items`).
    pub fn parse(s: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.table() == s)
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.table())
    }
}

/// The API key; its Debug and Display never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(s: impl Into<String>) -> ApiKey {
        ApiKey(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Compared on SIGHUP: an unchanged configuration changes nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub api: ApiConfig,
    pub scope: ScopeConfig,
    /// Every collection's interval, v1 and JSON:API.
    pub schedule: HashMap<Resource, Duration>,
    /// `[jsonapi]`: the second service, when its `base_url` is set.
    pub jsonapi: Option<JsonApiConfig>,
    /// `store.path`: the SQLite mirror (when `store_pg` is None).
    pub store_path: PathBuf,
    /// `store.url` (with `store.schema` and the password): the mirror in PostgreSQL.
    pub store_pg: Option<crate::store::postgres::Target>,
    pub downloads: DownloadsConfig,
    pub emit_initial: bool,
    /// `events.retention`: settled events older than this are pruned.
    pub events_retention: Duration,
    /// `store.keep_deleted`: rows tombstoned longer ago than this are pruned.
    pub keep_deleted: Duration,
    /// `store.max_wal`: past this, while a reader holds the WAL, writes wait.
    pub max_wal: u64,
    pub sinks: Vec<SinkConfig>,
    /// `[http] listen`: where `run` serves /healthz and /metrics (None: off).
    pub http_listen: Option<std::net::SocketAddr>,
    /// `[serve]`: `run` also answers the API from the mirror (None: off).
    pub serve: Option<crate::serve::Settings>,
    /// `[log] level`: a tracing filter, used when RUST_LOG is not set.
    pub log_level: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    pub base_url: Url,
    pub key: ApiKey,
    pub requests_per_second: f64,
    pub burst: u32,
    pub timeout: Duration,
    pub page_size: u32,
    /// Requests in flight at once, all within the one quota (`api.concurrency`).
    pub concurrency: u32,
    /// The largest decoded body of one API response (`api.max_response_bytes`).
    pub max_response_bytes: u64,
    /// The longest a `Retry-After` or `X-RateLimit-Reset` may pause requests (`api.max_wait`).
    pub max_wait: Duration,
    pub max_retries: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// `[jsonapi]` (SPEC §8).
#[derive(Debug, Clone, PartialEq)]
pub struct JsonApiConfig {
    /// Its base URL, key and quota, with `[api]`'s timeouts, retries and bounds.
    pub api: ApiConfig,
    /// The collections listed, in [`Resource`] order.
    pub resources: Vec<Resource>,
    /// Project ids that narrow the collections listed by project; empty = all.
    pub projects: Vec<String>,
    /// A complete listing of each collection at least this often.
    pub full_every: Duration,
    /// Taken off an incremental watermark, for clocks and same-second writes.
    pub overlap: Duration,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScopeConfig {
    pub owners: Vec<String>,
    pub organizations: Vec<String>,
    pub datasets: Vec<String>,
    pub resources: Vec<Resource>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DownloadsConfig {
    pub enabled: bool,
    /// Storage links may lead to loopback and private addresses (SPEC §6).
    pub allow_private: bool,
    pub dir: PathBuf,
    pub concurrency: u32,
    pub backfill: bool,
    /// `downloads.max_archive_bytes`: an archive larger than this is refused
    /// (before its first byte when its length is announced).
    pub max_archive_bytes: u64,
    /// `downloads.min_free`: a download without a length stops when free space
    /// falls under this.
    pub min_free: u64,
    /// `downloads.proxy`: the one proxy storage requests go through (none from
    /// the environment: the download guard must see where they connect).
    pub proxy: Option<Url>,
    /// `downloads.target`: archives end in object storage, not in `dir`.
    pub target: Option<StorageTarget>,
}

/// Where archives are uploaded (SPEC §10).
#[derive(Debug, Clone, PartialEq)]
pub struct StorageTarget {
    pub url: Url,
    pub region: Option<String>,
    pub endpoint: Option<Url>,
    pub allow_http: bool,
}

#[derive(Clone, Default, PartialEq)]
pub struct SinkConfig {
    pub kind: String,
    /// Its identity in the outbox: `name`, else derived from its target (see
    /// [`sink_name`]), so reordering sinks keeps each one's place.
    pub name: String,
    /// The name an unnamed sink had before names were derived (`<type>-<index>`),
    /// whose saved place it takes over.
    pub legacy_name: Option<String>,
    /// `from = "start"`: a new sink gets every event already stored; by default
    /// it starts after the newest one.
    pub from_start: bool,
    pub path: Option<PathBuf>,
    pub url: Option<String>,
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub events: Vec<String>,
}

/// Never shows the secret, nor a URL's path or query (a Slack webhook URL is a
/// secret in itself).
impl fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkConfig")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("from_start", &self.from_start)
            .field("path", &self.path)
            .field("url", &self.url.as_deref().map(url_origin))
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .field("events", &self.events)
            .finish()
    }
}

/// Scheme, host and port of a URL, nothing that could be a secret.
fn url_origin(url: &str) -> String {
    Url::parse(url).map_or_else(
        |_| "<not a URL>".into(),
        |u| u.origin().ascii_serialization(),
    )
}

/// The name of a sink without `name`: its type and target, so it stays the same
/// when sinks are reordered. A URL is named by its host and a hash of the whole
/// (a Slack URL's path is its secret).
pub fn sink_name(kind: &str, path: Option<&Path>, url: Option<&str>) -> String {
    use sha2::Digest;
    match (kind, path, url) {
        ("file", Some(p), _) => format!("file:{}", p.display()),
        (_, _, Some(u)) => {
            let host = Url::parse(u)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_default();
            let hash = hex::encode(&sha2::Sha256::digest(u.as_bytes())[..4]);
            format!("{kind}:{host}:{hash}")
        }
        _ => kind.to_string(),
    }
}

/// The most requests `api.concurrency` lets be in flight: more only queues on the
/// rate limit, and each listing in flight holds its pages in memory.
pub const MAX_CONCURRENCY: u32 = 64;

// ---- the file's shape, before validation ----

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    api: RawApi,
    scope: RawScope,
    schedule: RawSchedule,
    store: RawStore,
    downloads: RawDownloads,
    events: RawEvents,
    sinks: Vec<RawSink>,
    http: RawHttp,
    log: RawLog,
    jsonapi: RawJsonApi,
    serve: RawServe,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServe {
    /// `host:port`; "" or "off": `run` does not serve (`serve` uses the default).
    listen: String,
    /// One client key a line (`#` comments); required off loopback.
    api_keys_file: Option<PathBuf>,
    max_connections: usize,
}

impl Default for RawServe {
    fn default() -> Self {
        RawServe {
            listen: String::new(),
            api_keys_file: None,
            max_connections: 256,
        }
    }
}

impl RawDownloads {
    fn storage_target(
        &self,
        p: &mut Vec<String>,
        env: &HashMap<String, String>,
    ) -> Option<StorageTarget> {
        let target = self.target.trim();
        let st = &self.storage;
        if target.is_empty() {
            if st.region.is_some() || st.endpoint.is_some() || st.allow_http {
                p.push(
                    "downloads.storage: set downloads.target too (s3://bucket/prefix, …)".into(),
                );
            }
            return None;
        }
        let url = match crate::download::bucket::check_target(target) {
            Ok(u) => u,
            Err(e) => {
                p.push(e);
                return None;
            }
        };
        let endpoint = match st.endpoint.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(e) => match Url::parse(e) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
                _ => {
                    p.push(format!(
                        "downloads.storage.endpoint: expected a URL such as \"http://127.0.0.1:9000\", got {e:?}"
                    ));
                    return None;
                }
            },
        };
        if st.allow_http {
            // the endpoint in the config, else the one the environment names
            let named = endpoint.clone().or_else(|| {
                ["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
                    .iter()
                    .find_map(|k| env.get(*k).and_then(|e| Url::parse(e).ok()))
            });
            if !named.as_ref().is_some_and(is_loopback) {
                p.push(
                    "downloads.storage.allow_http: only for an endpoint on loopback (downloads.storage.endpoint or AWS_ENDPOINT_URL); anywhere else archives and keys would cross the network unencrypted".into(),
                );
            }
        }
        let t = StorageTarget {
            url,
            region: st.region.clone().filter(|r| !r.trim().is_empty()),
            endpoint,
            allow_http: st.allow_http,
        };
        // what the store's own builder refuses (no network is touched)
        if let Err(e) = crate::download::bucket::Bucket::open(&t) {
            p.push(e);
        }
        Some(t)
    }
}

/// Where `avala-mirror serve` listens when `serve.listen` names nothing.
pub const SERVE_LISTEN: &str = "127.0.0.1:8484";

impl RawServe {
    /// The settings, or the problems with them. `standalone`: for the `serve`
    /// command, which listens at [`SERVE_LISTEN`] when `listen` is unset.
    fn settings(
        &self,
        p: &mut Vec<String>,
        organizations: &[String],
        standalone: bool,
    ) -> Option<crate::serve::Settings> {
        let listen = match self.listen.trim() {
            "" | "off" if standalone => SERVE_LISTEN,
            "" | "off" => return None,
            addr => addr,
        };
        let Some(addr) = listen_addr(listen) else {
            p.push(format!(
                "serve.listen: expected host:port such as \"{SERVE_LISTEN}\", got {listen:?}"
            ));
            return None;
        };
        let keys = match &self.api_keys_file {
            None => None,
            Some(file) => match std::fs::read_to_string(file) {
                Ok(text) => {
                    let keys: std::collections::HashSet<String> = text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_string)
                        .collect();
                    if keys.is_empty() {
                        p.push(format!(
                            "serve.api_keys_file: {} holds no key (one a line)",
                            file.display()
                        ));
                    }
                    Some(keys)
                }
                Err(e) => {
                    p.push(format!(
                        "serve.api_keys_file: cannot read {}: {e}",
                        file.display()
                    ));
                    None
                }
            },
        };
        if !addr.ip().is_loopback() && self.api_keys_file.is_none() {
            p.push(format!(
                "serve.listen: {listen} is off loopback, which opens the mirror to the network; name the keys clients must send in serve.api_keys_file"
            ));
        }
        if !(1..=65_536).contains(&self.max_connections) {
            p.push(format!(
                "serve.max_connections: must be 1..=65536, got {}",
                self.max_connections
            ));
        }
        Some(crate::serve::Settings {
            listen: addr,
            keys,
            max_connections: self.max_connections,
            organizations: organizations.to_vec(),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawJsonApi {
    base_url: Option<String>,
    api_key_file: Option<PathBuf>,
    requests_per_second: f64,
    burst: u32,
    page_size: u32,
    resources: Vec<String>,
    projects: Vec<String>,
    full_every: String,
    overlap: String,
    schedule: HashMap<String, String>,
}

impl Default for RawJsonApi {
    fn default() -> Self {
        RawJsonApi {
            base_url: None,
            api_key_file: None,
            requests_per_second: 5.0,
            burst: 5,
            page_size: 1000,
            resources: jsonapi_collections()
                .filter(|(_, j)| j.default_on)
                .map(|(_, j)| j.path.to_string())
                .collect(),
            projects: vec![],
            full_every: "1h".into(),
            overlap: "2m".into(),
            schedule: HashMap::new(),
        }
    }
}

impl Resource {
    /// Every JSON:API collection, in order.
    pub fn jsonapi_all() -> Vec<Resource> {
        jsonapi_collections().map(|(r, _)| r).collect()
    }
}

/// The JSON:API collections with how each is listed.
fn jsonapi_collections() -> impl Iterator<Item = (Resource, &'static JsonApiSpec)> {
    Resource::ALL
        .into_iter()
        .filter_map(|r| Some((r, r.jsonapi()?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawApi {
    base_url: String,
    api_key_file: Option<PathBuf>,
    requests_per_second: f64,
    burst: u32,
    timeout: String,
    page_size: u32,
    concurrency: u32,
    max_response_bytes: String,
    max_wait: String,
    max_retries: u32,
    backoff_min: String,
    backoff_max: String,
}

impl Default for RawApi {
    fn default() -> Self {
        RawApi {
            base_url: "https://api.avala.ai/api/v1".into(),
            api_key_file: None,
            requests_per_second: 5.0,
            burst: 5,
            timeout: "30s".into(),
            page_size: 100,
            concurrency: 8,
            max_response_bytes: "64MiB".into(),
            max_wait: "15m".into(),
            max_retries: 6,
            backoff_min: "500ms".into(),
            backoff_max: "60s".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawScope {
    owners: Vec<String>,
    organizations: Vec<String>,
    datasets: Vec<String>,
    resources: Vec<String>,
}

impl Default for RawScope {
    fn default() -> Self {
        RawScope {
            owners: vec![],
            organizations: vec![],
            datasets: vec![],
            resources: Resource::ALL
                .iter()
                .filter(|r| r.jsonapi().is_none())
                .map(|r| r.table().to_string())
                .collect(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSchedule {
    datasets: String,
    sequences: String,
    items: String,
    slices: String,
    exports: String,
}

impl Default for RawSchedule {
    fn default() -> Self {
        RawSchedule {
            datasets: "5m".into(),
            sequences: "60s".into(),
            items: "1h".into(),
            slices: "10m".into(),
            exports: "10s".into(),
        }
    }
}

/// `serve` reads SQLite's file; on PostgreSQL the mirror is already a
/// database others query (a replica API over it is not in this version).
const SERVE_NEEDS_SQLITE: &str = "serve: answers from a SQLite mirror (store.path); with store.url, \
     query PostgreSQL directly, or serve a SQLite mirror kept beside it";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    /// None: `mirror.db`, unless `url` is set.
    path: Option<PathBuf>,
    url: String,
    schema: String,
    password_file: Option<PathBuf>,
    keep_deleted: String,
    max_wal: String,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            path: None,
            url: String::new(),
            schema: "avala_mirror".into(),
            password_file: None,
            keep_deleted: "30d".into(),
            max_wal: "1GiB".into(),
        }
    }
}

impl RawStore {
    fn path(&self) -> PathBuf {
        self.path.clone().unwrap_or_else(|| "mirror.db".into())
    }

    /// Where the mirror is: `store.url` (PostgreSQL) or `store.path`.
    fn location(
        &self,
        p: &mut Vec<String>,
        env: &HashMap<String, String>,
    ) -> Option<crate::store::Location> {
        use crate::store::{Location, postgres};
        if self.url.is_empty() {
            return Some(Location::Sqlite(self.path()));
        }
        if let Some(path) = &self.path {
            p.push(format!(
                "store.path ({}) and store.url are both set: the mirror is in one place; remove one",
                path.display()
            ));
            return None;
        }
        let password = postgres::Password {
            file: self.password_file.as_deref(),
            env,
        };
        match postgres::Target::parse(&self.url, &self.schema, password) {
            Ok(t) => Some(Location::Postgres(Box::new(t))),
            Err(e) => {
                p.push(e);
                None
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDownloads {
    enabled: bool,
    allow_private: Option<bool>,
    dir: PathBuf,
    concurrency: u32,
    backfill: bool,
    max_archive_bytes: String,
    min_free: String,
    proxy: Option<String>,
    /// `s3://bucket/prefix`, `gs://…`, `az://…`, `file:///…`; "" for `dir` alone.
    target: String,
    storage: RawStorage,
}

/// `[downloads.storage]`: what a user prefers to write in the config rather
/// than the environment the cloud's own tools read.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawStorage {
    region: Option<String>,
    endpoint: Option<String>,
    /// Plain http to the endpoint: for a loopback one only (a local MinIO).
    allow_http: bool,
}

impl Default for RawDownloads {
    fn default() -> Self {
        RawDownloads {
            enabled: true,
            allow_private: None,
            dir: "exports".into(),
            concurrency: 2,
            backfill: false,
            max_archive_bytes: "64GiB".into(),
            min_free: "1GiB".into(),
            target: String::new(),
            storage: RawStorage::default(),
            proxy: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawEvents {
    emit_initial: bool,
    retention: String,
}

impl Default for RawEvents {
    fn default() -> Self {
        RawEvents {
            emit_initial: false,
            retention: "90d".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHttp {
    /// `host:port`, or "" / "off" for no server.
    listen: String,
    /// Serve off loopback too (SPEC §6): /healthz and /metrics open to the network.
    allow_remote: bool,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            listen: "127.0.0.1:9187".into(),
            allow_remote: false,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    #[serde(rename = "type")]
    kind: String,
    name: Option<String>,
    path: Option<PathBuf>,
    url: Option<String>,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    events: Option<Vec<String>>,
    from: Option<String>,
}

/// Where the configuration file is: `--config`, `$AVALA_MIRROR_CONFIG`,
/// `./avala-mirror.toml`, `/etc/avala-mirror/config.toml`, in that order. With
/// none of them, `None` when `AVALA_MIRROR__SECTION__KEY` variables configure the
/// mirror on their own (every other key at its default).
pub fn find_config_path(
    flag: Option<&Path>,
    env: &HashMap<String, String>,
) -> Result<Option<PathBuf>, ConfigError> {
    if let Some(p) = flag {
        return Ok(Some(p.to_path_buf()));
    }
    if let Some(p) = env.get("AVALA_MIRROR_CONFIG") {
        return Ok(Some(PathBuf::from(p)));
    }
    for p in ["avala-mirror.toml", "/etc/avala-mirror/config.toml"] {
        if Path::new(p).exists() {
            return Ok(Some(PathBuf::from(p)));
        }
    }
    if env.keys().any(|k| k.starts_with("AVALA_MIRROR__")) {
        return Ok(None);
    }
    Err(ConfigError(vec![
        "no configuration: pass --config PATH, set AVALA_MIRROR_CONFIG, create ./avala-mirror.toml (see config/avala-mirror.toml), or set AVALA_MIRROR__SECTION__KEY variables".into(),
    ]))
}

impl Config {
    /// Loads and validates `path` with overrides from `env` (the process environment,
    /// passed in so nothing else reads it). No network is touched.
    pub fn load(path: Option<&Path>, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        RawConfig::read(path, env)?.validate(env)
    }

    /// Every collection mirrored: the v1 resources in scope, then the JSON:API
    /// collections when that service is on.
    pub fn resources(&self) -> Vec<Resource> {
        let jsonapi = self.jsonapi.iter().flat_map(|j| j.resources.iter());
        self.scope
            .resources
            .iter()
            .chain(jsonapi)
            .copied()
            .collect()
    }

    /// `store.path` and `[serve]`, for `avala-mirror serve`: no key is needed,
    /// and nothing else is checked.
    pub fn load_serve(
        path: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<(PathBuf, crate::serve::Settings), ConfigError> {
        let raw = RawConfig::read(path, env)?;
        let mut p = vec![];
        let settings = raw.serve.settings(&mut p, &raw.scope.organizations, true);
        if !raw.store.url.is_empty() {
            p.push(SERVE_NEEDS_SQLITE.into());
        }
        match settings {
            Some(s) if p.is_empty() => Ok((raw.store.path(), s)),
            _ => Err(ConfigError(p)),
        }
    }

    /// Only where the mirror is (`store.path`, or `store.url` and its
    /// password), for the commands that only read it: no key is needed, and
    /// nothing else is checked.
    pub fn load_location(
        path: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<crate::store::Location, ConfigError> {
        let raw = RawConfig::read(path, env)?;
        let mut p = vec![];
        match raw.store.location(&mut p, env) {
            Some(at) if p.is_empty() => Ok(at),
            _ => Err(ConfigError(p)),
        }
    }
}

impl RawConfig {
    /// The file (if any) with its environment overrides, before validation.
    fn read(path: Option<&Path>, env: &HashMap<String, String>) -> Result<RawConfig, ConfigError> {
        if let Some(path) = path.filter(|p| !p.exists()) {
            return Err(ConfigError(vec![format!(
                "configuration file {} does not exist",
                path.display()
            )]));
        }
        let env_source = config::Environment::with_prefix("AVALA_MIRROR")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("scope.owners")
            .with_list_parse_key("scope.organizations")
            .with_list_parse_key("scope.datasets")
            .with_list_parse_key("scope.resources")
            .with_list_parse_key("jsonapi.resources")
            .with_list_parse_key("jsonapi.projects")
            .source(Some(env.clone()));
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let origin = path.map_or("the environment".into(), |p| p.display().to_string());
        let built = builder
            .add_source(env_source)
            .build()
            .map_err(|e| ConfigError(vec![format!("{origin}: {e}")]))?;
        let whole = match built.clone().try_deserialize() {
            Ok(raw) => return Ok(raw),
            Err(e) => e,
        };
        // serde stops at the first error: each section on its own names them all
        let mut problems = Vec::new();
        section::<RawApi>(&built, "api", &origin, &mut problems);
        section::<RawScope>(&built, "scope", &origin, &mut problems);
        section::<RawSchedule>(&built, "schedule", &origin, &mut problems);
        section::<RawStore>(&built, "store", &origin, &mut problems);
        section::<RawDownloads>(&built, "downloads", &origin, &mut problems);
        section::<RawEvents>(&built, "events", &origin, &mut problems);
        section::<Vec<RawSink>>(&built, "sinks", &origin, &mut problems);
        section::<RawHttp>(&built, "http", &origin, &mut problems);
        section::<RawLog>(&built, "log", &origin, &mut problems);
        section::<RawJsonApi>(&built, "jsonapi", &origin, &mut problems);
        if problems.is_empty() {
            problems.push(format!("{origin}: {whole}"));
        }
        Err(ConfigError(problems))
    }
}

/// The problem with one section of the configuration, if any (absent is fine).
fn section<T: serde::de::DeserializeOwned>(
    built: &config::Config,
    key: &str,
    origin: &str,
    problems: &mut Vec<String>,
) {
    match built.get::<T>(key) {
        Ok(_) | Err(config::ConfigError::NotFound(_)) => {}
        Err(e) => problems.push(format!("{origin}: [{key}] {e}")),
    }
}

impl Config {
    /// Where the mirror is: `store.url`'s PostgreSQL, else the SQLite file.
    pub fn location(&self) -> crate::store::Location {
        match &self.store_pg {
            Some(t) => crate::store::Location::Postgres(Box::new(t.clone())),
            None => crate::store::Location::Sqlite(self.store_path.clone()),
        }
    }
}

impl Config {
    /// Every key at its default, for an API, a key, a scope and a database
    /// (the demo, the tests and the benchmarks start from this).
    pub fn defaults(
        base_url: &Url,
        key: &str,
        owners: &[&str],
        organizations: &[&str],
        store_path: &Path,
    ) -> Result<Config, ConfigError> {
        let mut raw = RawConfig::default();
        raw.api.base_url = base_url.to_string();
        raw.scope.owners = owners.iter().map(|s| s.to_string()).collect();
        raw.scope.organizations = organizations.iter().map(|s| s.to_string()).collect();
        raw.store.path = Some(store_path.to_path_buf());
        raw.http.listen = "off".into();
        raw.validate(&HashMap::from([(
            "AVALA_API_KEY".to_string(),
            key.to_string(),
        )]))
    }
}

impl Config {
    /// Turns the JSON:API service on at `base_url`, every other `[jsonapi]` key
    /// at its default (the demo, the tests and the benchmarks).
    pub fn enable_jsonapi(&mut self, base_url: &Url) -> Result<(), ConfigError> {
        let raw = RawJsonApi {
            base_url: Some(base_url.to_string()),
            ..RawJsonApi::default()
        };
        let mut p = Vec::new();
        let j = raw.check(&mut p, &mut self.schedule, Some(&self.api.key));
        match j {
            Some(j) if p.is_empty() => {
                self.jsonapi = Some(j.with(&self.api));
                Ok(())
            }
            _ => Err(ConfigError(p)),
        }
    }
}

/// `host:port` with an IP address, or `localhost:port` (loopback).
fn listen_addr(addr: &str) -> Option<std::net::SocketAddr> {
    if let Some(port) = addr.strip_prefix("localhost:") {
        return Some((std::net::Ipv4Addr::LOCALHOST, port.parse().ok()?).into());
    }
    addr.parse().ok()
}

fn duration(problems: &mut Vec<String>, key: &str, value: &str) -> Duration {
    match humantime::parse_duration(value) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            problems.push(format!("{key}: must be longer than zero, got \"{value}\""));
            Duration::from_secs(1)
        }
        Err(e) => {
            problems.push(format!(
                "{key}: \"{value}\" is not a duration ({e}); write e.g. \"30s\", \"5m\", \"1h\""
            ));
            Duration::from_secs(1)
        }
    }
}

/// `dir` exists, is a directory, and this process may create files in it.
fn usable_dir(problems: &mut Vec<String>, key: &str, dir: &Path) {
    let shown = dir.display();
    if !dir.exists() {
        problems.push(format!(
            "{key}: the directory {shown} does not exist; create it or choose another"
        ));
    } else if !dir.is_dir() {
        problems.push(format!("{key}: {shown} is not a directory"));
    } else if let Err(e) = rustix::fs::access(dir, rustix::fs::Access::WRITE_OK) {
        problems.push(format!("{key}: cannot write in {shown}: {e}"));
    }
}

/// The key in `file`, or the problem with it.
fn key_file(problems: &mut Vec<String>, key: &str, file: &Path) -> Option<ApiKey> {
    match std::fs::read_to_string(file) {
        Ok(k) if !k.trim().is_empty() => Some(ApiKey::new(k.trim())),
        Ok(_) => {
            problems.push(format!("{key}: {} is empty", file.display()));
            None
        }
        Err(e) => {
            problems.push(format!("{key}: cannot read {}: {e}", file.display()));
            None
        }
    }
}

/// `[jsonapi]` checked, before `[api]`'s shared settings are added.
struct CheckedJsonApi {
    base_url: Url,
    key: Option<ApiKey>,
    requests_per_second: f64,
    burst: u32,
    page_size: u32,
    resources: Vec<Resource>,
    projects: Vec<String>,
    full_every: Duration,
    overlap: Duration,
}

impl CheckedJsonApi {
    /// The configuration, with `[api]`'s timeouts, retries and bounds (and its
    /// key, unless `jsonapi.api_key_file` gave one).
    fn with(self, api: &ApiConfig) -> JsonApiConfig {
        JsonApiConfig {
            api: ApiConfig {
                base_url: self.base_url,
                key: self.key.unwrap_or_else(|| api.key.clone()),
                requests_per_second: self.requests_per_second,
                burst: self.burst,
                page_size: self.page_size,
                ..api.clone()
            },
            resources: self.resources,
            projects: self.projects,
            full_every: self.full_every,
            overlap: self.overlap,
        }
    }
}

impl RawJsonApi {
    /// Checks the section and puts its intervals in `schedule`; None when the
    /// service is off (no `base_url`).
    fn check(
        self,
        p: &mut Vec<String>,
        schedule: &mut HashMap<Resource, Duration>,
        api_key: Option<&ApiKey>,
    ) -> Option<CheckedJsonApi> {
        let names = || {
            jsonapi_collections()
                .map(|(_, j)| j.path)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let by_name = |name: &str| jsonapi_collections().find(|(_, j)| j.path == name);
        for (res, j) in jsonapi_collections() {
            schedule.insert(
                res,
                duration(p, &format!("jsonapi.schedule.{}", j.path), j.every),
            );
        }
        for (name, every) in &self.schedule {
            match by_name(name) {
                Some((res, _)) => {
                    let d = duration(p, &format!("jsonapi.schedule.{name}"), every);
                    schedule.insert(res, d);
                }
                None => p.push(format!(
                    "jsonapi.schedule.{name}: unknown collection; expected one of {}",
                    names()
                )),
            }
        }
        let mut resources = Vec::new();
        for name in &self.resources {
            match by_name(name) {
                Some((res, _)) if !resources.contains(&res) => resources.push(res),
                Some(_) => {}
                None => p.push(format!(
                    "jsonapi.resources: unknown collection \"{name}\"; expected one of {}",
                    names()
                )),
            }
        }
        resources.sort();
        let full_every = duration(p, "jsonapi.full_every", &self.full_every);
        let overlap = match humantime::parse_duration(&self.overlap) {
            Ok(d) => d,
            Err(e) => {
                p.push(format!(
                    "jsonapi.overlap: \"{}\" is not a duration ({e})",
                    self.overlap
                ));
                Duration::ZERO
            }
        };
        let rps = self.requests_per_second;
        if !(rps.is_finite() && rps > 0.0) {
            p.push(format!(
                "jsonapi.requests_per_second: must be a positive number, got {rps}"
            ));
        }
        if self.burst == 0 {
            p.push("jsonapi.burst: must be at least 1".into());
        }
        // the reference's default and maximum
        if !(1..=1000).contains(&self.page_size) {
            p.push(format!(
                "jsonapi.page_size: must be 1..=1000, got {}",
                self.page_size
            ));
        }
        let base_url = check_base_url(p, "jsonapi.base_url", self.base_url.as_deref()?);
        let key = match &self.api_key_file {
            Some(file) => key_file(p, "jsonapi.api_key_file", file),
            None => api_key.cloned(),
        };
        Some(CheckedJsonApi {
            base_url,
            key,
            requests_per_second: rps,
            burst: self.burst,
            page_size: self.page_size,
            resources,
            projects: self.projects,
            full_every,
            overlap,
        })
    }
}

/// A size such as "64MiB", "512KiB", "1GiB" or a number of bytes.
fn byte_size(problems: &mut Vec<String>, key: &str, value: &str) -> u64 {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let unit_bytes = match unit.trim() {
        "" | "B" => Some(1),
        "KiB" => Some(1 << 10),
        "MiB" => Some(1 << 20),
        "GiB" => Some(1 << 30),
        _ => None,
    };
    match (digits.parse::<u64>(), unit_bytes) {
        (Ok(n), Some(u)) if n > 0 => n.saturating_mul(u),
        _ => {
            problems.push(format!(
                "{key}: \"{value}\" is not a size; write e.g. \"64MiB\", \"512KiB\", \"1GiB\" or a number of bytes"
            ));
            1
        }
    }
}

/// http:// is allowed only for loopback hosts (as the official SDK does).
fn check_base_url(problems: &mut Vec<String>, key: &str, value: &str) -> Url {
    let fallback = || Url::parse("https://invalid.invalid/").expect("static URL");
    let url = match Url::parse(value) {
        Ok(u) => u,
        Err(e) => {
            problems.push(format!("{key}: \"{value}\" is not a URL ({e})"));
            return fallback();
        }
    };
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => problems.push(format!(
            "{key}: plain http:// is only allowed for loopback hosts, got \"{value}\"; use https://"
        )),
        other => problems.push(format!(
            "{key}: scheme \"{other}\" is not supported; use https://"
        )),
    }
    if !url.username().is_empty() || url.password().is_some() {
        problems.push(format!("{key}: must not carry credentials"));
    }
    url
}

pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

impl RawConfig {
    fn validate(self, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let mut p = Vec::new();
        let base_url = check_base_url(&mut p, "api.base_url", &self.api.base_url);
        // by default only with an API on loopback (the simulator's storage is too)
        let allow_private = self
            .downloads
            .allow_private
            .unwrap_or_else(|| is_loopback(&base_url));

        let key = match (env.get("AVALA_API_KEY"), &self.api.api_key_file) {
            (Some(k), _) if !k.trim().is_empty() => Some(ApiKey::new(k.trim())),
            (_, Some(file)) => key_file(&mut p, "api.api_key_file", file),
            _ => match env.get("CREDENTIALS_DIRECTORY") {
                // systemd's LoadCredential=api_key:…
                Some(dir) if Path::new(dir).join("api_key").is_file() => {
                    let file = Path::new(dir).join("api_key");
                    match std::fs::read_to_string(&file) {
                        Ok(k) if !k.trim().is_empty() => Some(ApiKey::new(k.trim())),
                        _ => {
                            p.push(format!(
                                "api key: the credential {} is empty or unreadable",
                                file.display()
                            ));
                            None
                        }
                    }
                }
                _ => {
                    p.push(
                        "api key: missing; set AVALA_API_KEY, api.api_key_file, or a systemd credential named api_key"
                            .into(),
                    );
                    None
                }
            },
        };

        let http_listen = match self.http.listen.trim() {
            "" | "off" => None,
            addr => match listen_addr(addr) {
                Some(a) if !a.ip().is_loopback() && !self.http.allow_remote => {
                    p.push(format!(
                        "http.listen: {addr} is off loopback, which opens /healthz and /metrics to the network; set http.allow_remote = true if that is meant"
                    ));
                    None
                }
                Some(a) => Some(a),
                None => {
                    p.push(format!(
                        "http.listen: expected host:port such as \"127.0.0.1:9187\" (or \"off\"), got {addr:?}"
                    ));
                    None
                }
            },
        };
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            p.push(format!("log.level: {e}"));
        }
        let serve = self
            .serve
            .settings(&mut p, &self.scope.organizations, false);
        if serve.is_some() && !self.store.url.is_empty() {
            p.push(SERVE_NEEDS_SQLITE.into());
        }

        let rps = self.api.requests_per_second;
        if !(rps.is_finite() && rps > 0.0) {
            p.push(format!(
                "api.requests_per_second: must be a positive number, got {rps}"
            ));
        }
        if self.api.burst == 0 {
            p.push("api.burst: must be at least 1".into());
        }
        if !(1..=10_000).contains(&self.api.page_size) {
            p.push(format!(
                "api.page_size: must be 1..=10000, got {}",
                self.api.page_size
            ));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.api.concurrency) {
            p.push(format!(
                "api.concurrency: must be 1..={MAX_CONCURRENCY}, got {}",
                self.api.concurrency
            ));
        }
        let max_response_bytes = byte_size(
            &mut p,
            "api.max_response_bytes",
            &self.api.max_response_bytes,
        );
        let timeout = duration(&mut p, "api.timeout", &self.api.timeout);
        let max_wait = duration(&mut p, "api.max_wait", &self.api.max_wait);
        let events_retention = duration(&mut p, "events.retention", &self.events.retention);
        let keep_deleted = duration(&mut p, "store.keep_deleted", &self.store.keep_deleted);
        let max_wal = byte_size(&mut p, "store.max_wal", &self.store.max_wal);
        let store_pg = match self.store.location(&mut p, env) {
            Some(crate::store::Location::Postgres(t)) => Some(*t),
            _ => None,
        };
        let backoff_min = duration(&mut p, "api.backoff_min", &self.api.backoff_min);
        let backoff_max = duration(&mut p, "api.backoff_max", &self.api.backoff_max);
        if backoff_min > backoff_max {
            p.push(format!(
                "api.backoff_min ({}) is longer than api.backoff_max ({})",
                self.api.backoff_min, self.api.backoff_max
            ));
        }

        let mut resources = Vec::new();
        for r in &self.scope.resources {
            match Resource::parse(r).filter(|r| r.jsonapi().is_none()) {
                Some(res) if !resources.contains(&res) => resources.push(res),
                Some(_) => {}
                None => p.push(format!(
                    "scope.resources: unknown resource \"{r}\"; expected datasets, sequences, items, slices or exports"
                )),
            }
        }
        resources.sort();
        for needs in [Resource::Sequences, Resource::Items] {
            if resources.contains(&needs) && !resources.contains(&Resource::Datasets) {
                p.push(format!(
                    "scope.resources: \"{needs}\" needs \"datasets\" (its list of datasets comes from the datasets mirror)"
                ));
            }
        }
        let owners_needed = resources.iter().any(|r| *r != Resource::Exports);
        if owners_needed && self.scope.owners.is_empty() && self.scope.organizations.is_empty() {
            p.push(
                "scope.owners / scope.organizations: name at least one owner or organization"
                    .into(),
            );
        }

        let s = &self.schedule;
        let mut schedule = HashMap::from([
            (
                Resource::Datasets,
                duration(&mut p, "schedule.datasets", &s.datasets),
            ),
            (
                Resource::Sequences,
                duration(&mut p, "schedule.sequences", &s.sequences),
            ),
            (
                Resource::Items,
                duration(&mut p, "schedule.items", &s.items),
            ),
            (
                Resource::Slices,
                duration(&mut p, "schedule.slices", &s.slices),
            ),
            (
                Resource::Exports,
                duration(&mut p, "schedule.exports", &s.exports),
            ),
        ]);

        let jsonapi = self.jsonapi.check(&mut p, &mut schedule, key.as_ref());

        if self.downloads.concurrency == 0 {
            p.push("downloads.concurrency: must be at least 1".into());
        }
        let max_archive_bytes = byte_size(
            &mut p,
            "downloads.max_archive_bytes",
            &self.downloads.max_archive_bytes,
        );
        let min_free = byte_size(&mut p, "downloads.min_free", &self.downloads.min_free);
        let proxy = match self.downloads.proxy.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(v) => match Url::parse(v) {
                // the HTTP client is built without SOCKS support
                Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
                _ => {
                    p.push(format!(
                        "downloads.proxy: expected a proxy URL such as \"http://proxy.internal:3128\", got {v:?}"
                    ));
                    None
                }
            },
        };
        let target = self.downloads.storage_target(&mut p, env);
        // an unusable path is the configuration's fault: exit 2 now, not 1 at the
        // first write (which systemd would restart every 10 s)
        if self.store.url.is_empty() {
            let path = self.store.path();
            let store_dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            usable_dir(&mut p, "store.path", store_dir);
        }
        if self.downloads.enabled {
            let dir = &self.downloads.dir;
            match dir.parent() {
                _ if dir.exists() => usable_dir(&mut p, "downloads.dir", dir),
                Some(parent) if !parent.as_os_str().is_empty() => {
                    usable_dir(&mut p, "downloads.dir", parent)
                }
                _ => usable_dir(&mut p, "downloads.dir", Path::new(".")),
            }
        }

        let mut sinks = Vec::new();
        for (i, s) in self.sinks.into_iter().enumerate() {
            let key = format!("sinks[{i}]");
            match s.kind.as_str() {
                "log" => {}
                "file" if s.path.is_none() => p.push(format!("{key}.path: required for a file sink")),
                "webhook" | "slack" if s.url.is_none() => {
                    p.push(format!("{key}.url: required for a {} sink", s.kind))
                }
                "file" | "webhook" | "slack" => {}
                other => p.push(format!(
                    "{key}.type: unknown sink type \"{other}\"; expected log, file, webhook or slack"
                )),
            }
            if let Some(secret) = &s.secret
                && !secret.starts_with("whsec_")
            {
                p.push(format!("{key}.secret: must start with whsec_"));
            }
            let from_start = match s.from.as_deref() {
                None | Some("end") => false,
                Some("start") => true,
                Some(other) => {
                    p.push(format!(
                        "{key}.from: \"{other}\" is not \"start\" (every stored event) or \"end\" (only new ones, the default)"
                    ));
                    false
                }
            };
            let legacy_name = s.name.is_none().then(|| format!("{}-{i}", s.kind));
            let sink = SinkConfig {
                name: s
                    .name
                    .unwrap_or_else(|| sink_name(&s.kind, s.path.as_deref(), s.url.as_deref())),
                legacy_name,
                from_start,
                kind: s.kind,
                path: s.path,
                url: s.url,
                secret: s.secret,
                secret_file: s.secret_file,
                events: s.events.unwrap_or_else(|| vec!["*".into()]),
            };
            if p.is_empty()
                && let Err(e) = crate::events::sinks::Sink::from_config(&sink)
            {
                p.extend(e.0);
            }
            if sinks.iter().any(|o: &SinkConfig| o.name == sink.name) {
                p.push(format!(
                    "{key}.name: \"{}\" is used by another sink; give each its own `name`",
                    sink.name
                ));
            }
            sinks.push(sink);
        }

        if !p.is_empty() {
            return Err(ConfigError(p));
        }
        let api = ApiConfig {
            base_url,
            key: key.expect("checked above"),
            requests_per_second: rps,
            burst: self.api.burst,
            timeout,
            page_size: self.api.page_size,
            concurrency: self.api.concurrency,
            max_response_bytes,
            max_wait,
            max_retries: self.api.max_retries,
            backoff_min,
            backoff_max,
        };
        let jsonapi = jsonapi.map(|j| j.with(&api));
        Ok(Config {
            api,
            jsonapi,
            scope: ScopeConfig {
                owners: self.scope.owners,
                organizations: self.scope.organizations,
                datasets: self.scope.datasets,
                resources,
            },
            schedule,
            store_path: self.store.path(),
            store_pg,
            downloads: DownloadsConfig {
                enabled: self.downloads.enabled,
                allow_private,
                dir: self.downloads.dir,
                concurrency: self.downloads.concurrency,
                backfill: self.downloads.backfill,
                max_archive_bytes,
                min_free,
                proxy,
                target,
            },
            emit_initial: self.events.emit_initial,
            events_retention,
            keep_deleted,
            max_wal,
            sinks,
            http_listen,
            serve,
            log_level: self.log.level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(Some(&path), &env)
    }

    const MIN: &str = "[scope]\nowners = [\"johndoe\"]\n";

    #[test]
    fn the_jsonapi_service_is_off_until_it_has_a_base_url() {
        let c = load(MIN, &[("AVALA_API_KEY", "k")]).unwrap();
        assert!(c.jsonapi.is_none());
        assert_eq!(c.resources(), c.scope.resources);
        let c = load(
            &format!(
                "{MIN}[jsonapi]\nbase_url = \"https://dataset-api.example.com\"\nresources = [\"entries\", \"note_feeds\", \"annotations\"]\nprojects = [\"p1\"]\n[jsonapi.schedule]\nentries = \"15s\"\n"
            ),
            &[("AVALA_API_KEY", "k"), ("AVALA_MIRROR__JSONAPI__PAGE_SIZE", "500")],
        )
        .unwrap();
        let j = c.jsonapi.as_ref().unwrap();
        assert_eq!(
            j.resources,
            vec![
                Resource::Entries,
                Resource::Annotations,
                Resource::NoteFeeds
            ]
        );
        assert_eq!((j.api.page_size, j.api.key.expose()), (500, "k"));
        assert_eq!(j.projects, vec!["p1"]);
        assert_eq!(c.schedule[&Resource::Entries], Duration::from_secs(15));
        assert_eq!(c.schedule[&Resource::NoteFeeds], Duration::from_secs(60));
        assert!(c.resources().contains(&Resource::Annotations));
        // every problem, each by its key
        let err = load(
            &format!(
                "{MIN}[jsonapi]\nbase_url = \"http://dataset-api.example.com\"\npage_size = 5000\nresources = [\"comments\"]\nfull_every = \"often\"\n[jsonapi.schedule]\nnotes = \"1m\"\n"
            ),
            &[("AVALA_API_KEY", "k")],
        )
        .unwrap_err()
        .to_string();
        for key in [
            "jsonapi.base_url: plain http://",
            "jsonapi.page_size",
            "jsonapi.resources: unknown collection \"comments\"",
            "jsonapi.full_every",
            "jsonapi.schedule.notes",
        ] {
            assert!(err.contains(key), "{key}: {err}");
        }
        // the v1 scope does not take a JSON:API collection
        let err = load(
            "[scope]\nowners = [\"johndoe\"]\nresources = [\"note_feeds\"]\n",
            &[("AVALA_API_KEY", "k")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("scope.resources"), "{err}");
    }

    #[test]
    fn defaults_and_env_override() {
        let c = load(
            MIN,
            &[
                ("AVALA_API_KEY", "k"),
                ("AVALA_MIRROR__API__PAGE_SIZE", "250"),
                ("AVALA_MIRROR__SCOPE__ORGANIZATIONS", "acme,beta"),
            ],
        )
        .unwrap();
        assert_eq!(c.api.page_size, 250);
        assert_eq!(c.scope.organizations, vec!["acme", "beta"]);
        assert_eq!(c.schedule[&Resource::Exports], Duration::from_secs(10));
        assert_eq!(c.api.base_url.as_str(), "https://api.avala.ai/api/v1");
    }

    #[test]
    fn every_problem_named_by_key() {
        let err = load(
            "[api]\nbase_url = \"http://example.com/api/v1\"\ntimeout = \"soon\"\n[schedule]\nitems = \"1 fortnight\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "api.base_url",
            "api.timeout",
            "schedule.items",
            "AVALA_API_KEY",
            "scope.owners",
        ] {
            assert!(err.contains(needle), "{needle} missing from: {err}");
        }
    }

    #[test]
    fn a_storage_target_is_checked() {
        let env = [("AVALA_API_KEY", "k")];
        let c = load(MIN, &env).unwrap();
        assert_eq!(c.downloads.target, None, "the local dir by default");
        let ok = format!(
            "{MIN}[downloads]\ntarget = \"s3://bucket/team/avala\"\n[downloads.storage]\nregion = \"eu-west-1\"\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true\n"
        );
        let t = load(&ok, &env).unwrap().downloads.target.unwrap();
        assert_eq!(t.url.as_str(), "s3://bucket/team/avala");
        assert_eq!(
            (t.region.as_deref(), t.allow_http),
            (Some("eu-west-1"), true)
        );
        for (toml, says) in [
            ("[downloads]\ntarget = \"ftp://host/x\"", "downloads.target"),
            ("[downloads]\ntarget = \"s3:///x\"", "names no bucket"),
            (
                "[downloads.storage]\nregion = \"eu-west-1\"",
                "set downloads.target too",
            ),
            (
                "[downloads]\ntarget = \"s3://b/p\"\n[downloads.storage]\nendpoint = \"http://minio.internal:9000\"\nallow_http = true",
                "downloads.storage.allow_http",
            ),
            (
                "[downloads]\ntarget = \"s3://b/p\"\n[downloads.storage]\nendpoint = \"minio:9000\"",
                "downloads.storage.endpoint",
            ),
        ] {
            let err = load(&format!("{MIN}{toml}\n"), &env)
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{toml}: {err}");
        }
        // the endpoint may come from the environment, as the AWS tools read it
        let env = [
            ("AVALA_API_KEY", "k"),
            ("AWS_ENDPOINT_URL", "http://localhost:9000"),
        ];
        let toml = format!(
            "{MIN}[downloads]\ntarget = \"s3://b/p\"\n[downloads.storage]\nallow_http = true\n"
        );
        assert!(load(&toml, &env).is_ok());
    }

    #[test]
    fn serve_is_checked_and_refuses_the_network_without_client_keys() {
        let env = [("AVALA_API_KEY", "k")];
        assert_eq!(
            load(MIN, &env).unwrap().serve,
            None,
            "run serves only when asked"
        );
        let c = load(
            &format!("{MIN}[serve]\nlisten = \"localhost:8484\"\n"),
            &env,
        )
        .unwrap();
        let s = c.serve.unwrap();
        assert_eq!(
            (s.listen.port(), s.keys, s.max_connections),
            (8484, None, 256)
        );
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "# nobody yet\n").unwrap();
        for (serve, key) in [
            ("listen = \"0.0.0.0:8484\"", "serve.api_keys_file"),
            ("listen = \"nowhere\"", "serve.listen"),
            (
                "listen = \"127.0.0.1:1\"\nmax_connections = 0",
                "serve.max_connections",
            ),
            (
                "listen = \"127.0.0.1:1\"\napi_keys_file = \"/no/such/file\"",
                "serve.api_keys_file",
            ),
            (
                &format!(
                    "listen = \"127.0.0.1:1\"\napi_keys_file = \"{}\"",
                    empty.display()
                ),
                "holds no key",
            ),
        ] {
            let err = load(&format!("{MIN}[serve]\n{serve}\n"), &env)
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{serve}: {err}");
        }
        let keys = dir.path().join("keys");
        std::fs::write(&keys, "a\n\n  b  \n# c\n").unwrap();
        let toml = format!(
            "{MIN}[serve]\nlisten = \"0.0.0.0:8484\"\napi_keys_file = \"{}\"\n",
            keys.display()
        );
        let keys = load(&toml, &env).unwrap().serve.unwrap().keys.unwrap();
        assert_eq!(keys, ["a", "b"].iter().map(|k| k.to_string()).collect());
    }

    #[test]
    fn http_listen_and_log_level_are_checked() {
        let env = [("AVALA_API_KEY", "k")];
        let c = load(MIN, &env).unwrap();
        assert_eq!(c.http_listen, Some("127.0.0.1:9187".parse().unwrap()));
        let c = load(&format!("{MIN}[http]\nlisten = \"off\"\n"), &env).unwrap();
        assert_eq!(c.http_listen, None);
        let err = load(
            &format!("{MIN}[http]\nlisten = \"localhost\"\n[log]\nlevel = \"avala_mirror=loud\"\n"),
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("http.listen") && err.contains("log.level"),
            "{err}"
        );
        // a proxy the storage client can use, or none
        let toml = format!("{MIN}[downloads]\nproxy = \"http://proxy.internal:3128\"\n");
        assert!(load(&toml, &env).unwrap().downloads.proxy.is_some());
        for bad in ["socks5://proxy.internal:1080", "proxy.internal:3128"] {
            let toml = format!("{MIN}[downloads]\nproxy = \"{bad}\"\n");
            let err = load(&toml, &env).unwrap_err().to_string();
            assert!(err.contains("downloads.proxy"), "{err}");
        }
        // off loopback only when asked for
        let c = load(&format!("{MIN}[http]\nlisten = \"localhost:9999\"\n"), &env).unwrap();
        assert_eq!(c.http_listen, Some("127.0.0.1:9999".parse().unwrap()));
        for remote in ["0.0.0.0:9187", "[::]:9187", "192.0.2.7:80"] {
            let toml = format!("{MIN}[http]\nlisten = \"{remote}\"\n");
            let err = load(&toml, &env).unwrap_err().to_string();
            assert!(
                err.contains("http.listen") && err.contains("http.allow_remote = true"),
                "{err}"
            );
            let toml = format!("{MIN}[http]\nlisten = \"{remote}\"\nallow_remote = true\n");
            assert_eq!(load(&toml, &env).unwrap().http_listen, remote.parse().ok());
        }
    }

    #[test]
    fn a_systemd_credential_is_the_key_of_last_resort() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("api_key"), "cred-key\n").unwrap();
        let creds = dir.path().to_str().unwrap();
        let c = load(MIN, &[("CREDENTIALS_DIRECTORY", creds)]).unwrap();
        assert_eq!(c.api.key.expose(), "cred-key");
        let c = load(
            MIN,
            &[
                ("CREDENTIALS_DIRECTORY", creds),
                ("AVALA_API_KEY", "env-key"),
            ],
        )
        .unwrap();
        assert_eq!(c.api.key.expose(), "env-key");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = load("[api]\nbase_ur = \"x\"\n", &[("AVALA_API_KEY", "k")]).unwrap_err();
        assert!(err.to_string().contains("base_ur"), "{err}");
        let err = load(
            MIN,
            &[("AVALA_API_KEY", "k"), ("AVALA_MIRROR__STORE__PTH", "x")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("pth"), "{err}");
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/avala-mirror.toml");
        let env = HashMap::from([("AVALA_API_KEY".to_string(), "k".to_string())]);
        let c = Config::load(Some(&path), &env).unwrap();
        assert_eq!(c.sinks.len(), 1);
        assert_eq!(c.scope.resources.len(), 5);
    }

    #[test]
    fn loopback_http_is_allowed_and_key_file_read() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "secret\n").unwrap();
        let toml = format!(
            "[api]\nbase_url = \"http://127.0.0.1:9/api/v1\"\napi_key_file = \"{}\"\n{MIN}",
            key.display()
        );
        let c = load(&toml, &[]).unwrap();
        assert_eq!(c.api.key.expose(), "secret");
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn sinks_are_named_by_their_target_and_their_secrets_never_show() {
        let toml = format!(
            "{MIN}[[sinks]]\ntype = \"slack\"\nurl = \"https://hooks.slack.com/services/T0/B0/sekrit-token\"\n\
             [[sinks]]\ntype = \"webhook\"\nurl = \"https://hooks.example.com/avala?token=sekrit-query\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nfrom = \"start\"\n\
             [[sinks]]\ntype = \"file\"\npath = \"events.jsonl\"\n[[sinks]]\ntype = \"log\"\n"
        );
        let c = load(&toml, &[("AVALA_API_KEY", "k")]).unwrap();
        let names: Vec<&str> = c.sinks.iter().map(|s| s.name.as_str()).collect();
        assert!(names[0].starts_with("slack:hooks.slack.com:"), "{names:?}");
        assert!(
            names[1].starts_with("webhook:hooks.example.com:"),
            "{names:?}"
        );
        assert_eq!(names[2..], ["file:events.jsonl", "log"]);
        assert_eq!(c.sinks[1].legacy_name.as_deref(), Some("webhook-1"));
        assert!(c.sinks[1].from_start && !c.sinks[0].from_start);
        let shown = format!("{c:?}");
        for secret in ["sekrit", "MfKQ9r8", "/services/"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(!names.concat().contains("sekrit"));

        let err = load(
            &format!(
                "{MIN}[[sinks]]\ntype = \"log\"\nfrom = \"beginning\"\n[[sinks]]\ntype = \"log\"\n"
            ),
            &[("AVALA_API_KEY", "k")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("sinks[0].from") && err.contains("sinks[1].name"),
            "{err}"
        );
    }

    #[test]
    fn sizes_are_read_with_their_unit_and_a_bad_one_is_named() {
        let env = [("AVALA_API_KEY", "k")];
        let c = load(MIN, &env).unwrap();
        assert_eq!(c.api.max_response_bytes, 64 << 20);
        let c = load(
            &format!("[api]\nmax_response_bytes = \"512KiB\"\n{MIN}"),
            &env,
        )
        .unwrap();
        assert_eq!(c.api.max_response_bytes, 512 << 10);
        for bad in ["lots", "64 MB", "0", "-1KiB"] {
            let err = load(
                &format!("[api]\nmax_response_bytes = \"{bad}\"\n{MIN}"),
                &env,
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("api.max_response_bytes"), "{bad}: {err}");
        }
    }

    #[test]
    fn every_type_error_at_once_and_unusable_paths_before_anything_runs() {
        let env = [("AVALA_API_KEY", "k")];
        // two wrong types in two sections, and backoff bounds the wrong way round
        let err = load(
            &format!(
                "{MIN}[api]\nburst = \"many\"\nbackoff_min = \"2m\"\nbackoff_max = \"1m\"\n[downloads]\nconcurrency = \"two\"\n"
            ),
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("[api]") && err.contains("[downloads]"),
            "{err}"
        );
        let err = load(
            &format!("{MIN}[api]\nbackoff_min = \"2m\"\nbackoff_max = \"1m\"\n"),
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("api.backoff_min (2m) is longer than api.backoff_max (1m)"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        for (path, says) in [
            (dir.path().join("missing/mirror.db"), "does not exist"),
            (file.join("mirror.db"), "is not a directory"),
        ] {
            let err = load(
                &format!(
                    "{MIN}[store]\npath = \"{}\"\n[downloads]\ndir = \"{}\"\n",
                    path.display(),
                    file.join("exports").display()
                ),
                &env,
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("store.path") && err.contains(says), "{err}");
            assert!(err.contains("downloads.dir"), "{err}");
            assert!(!dir.path().join("missing").exists(), "a parent was created");
        }
    }
}
