//! Shared helpers: an in-process simulator on loopback, a fast config for it, and
//! readers for what a user would look at (rows, events, sync_state).
#![allow(dead_code)]

pub mod pg;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use avala_mirror::config::{Config, Resource};
use avala_mirror::error::ApiError;
use avala_mirror::sim::{SimConfig, Simulator};
use avala_mirror::store::Store;
use avala_mirror::sync::{CycleReport, Syncer};
use serde_json::Value;

pub struct TestEnv {
    pub sim: Simulator,
    pub dir: tempfile::TempDir,
    pub cfg: Config,
    /// The PostgreSQL cluster the mirror is in (`cfg.store_pg`), if it is.
    pub pg: Option<Arc<pg::Cluster>>,
}

pub fn small_world() -> SimConfig {
    SimConfig {
        seed: 7,
        api_key: "test-key-5f3a9c".into(),
        owners: vec!["johndoe".into()],
        organizations: vec!["acme-ai".into()],
        datasets_per_owner: 3,
        items_per_dataset: 60,
        sequences_per_dataset: 5,
        slices_per_owner: 1,
        exports: 3,
        default_page_size: 100,
        max_page_size: 1000,
        archive_bytes: 64 * 1024,
        jsonapi: Default::default(),
    }
}

pub async fn start(world: SimConfig) -> TestEnv {
    let sim = Simulator::start(world.clone(), "127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let owners: Vec<&str> = world.owners.iter().map(String::as_str).collect();
    let orgs: Vec<&str> = world.organizations.iter().map(String::as_str).collect();
    let mut cfg = Config::defaults(
        &sim.base_url(),
        &world.api_key,
        &owners,
        &orgs,
        &dir.path().join("mirror.db"),
    )
    .unwrap();
    cfg.api.requests_per_second = 2000.0;
    cfg.api.burst = 100;
    cfg.api.page_size = 25;
    cfg.api.max_retries = 8;
    cfg.api.backoff_min = Duration::from_millis(5);
    cfg.api.backoff_max = Duration::from_millis(40);
    cfg.api.timeout = Duration::from_secs(5);
    cfg.downloads.dir = dir.path().join("exports");
    TestEnv {
        sim,
        dir,
        cfg,
        pg: None,
    }
}

/// The backends a store test runs on: SQLite, and PostgreSQL when it is
/// installed (a throwaway cluster; skipped with a note otherwise).
pub fn backends() -> Vec<Option<Arc<pg::Cluster>>> {
    let mut all = vec![None];
    if let Some(c) = pg::Cluster::start() {
        all.push(Some(Arc::new(c)));
    }
    all
}

/// [`start`], with the mirror in `cluster`'s database `mirror` when given.
pub async fn start_on(world: SimConfig, cluster: Option<Arc<pg::Cluster>>) -> TestEnv {
    let mut env = start(world).await;
    if let Some(c) = cluster {
        let db = format!("mirror_{}", env.sim.base_url().port().unwrap());
        // (a database left by an earlier run on an AVALA_MIRROR_TEST_PG server)
        c.psql(&["-c", &format!("DROP DATABASE IF EXISTS {db}")], None);
        c.psql(&["-c", &format!("CREATE DATABASE {db}")], None);
        let env_vars = HashMap::new();
        let password = avala_mirror::store::postgres::Password {
            file: None,
            env: &env_vars,
        };
        let target = avala_mirror::store::postgres::Target::parse(
            &c.conninfo(&db),
            "avala_mirror",
            password,
        )
        .unwrap();
        env.cfg.store_pg = Some(target);
        env.pg = Some(c);
    }
    env
}

/// The simulator with only its JSON:API service mirrored (every collection,
/// annotations too), in pages of `page_size`.
pub async fn start_jsonapi(page_size: u32) -> TestEnv {
    start_jsonapi_on(page_size, None).await
}

/// [`start_jsonapi`] with the mirror in PostgreSQL when `cluster` is given.
pub async fn start_jsonapi_on(page_size: u32, cluster: Option<Arc<pg::Cluster>>) -> TestEnv {
    let mut env = start_on(small_world(), cluster).await;
    let url = env.sim.jsonapi_url();
    env.cfg.enable_jsonapi(&url).unwrap();
    env.cfg.scope.resources = vec![];
    let j = env.cfg.jsonapi.as_mut().unwrap();
    j.resources = Resource::jsonapi_all();
    j.api.requests_per_second = 2000.0;
    j.api.burst = 100;
    j.api.page_size = page_size;
    env
}

impl TestEnv {
    /// Which backend, for assertion messages.
    pub fn backend(&self) -> &'static str {
        if self.pg.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    /// The PostgreSQL database of the mirror (with [`start_on`]).
    pub fn pg_db(&self) -> String {
        format!("mirror_{}", self.sim.base_url().port().unwrap())
    }

    /// The store on either backend.
    pub async fn open(&self) -> Store {
        Store::open_config(&self.cfg).await.unwrap()
    }

    /// A syncer on either backend.
    pub async fn syncer_on(&self) -> Syncer {
        Syncer::new(Arc::new(self.cfg.clone()), self.open().await).unwrap()
    }

    /// One full cycle on either backend.
    pub async fn sync_on(&self) -> Result<Vec<CycleReport>, ApiError> {
        let s = self.syncer_on().await;
        avala_mirror::commands::sync::cycle(&s, &self.cfg.resources()).await
    }

    /// The rows of `sql` on either backend, as JSON objects by column (a
    /// `raw` or `payload` column parsed on SQLite, as jsonb is on PostgreSQL).
    pub fn query(&self, sql: &str) -> Vec<serde_json::Map<String, Value>> {
        if let Some(c) = &self.pg {
            return c.rows(&self.pg_db(), sql);
        }
        self.store().with(|c| {
            let mut st = c.prepare(sql).unwrap();
            let names: Vec<String> = st.column_names().iter().map(|n| n.to_string()).collect();
            st.query_map([], |r| {
                let mut m = serde_json::Map::new();
                for (k, name) in names.iter().enumerate() {
                    use rusqlite::types::ValueRef;
                    let v = match r.get_ref(k)? {
                        ValueRef::Null => Value::Null,
                        ValueRef::Integer(n) => n.into(),
                        ValueRef::Real(f) => f.into(),
                        ValueRef::Text(t) => {
                            let t = String::from_utf8_lossy(t).into_owned();
                            match name.as_str() {
                                "raw" | "payload" => serde_json::from_str(&t).unwrap(),
                                _ => t.into(),
                            }
                        }
                        ValueRef::Blob(b) => hex::encode(b).into(),
                    };
                    m.insert(name.clone(), v);
                }
                Ok(m)
            })
            .unwrap()
            .map(Result::unwrap)
            .collect()
        })
    }

    pub fn syncer(&self) -> Syncer {
        let store = Store::open(&self.cfg.store_path).unwrap();
        Syncer::new(Arc::new(self.cfg.clone()), store).unwrap()
    }

    /// One cycle of one collection; it must not fail.
    pub async fn sync_only(&self, res: Resource) {
        let report = self.syncer_on().await.sync_resource(res).await.unwrap();
        assert!(report.failures.is_empty(), "{report:?}");
    }

    /// One full `sync` cycle, as the command runs it.
    pub async fn sync(&self) -> Result<Vec<CycleReport>, ApiError> {
        self.sync_on().await
    }

    pub fn store(&self) -> Store {
        Store::open(&self.cfg.store_path).unwrap()
    }

    /// Present rows of a table: uid → (owner_name, dataset_slug, raw JSON).
    pub fn rows(&self, table: &str) -> HashMap<String, (Option<String>, Option<String>, Value)> {
        let text = |v: &Value| v.as_str().map(str::to_owned);
        self.query(&format!(
            "SELECT uid, owner_name, dataset_slug, raw FROM {table} WHERE deleted_at IS NULL"
        ))
        .into_iter()
        .map(|r| {
            let key = r["uid"].as_str().unwrap().to_string();
            (
                key,
                (
                    text(&r["owner_name"]),
                    text(&r["dataset_slug"]),
                    r["raw"].clone(),
                ),
            )
        })
        .collect()
    }

    /// Every event as (type, uid), in detection order.
    pub fn events(&self) -> Vec<(String, String)> {
        self.query("SELECT type, uid FROM events ORDER BY seq")
            .into_iter()
            .map(|r| {
                (
                    r["type"].as_str().unwrap().into(),
                    r["uid"].as_str().unwrap().into(),
                )
            })
            .collect()
    }

    /// Every event id, in detection order.
    pub fn event_ids(&self) -> Vec<String> {
        self.query("SELECT id FROM events ORDER BY seq")
            .into_iter()
            .map(|r| r["id"].as_str().unwrap().into())
            .collect()
    }

    pub fn deleted_at(&self, table: &str, uid: &str) -> Option<String> {
        let rows = self.query(&format!(
            "SELECT deleted_at FROM {table} WHERE uid = '{uid}'"
        ));
        rows[0]["deleted_at"].as_str().map(str::to_owned)
    }

    /// Writes a TOML config for the binary; `extra` is appended as is.
    pub fn write_config(&self, key_file_contents: &str, extra: &str) -> std::path::PathBuf {
        let key = self.dir.path().join("api_key");
        std::fs::write(&key, key_file_contents).unwrap();
        let path = self.dir.path().join("avala-mirror.toml");
        // no /healthz server unless the test asks for one (tests run side by side)
        let http = if extra.contains("[http]") {
            ""
        } else {
            "[http]\nlisten = \"off\"\n"
        };
        let toml = format!(
            "[api]\nbase_url = \"{}\"\napi_key_file = \"{}\"\nbackoff_min = \"5ms\"\nbackoff_max = \"20ms\"\nrequests_per_second = 500.0\nburst = 50\n\n[scope]\nowners = [\"johndoe\"]\norganizations = [\"acme-ai\"]\n\n[store]\npath = \"{}\"\n{http}{extra}",
            self.sim.base_url(),
            key.display(),
            self.cfg.store_path.display()
        );
        std::fs::write(&path, toml).unwrap();
        path
    }
}

/// Starts the built binary in the background (output discarded), for tests that signal or kill it.
pub fn spawn_binary(args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_avala-mirror"))
        .args(args)
        .env_remove("AVALA_API_KEY")
        .env_remove("AVALA_MIRROR_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true) // a failing test leaves no daemon behind
        .spawn()
        .unwrap()
}

/// Runs the built binary; returns (exit code, stdout, stderr).
pub async fn run_binary(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_avala-mirror"));
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("AVALA_API_KEY")
        .env_remove("AVALA_MIRROR_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("binary finished")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts the mirror holds exactly the simulator's present records, scoped right.
pub fn assert_mirror_equals_sim(env: &TestEnv) {
    let (datasets, sequences, items, slices, exports, members) = env.sim.world(|w| {
        let mut datasets = HashMap::new();
        let mut sequences = HashMap::new();
        let mut items = HashMap::new();
        for (i, d) in w.datasets.iter().enumerate().filter(|(_, d)| !d.deleted) {
            let v = w.dataset_json(i);
            datasets.insert(
                v["uid"].as_str().unwrap().to_string(),
                (Some(d.owner.clone()), None, v),
            );
            for s in w.sequences_of(i) {
                let v = w.sequence_json(s);
                sequences.insert(
                    v["uid"].as_str().unwrap().to_string(),
                    (Some(d.owner.clone()), Some(d.slug.clone()), v),
                );
            }
            for v in w.all_items(i) {
                items.insert(
                    v["uid"].as_str().unwrap().to_string(),
                    (Some(d.owner.clone()), Some(d.slug.clone()), v),
                );
            }
        }
        let mut slices = HashMap::new();
        let mut members = HashMap::new();
        for (i, s) in w.slices.iter().enumerate().filter(|(_, s)| !s.deleted) {
            let v = w.slice_json(i);
            slices.insert(s.uid.clone(), (Some(s.owner.clone()), None, v));
            let mut m: Vec<String> = w
                .slice_members(i)
                .into_iter()
                .map(|j| w.item_uid(s.dataset, j))
                .collect();
            m.sort();
            members.insert(s.uid.clone(), m);
        }
        let exports = (0..w.exports.len())
            .filter(|&i| !w.exports[i].deleted)
            .map(|i| (w.exports[i].uid.clone(), (None, None, w.export_json(i))))
            .collect::<HashMap<_, _>>();
        (datasets, sequences, items, slices, exports, members)
    });
    assert_eq!(env.rows("datasets"), datasets, "datasets");
    assert_eq!(env.rows("sequences"), sequences, "sequences");
    assert_eq!(env.rows("items").len(), items.len(), "items count");
    assert_eq!(env.rows("items"), items, "items");
    assert_eq!(env.rows("slices"), slices, "slices");
    assert_eq!(env.rows("exports"), exports, "exports");
    for (slice, expected) in members {
        let got: Vec<String> = env
            .query(&format!(
                "SELECT item_uid FROM slice_items WHERE slice_uid = '{slice}' ORDER BY item_uid"
            ))
            .into_iter()
            .map(|r| r["item_uid"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, expected, "members of slice {slice}");
    }
}

/// The peak RSS (VmHWM) of a running process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Waits for `child` to exit, sampling its peak RSS every few milliseconds:
/// (its exit status, the peak in KiB).
pub async fn exit_and_peak_rss(
    child: &mut tokio::process::Child,
) -> (std::process::ExitStatus, u64) {
    let pid = child.id().unwrap();
    let mut peak = 0;
    loop {
        if let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (status, peak);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A loopback `host:port` that nothing listens on (a server that is down).
pub fn nothing_listens() -> std::net::SocketAddr {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    closed.local_addr().unwrap()
}

/// Waits for an observable condition, failing after 30 s (never a bare sleep).
pub async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A sync through a server that allows less than the mirror is configured for
/// (`server_rps`, burst 2, 429 with Retry-After 1 s): it converges, never above
/// the configured rate and burst, and mirrors everything.
pub async fn assert_a_rate_limit_storm_converges(env: &TestEnv, server_rps: f64) {
    env.sim.faults(|f| {
        f.rate_limit = Some((server_rps, 2));
        f.retry_after_secs = 1;
    });
    let reports = env.sync().await.unwrap();
    assert!(reports.iter().all(|r| r.failures.is_empty()), "{reports:?}");
    let (limited, most_in_a_second) = env.sim.faults(|f| {
        (
            f.log.iter().filter(|l| l.status == 429).count(),
            f.max_in_window(Duration::from_secs(1)),
        )
    });
    assert!(limited > 0, "the storm happened");
    let (rps, burst) = (
        env.cfg.api.requests_per_second as usize,
        env.cfg.api.burst as usize,
    );
    assert!(
        most_in_a_second <= rps + burst,
        "{most_in_a_second} requests in one second (configured {rps}/s, burst {burst})"
    );
    env.sim.faults(|f| f.rate_limit = None);
    assert_mirror_equals_sim(env);
}

/// Polls the exports through `s` while other work runs: how many requests of
/// that work reached the API between the poll's start and its own request.
pub async fn requests_ahead_of_an_export_poll(env: &TestEnv, s: &Syncer) -> usize {
    let before = env.sim.faults(|f| f.log.len());
    s.sync_resource(avala_mirror::config::Resource::Exports)
        .await
        .unwrap();
    env.sim.faults(|f| {
        f.log[before..]
            .iter()
            .position(|l| l.path == "/exports/")
            .expect("exports polled")
    })
}
