//! The built-in Avala API simulator: a stateful world served over HTTP on loopback,
//! with both pagination styles, absolute `next` links, auth, 429s and fault knobs.
//! `avala-mirror simulate` runs it alone; `demo` and the tests run it in-process.

pub mod faults;
pub mod jsonapi;
mod jsonapi_routes;
pub mod routes;
pub mod storage;
pub mod world;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::any;
use reqwest::Url;
use tokio::task::JoinHandle;

pub use faults::Faults;
pub use world::{SimConfig, World};

pub struct SimState {
    pub world: Mutex<World>,
    pub faults: Mutex<Faults>,
    pub api_key: String,
    /// `http://127.0.0.1:PORT/api/v1`, the base of every `next` link.
    pub api_base: String,
    /// `http://127.0.0.1:PORT/jsonapi`, the JSON:API service's base.
    pub jsonapi_base: String,
    pub cfg: SimConfig,
    pub archives: storage::Archives,
}

/// A running simulator; stops when dropped.
pub struct Simulator {
    pub state: Arc<SimState>,
    pub addr: SocketAddr,
    /// The storage address serving export archives.
    pub storage_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Simulator {
    /// Binds `listen` (port 0 for any) and serves; with `tick`, the world steps on its own.
    pub async fn start(
        cfg: SimConfig,
        listen: SocketAddr,
        tick: Option<Duration>,
    ) -> std::io::Result<Simulator> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let storage_listener =
            tokio::net::TcpListener::bind(SocketAddr::new(listen.ip(), 0)).await?;
        let storage_addr = storage_listener.local_addr()?;
        let state = Arc::new(SimState {
            world: Mutex::new(World::new(&cfg, format!("http://{storage_addr}"))),
            archives: storage::Archives::new(cfg.archive_bytes, cfg.seed)?,
            faults: Mutex::new(Faults::new(cfg.seed)),
            api_key: cfg.api_key.clone(),
            api_base: format!("http://{addr}/api/v1"),
            jsonapi_base: format!("http://{addr}/jsonapi"),
            cfg,
        });
        let app = Router::new()
            .route("/api/v1/{*rest}", any(routes::api))
            .route("/jsonapi/{*rest}", any(routes::jsonapi))
            .with_state(state.clone());
        let storage_app = Router::new()
            .route("/{*rest}", any(storage::serve))
            .with_state(state.clone());
        let mut tasks = vec![
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!("simulator stopped: {e}");
                }
            }),
            tokio::spawn(async move {
                if let Err(e) = axum::serve(storage_listener, storage_app).await {
                    tracing::error!("simulator storage stopped: {e}");
                }
            }),
        ];
        if let Some(tick) = tick {
            let st = state.clone();
            tasks.push(tokio::spawn(async move {
                let mut every = tokio::time::interval(tick);
                every.tick().await;
                loop {
                    every.tick().await;
                    st.world.lock().expect("world lock").step();
                }
            }));
        }
        Ok(Simulator {
            state,
            addr,
            storage_addr,
            tasks,
        })
    }

    pub fn base_url(&self) -> Url {
        Url::parse(&self.state.api_base).expect("valid base URL")
    }

    /// The JSON:API service's base URL.
    pub fn jsonapi_url(&self) -> Url {
        Url::parse(&self.state.jsonapi_base).expect("valid base URL")
    }

    pub fn world<R>(&self, f: impl FnOnce(&mut World) -> R) -> R {
        f(&mut self.state.world.lock().expect("world lock"))
    }

    pub fn faults<R>(&self, f: impl FnOnce(&mut Faults) -> R) -> R {
        f(&mut self.state.faults.lock().expect("faults lock"))
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
