//! The command line (SPEC §1) and the dispatch to `commands/`. Errors are mapped to
//! exit codes here and nowhere else.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::commands;
use crate::config::{self, Config, Resource};
use crate::error::{self, EXIT_OK};

#[derive(Parser, Debug)]
#[command(
    name = "avala-mirror",
    version,
    about = "A local SQLite mirror of an Avala account, with change events"
)]
pub struct Cli {
    /// Configuration file (else $AVALA_MIRROR_CONFIG, ./avala-mirror.toml, /etc/avala-mirror/config.toml)
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Log format on stderr: text, or json (the default under systemd, i.e. with $JOURNAL_STREAM)
    #[arg(long, global = true, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// The mirror database, for the commands that only read it (status, events,
    /// exports list); else `store.path` of the configuration. No API key needed.
    #[arg(long, global = true)]
    pub db: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The daemon: every enabled resource on its schedule until SIGTERM/SIGINT
    Run,
    /// One complete cycle of every enabled resource, then exit (cron-friendly)
    Sync {
        /// Only this collection, by its table: datasets, sequences, items, slices,
        /// exports, or (JSON:API) projects, jsonapi_datasets, entries, annotations,
        /// note_feeds, note_comments, project_members
        #[arg(long, value_parser = parse_resource)]
        only: Option<Resource>,
    },
    /// Counts, last syncs and failures, from the local database only
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Answer the Avala API's read paths from the mirror, read-only, for scripts
    /// on the official SDK (AVALA_BASE_URL=http://127.0.0.1:8484/api/v1)
    Serve {
        /// host:port to listen on (default: serve.listen, else 127.0.0.1:8484)
        #[arg(long)]
        listen: Option<String>,
    },
    /// The change log from the database
    Events {
        #[command(subcommand)]
        action: Option<EventsAction>,
        /// After this event id (evt_…) or sequence number
        #[arg(long)]
        since: Option<String>,
        /// Only types matching this glob, e.g. 'sequence.*'
        #[arg(long = "type", default_value = "*")]
        kind: String,
        /// Keep printing new events as they are stored
        #[arg(long)]
        follow: bool,
        /// One JSON document per line (the SPEC §4 event)
        #[arg(long)]
        json: bool,
    },
    /// Export archives: list them, download one, or create one and wait for it
    Exports {
        #[command(subcommand)]
        action: ExportsAction,
    },
    /// Validate the configuration and make one API call
    Check,
    /// Run the built-in simulator and the mirror against it, in a local folder
    Demo {
        /// Where the demo's database goes
        #[arg(long, default_value = "avala-mirror-demo")]
        dir: PathBuf,
        /// How long to watch events after the first sync
        #[arg(long, default_value = "45s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// The built-in Avala API simulator alone
    Simulate {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// The key clients must send in X-Avala-Api-Key
        #[arg(long, default_value = "demo-key")]
        api_key: String,
        #[arg(long, default_value_t = 3)]
        datasets: usize,
        #[arg(long, default_value_t = 200)]
        items: u64,
        /// How often the world changes (0s: never)
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        tick: Duration,
        /// Size in bytes of each export archive on the storage address
        #[arg(long, default_value_t = 256 * 1024)]
        archive_bytes: u64,
        /// Added to every API answer, as a network's round trip would (e.g. 200ms)
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        latency: Duration,
    },
}

#[derive(Subcommand, Debug)]
pub enum ExportsAction {
    /// Exports in the mirror with their download status, size and path
    List {
        #[arg(long)]
        json: bool,
    },
    /// Download one export's archive now (resumes a partial one)
    Download {
        /// The export's uid
        uid: String,
    },
    /// Request a new export; with --wait follow it, with --download fetch it when done
    Create {
        /// Dataset uid to export (repeatable)
        #[arg(long = "dataset", num_args = 1..)]
        datasets: Vec<String>,
        /// Project uid to export (repeatable)
        #[arg(long = "project", num_args = 1..)]
        projects: Vec<String>,
        /// Slice uid to export (repeatable)
        #[arg(long = "slice", num_args = 1..)]
        slices: Vec<String>,
        #[arg(long, default_value = "avala-json-external", value_parser = ["avala-json-external", "YOLO"])]
        format: String,
        /// Export name (default: "avala-mirror <time>")
        #[arg(long)]
        name: Option<String>,
        /// Wait until the export is exported, failed or aborted
        #[arg(long)]
        wait: bool,
        /// Wait, then download the archive
        #[arg(long)]
        download: bool,
        /// How often to ask for the export's status while waiting
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        poll: Duration,
    },
}

#[derive(Subcommand, Debug)]
pub enum EventsAction {
    /// Send failed deliveries again (and re-enable a sink disabled by 410 Gone)
    Redeliver {
        /// Only this sink (its `name`, or `<type>-<index>` by default)
        #[arg(long)]
        sink: Option<String>,
        /// Only events after this id (evt_…) or sequence number
        #[arg(long)]
        since: Option<String>,
    },
}

fn parse_resource(s: &str) -> Result<Resource, String> {
    Resource::parse(s).ok_or_else(|| {
        let names: Vec<&str> = Resource::ALL.iter().map(|r| r.table()).collect();
        format!(
            "unknown collection {s:?}; expected one of {}",
            names.join(", ")
        )
    })
}

/// Runs the command; returns the process exit code.
pub fn run(cli: Cli) -> u8 {
    let env: HashMap<String, String> = std::env::vars().collect();
    let json = match cli.log_format.as_deref() {
        Some(f) => f == "json",
        None => env.contains_key("JOURNAL_STREAM"),
    };
    init_logging(&env, json, matches!(cli.command, Command::Demo { .. }));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return error::EXIT_WORK_FAILED;
        }
    };
    match runtime.block_on(dispatch(cli, env)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            error::exit_code(&e)
        }
    }
}

fn load(
    cli_config: Option<&std::path::Path>,
    env: &HashMap<String, String>,
) -> anyhow::Result<Arc<Config>> {
    let path = config::find_config_path(cli_config, env)?;
    let cfg = Config::load(path.as_deref(), env)?;
    apply_log_level(&cfg.log_level);
    Ok(Arc::new(cfg))
}

async fn dispatch(cli: Cli, env: HashMap<String, String>) -> anyhow::Result<u8> {
    let cfg_path = cli.config.as_deref();
    // the commands that only read: --db, or store.path alone (no key, nothing else checked)
    let db = || -> anyhow::Result<crate::store::Location> {
        match &cli.db {
            Some(db) => Ok(crate::store::Location::Sqlite(db.clone())),
            None => {
                let path = config::find_config_path(cfg_path, &env)?;
                Ok(Config::load_location(path.as_deref(), &env)?)
            }
        }
    };
    match cli.command {
        Command::Run => {
            let reload = || load(cfg_path, &env);
            commands::run::run(reload()?, reload).await
        }
        Command::Sync { only } => commands::sync::sync(load(cfg_path, &env)?, only).await,
        Command::Status { json } => commands::status::status(&db()?, json).await,
        Command::Serve { listen } => {
            let mut env = env.clone();
            if let Some(listen) = listen {
                env.insert("AVALA_MIRROR__SERVE__LISTEN".into(), listen);
            }
            // with --db, a configuration is optional: [serve] has defaults
            let path = match config::find_config_path(cfg_path, &env) {
                Err(_) if cli.db.is_some() => None,
                found => found?,
            };
            let (config_db, settings) = Config::load_serve(path.as_deref(), &env)?;
            let db = cli.db.clone().unwrap_or(config_db);
            commands::serve::serve(&db, settings).await
        }
        Command::Events {
            action: Some(EventsAction::Redeliver { sink, since }),
            ..
        } => {
            commands::events::redeliver(&*load(cfg_path, &env)?, sink.as_deref(), since.as_deref())
                .await
        }
        Command::Events {
            action: None,
            since,
            kind,
            follow,
            json,
        } => commands::events::events(&db()?, since.as_deref(), &kind, follow, json).await,
        Command::Exports {
            action: ExportsAction::List { json },
        } => commands::exports::list(&db()?, json).await,
        Command::Exports {
            action: ExportsAction::Download { uid },
        } => commands::exports::download(&*load(cfg_path, &env)?, &uid).await,
        Command::Exports {
            action:
                ExportsAction::Create {
                    datasets,
                    projects,
                    slices,
                    format,
                    name,
                    wait,
                    download,
                    poll,
                },
        } => {
            let args = commands::exports::CreateArgs {
                name,
                format,
                datasets,
                projects,
                slices,
                wait,
                download,
                poll,
            };
            commands::exports::create(&*load(cfg_path, &env)?, args).await
        }
        Command::Check => commands::check::check(load(cfg_path, &env)?).await,
        Command::Demo {
            dir,
            duration,
            seed,
        } => commands::demo::demo(&dir, duration, seed)
            .await
            .map(|_| EXIT_OK),
        Command::Simulate {
            listen,
            seed,
            api_key,
            datasets,
            items,
            tick,
            archive_bytes,
            latency,
        } => {
            let cfg = crate::sim::SimConfig {
                seed,
                api_key,
                datasets_per_owner: datasets,
                items_per_dataset: items,
                archive_bytes,
                ..Default::default()
            };
            commands::simulate::simulate(cfg, listen, tick, latency)
                .await
                .map(|_| EXIT_OK)
        }
    }
}

/// The log filter, replaceable once the configuration is read (`log.level`).
static LOG_FILTER: std::sync::OnceLock<
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>,
> = std::sync::OnceLock::new();

/// Logs on stderr, human or JSON; level from RUST_LOG, else `log.level` once the
/// configuration is read (default info; warn for the demo, whose screen is its own output).
fn init_logging(env: &HashMap<String, String>, json: bool, quiet: bool) {
    use tracing_subscriber::prelude::*;
    let from_env = env
        .get("RUST_LOG")
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok());
    let fixed = from_env.is_some() || quiet;
    let filter = from_env
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(if quiet { "warn" } else { "info" }));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = if json {
        fmt.json().flatten_event(true).boxed()
    } else {
        fmt.boxed()
    };
    // a warning or error repeats at most once a minute per cause (SPEC §6)
    let fmt = fmt.with_filter(crate::logging::OncePerCause::default());
    if tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .is_ok()
        && !fixed
    {
        let _ = LOG_FILTER.set(handle);
    }
}

/// Applies `log.level` from the configuration (unless RUST_LOG decided).
pub fn apply_log_level(level: &str) {
    if let (Some(h), Ok(f)) = (
        LOG_FILTER.get(),
        tracing_subscriber::EnvFilter::try_new(level),
    ) {
        let _ = h.reload(f);
    }
}
