//! The nonstop server: agent hub, store, REST API and live stream of responses.
//!
//! # Overview
//! - [`serve`] binds, opens the store, and runs the server on the current tokio runtime;
//!   it returns a [`ServerHandle`] with the bound address and a way to stop.
//! - [`Config`] says where to listen and where the data lives.
//! - [`store::Store`] is the storage interface; [`sqlite::SqliteStore`] the default.
//!
//! Agents speak the protocol of [`nonstop_model::wire`] on `/agent/v1/ws` (or over HTTP on
//! `/agent/v1/poll` and `/agent/v1/responses`); people and tools use `/api/v1/…`, described
//! by the OpenAPI document at `/api/v1/openapi.json`.
//!
//! # Routes and tokens
//! | route | token |
//! | --- | --- |
//! | `GET /healthz`, `GET /api/v1/openapi.json`, the web IDE (`GET /`, `GET /assets/…`) | none (the page asks for a token through the API) |
//! | `GET/POST /api/v1/rules`, `GET/DELETE /api/v1/rules/{id}`, `POST /api/v1/rules/{id}/enable` and `/disable`, `GET /api/v1/templates`, `GET /api/v1/agents`, `GET /api/v1/responses`, `GET /api/v1/responses/stream` (SSE), the sources of the IDE (`GET /api/v1/services`, `GET/PUT /api/v1/services/{service}/source`, `GET …/files`, `GET …/files/{*path}`, `GET …/resolve`; see [`sources`]) | admin (`Authorization: Bearer`, or `?token=` once on a GET, which sets a cookie) |
//! | `GET /api/v1/metrics` (the series of metric rules as JSON, summed per service) | admin, as above |
//! | `GET/POST /api/v1/targets`, `GET/DELETE /api/v1/targets/{name}`, `POST /api/v1/targets/{name}/test` (where responses are delivered; see [`outbox`]) | admin, as above |
//! | `GET /metrics` (the same in the Prometheus text format, for a scrape) | admin, as `Authorization: Bearer` |
//! | `GET /agent/v1/ws`, `GET /agent/v1/poll`, `POST /agent/v1/responses` | agent or admin |
//!
//! Request bodies are bounded ([`MAX_API_BODY`], [`MAX_AGENT_BODY`]); every error is
//! `{"error": "…"}` with a message that says what to do.
//!
//! # State
//! Everything replicas would share lives in the [`store::Store`]: rules (with their server
//! state `active`/`done`/`expired` and hit count), agents, statuses per rule and agent, and a
//! bounded window of responses ([`store::Retention`]). A rule's max hits hold over all agents:
//! the count is one atomic `UPDATE`, and the rule turns `done` (and leaves every agent's set)
//! when it is reached. Agents report the cumulative series of their metric rules; the store
//! keeps each agent's newest report per series (so a repeated report changes nothing), a
//! metric rule's hits are the sum of its series' counts, and its max hits end it the same
//! way. In memory there is only what one replica serves: its WebSocket
//! sessions and its live streams.
//!
//! # Example
//! ```no_run
//! # async fn run() -> Result<(), nonstop_server::ServeError> {
//! let config = nonstop_server::Config::new("127.0.0.1:0".parse().unwrap(), "/tmp/nonstop".into());
//! let server = nonstop_server::serve(config).await?;
//! println!("listening on {}", server.addr());
//! server.shutdown().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod api;
mod app;
mod auth;
mod checks;
pub mod clock;
pub mod conn;
mod error;
mod hub;
pub mod ids;
mod metrics;
pub mod outbox;
pub mod postgres;
mod replicas;
pub mod sources;
mod sql;
pub mod sqlite;
pub mod store;
mod targets;
pub mod tls;
mod ui;
pub mod validate;
mod writer;

use crate::app::App;
use crate::error::ApiError;
pub use crate::ids::Tokens;
use crate::store::{Retention, Store, StoreError};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Largest request body on `/api/v1/…`.
pub const MAX_API_BODY: usize = 1 << 20;
/// Largest request body on `/agent/v1/…` (a batch of responses).
pub const MAX_AGENT_BODY: usize = 8 << 20;
/// How often the server looks for expired rules.
const EXPIRY_TICK: Duration = Duration::from_secs(1);
/// How often old responses are pruned (in expiry ticks).
const PRUNE_EVERY_TICKS: u64 = 60;
/// On a shared store: how often the rules are read again, so a missed notification heals.
const RULES_REREAD: Duration = Duration::from_secs(5);
/// On a shared store: how often the live relay reads new responses without a notification.
const RELAY_TICK: Duration = Duration::from_secs(1);

/// How the server runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The data folder: `nonstop.db`, `admin.token`, `agent.token`.
    pub data: PathBuf,
    /// Require tokens (the default). Off is allowed on loopback addresses only.
    pub auth: bool,
    /// How long responses are kept.
    pub retention: Retention,
    /// Serve HTTPS with this certificate and key.
    pub tls: Option<tls::TlsFiles>,
    /// Where the web IDE reads each service's code (`--source SERVICE=PATH_OR_URL`).
    pub sources: Vec<(String, sources::SourceSpec)>,
    /// The largest capture limits a rule may ask for (`--max-limits`); a rule above one
    /// is refused, and a default above one is lowered to it.
    pub max_limits: nonstop_model::CaptureLimits,
    /// Idle timeout and caps on open connections ([`conn::ConnLimits`]).
    pub connections: conn::ConnLimits,
    /// Where the state lives (`--store`): SQLite in the data folder by default.
    pub store: StoreLocation,
    /// The delivery pipeline to targets: outbox bounds, back-off, timeout.
    pub outbox: outbox::OutboxConfig,
}

/// Where the server keeps its state (`nonstop serve --store …`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StoreLocation {
    /// `DATA/nonstop.db` (the default).
    #[default]
    DataFolder,
    /// `sqlite:PATH`: a SQLite file elsewhere.
    Sqlite(PathBuf),
    /// `postgres://USER@HOST[:PORT]/DB`: a PostgreSQL database that several replicas share.
    Postgres(String),
}

impl StoreLocation {
    /// Reads `sqlite:PATH` or `postgres://…` (`postgresql://…` too).
    pub fn parse(s: &str) -> Result<StoreLocation, String> {
        if let Some(path) = s.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err("sqlite: needs a file, e.g. sqlite:/var/lib/nonstop/nonstop.db".into());
            }
            return Ok(StoreLocation::Sqlite(PathBuf::from(path)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(StoreLocation::Postgres(s.to_string()));
        }
        Err(format!(
            "unknown store {s:?}: use sqlite:PATH or postgres://USER@HOST[:PORT]/DB"
        ))
    }

    /// What to show a person: the PostgreSQL URL without its password.
    pub fn describe(&self, data: &std::path::Path) -> String {
        match self {
            StoreLocation::DataFolder => data.join("nonstop.db").display().to_string(),
            StoreLocation::Sqlite(p) => p.display().to_string(),
            StoreLocation::Postgres(url) => match (url.find("://"), url.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => {
                    let userinfo = &url[scheme + 3..at];
                    let user = userinfo.split(':').next().unwrap_or("");
                    format!("{}{user}{}", &url[..scheme + 3], &url[at..])
                }
                _ => url.clone(),
            },
        }
    }
}

impl Config {
    /// Tokens on, default retention.
    pub fn new(listen: SocketAddr, data: PathBuf) -> Config {
        Config {
            listen,
            data,
            auth: true,
            retention: Retention::default(),
            tls: None,
            sources: Vec::new(),
            max_limits: validate::DEFAULT_MAX_LIMITS,
            connections: conn::ConnLimits::default(),
            store: StoreLocation::DataFolder,
            outbox: outbox::OutboxConfig::default(),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The data folder or a token file could not be made or read.
    #[error("cannot use the data folder {path}: {source}")]
    Data {
        /// The folder or file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Tokens were turned off on an address other machines can reach.
    #[error("refusing to listen on {0} without tokens: drop --no-auth or listen on 127.0.0.1")]
    NoAuthOffLoopback(SocketAddr),
}

/// Threads for the store's calls and other blocking work. The store runs one call at a
/// time on SQLite and a handful on PostgreSQL's pool, so more threads only queue on its
/// lock; with tokio's default of 512, 2,000 agents leaving at once left ~100 threads, and
/// the server's RSS grew with each such round (62, 67, 69 MB; 62, 63, 64 MB with 32).
pub const BLOCKING_THREADS: usize = 32;

/// The runtime `nonstop serve` and `nonstop demo` run the server on.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("nonstop-server")
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
}

/// The data folder when none is given: `$NONSTOP_DATA`, else `$XDG_DATA_HOME/nonstop`,
/// else `~/.local/share/nonstop`.
pub fn default_data_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = env("NONSTOP_DATA") {
        return d;
    }
    if let Some(d) = env("XDG_DATA_HOME") {
        return d.join("nonstop");
    }
    env("HOME")
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".local/share/nonstop")
}

/// A running server.
pub struct ServerHandle {
    addr: SocketAddr,
    https: bool,
    tokens: Option<Tokens>,
    data: PathBuf,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL: `http://ADDR` or `https://ADDR`.
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The tokens, unless auth is off.
    pub fn tokens(&self) -> Option<&Tokens> {
        self.tokens.as_ref()
    }

    /// The data folder.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data
    }

    /// Stops: closes agent connections and live streams, then waits (up to 5 s) for
    /// requests in flight.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }

    /// Waits until the server stops by itself (it does not, unless it fails).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

const OPENAPI: &str = include_str!("openapi.json");

fn router(app: Arc<App>) -> Router {
    let admin = Router::new()
        .route("/api/v1/rules", get(api::list_rules).post(api::create_rule))
        .route(
            "/api/v1/rules/{id}",
            get(api::get_rule).delete(api::delete_rule),
        )
        .route(
            "/api/v1/rules/{id}/enable",
            axum::routing::post(api::enable_rule),
        )
        .route(
            "/api/v1/rules/{id}/disable",
            axum::routing::post(api::disable_rule),
        )
        .route("/api/v1/templates", get(api::list_templates))
        .route("/api/v1/agents", get(api::list_agents))
        .route("/api/v1/responses", get(api::list_responses))
        .route("/api/v1/responses/stream", get(app::stream_responses))
        .route("/api/v1/services", get(sources::list_services))
        .route(
            "/api/v1/services/{service}/source",
            get(sources::get_source).put(sources::put_source),
        )
        .route("/api/v1/services/{service}/files", get(sources::list_files))
        .route(
            "/api/v1/services/{service}/files/{*path}",
            get(sources::read_file),
        )
        .route("/api/v1/services/{service}/resolve", get(sources::resolve))
        .route("/api/v1/metrics", get(metrics::list_metrics))
        .route(
            "/api/v1/targets",
            get(targets::list_targets).post(targets::put_target),
        )
        .route(
            "/api/v1/targets/{name}",
            get(targets::get_target).delete(targets::delete_target),
        )
        .route(
            "/api/v1/targets/{name}/test",
            axum::routing::post(targets::test_target),
        )
        .layer(DefaultBodyLimit::max(MAX_API_BODY))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::require_admin,
        ));
    let agent = Router::new()
        .route("/agent/v1/ws", get(hub::ws))
        .route("/agent/v1/poll", get(hub::poll))
        .route(
            "/agent/v1/responses",
            axum::routing::post(hub::post_messages),
        )
        .layer(DefaultBodyLimit::max(MAX_AGENT_BODY))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::require_agent,
        ));
    let scrape = Router::new()
        .route("/metrics", get(metrics::prometheus))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::require_admin_scrape,
        ));
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"ok": true})) }),
        )
        .route(
            "/api/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/", get(ui::index))
        .route("/assets/{*path}", get(ui::asset))
        .merge(admin)
        .merge(agent)
        .merge(scrape)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such route: see /api/v1/openapi.json",
            )
            .into_response()
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route: see /api/v1/openapi.json",
            )
            .into_response()
        })
        .with_state(app)
}

/// Starts the server on the current tokio runtime: creates the data folder and tokens,
/// opens the store (running migrations), binds `config.listen`, and serves until
/// [`ServerHandle::shutdown`].
pub async fn serve(config: Config) -> Result<ServerHandle, ServeError> {
    if !config.auth && !config.listen.ip().is_loopback() {
        return Err(ServeError::NoAuthOffLoopback(config.listen));
    }
    let acceptor = config.tls.as_ref().map(tls::acceptor).transpose()?;
    let data = config.data.clone();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&data)
        .map_err(|source| ServeError::Data {
            path: data.clone(),
            source,
        })?;
    let tokens = if config.auth {
        Some(
            ids::load_or_create(&data).map_err(|source| ServeError::Data {
                path: data.clone(),
                source,
            })?,
        )
    } else {
        None
    };
    let location = config.store.clone();
    let db = data.join("nonstop.db");
    let sources_dir = data.join("sources");
    let store: Arc<dyn Store> = tokio::task::spawn_blocking(move || {
        let s: Arc<dyn Store> = match location {
            StoreLocation::DataFolder => Arc::new(sqlite::SqliteStore::open(&db)?),
            StoreLocation::Sqlite(path) => Arc::new(sqlite::SqliteStore::open(&path)?),
            StoreLocation::Postgres(url) => Arc::new(postgres::PgStore::connect(&url)?),
        };
        // One server's agents are all gone when it starts; a shared store's agents may be
        // connected to other replicas (their leases say).
        if !s.shared() {
            s.disconnect_all()?;
        }
        if let Err(e) = sources::registry::import_saved(&sources_dir, s.as_ref()) {
            tracing::error!("sources: {e}");
        }
        Ok::<_, StoreError>(s)
    })
    .await
    .map_err(|e| StoreError::Database(e.to_string()))??;
    // Replicas agree on the tokens: the first to start stores its own, the others take them
    // (and write them to their data folder, where the CLI finds them).
    let tokens = match tokens {
        Some(local) if store.shared() => {
            let s = store.clone();
            let proposed = local.clone();
            let agreed = tokio::task::spawn_blocking(move || s.agree_tokens(&proposed))
                .await
                .map_err(|e| StoreError::Database(e.to_string()))??;
            if agreed != local {
                ids::save(&data, &agreed).map_err(|source| ServeError::Data {
                    path: data.clone(),
                    source,
                })?;
            }
            Some(agreed)
        }
        other => other,
    };
    let shared = store.shared();

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    let (stop, stop_rx) = watch::channel(false);
    let outbox = Arc::new(outbox::Outbox::new(store.clone(), config.outbox));
    outbox.start(stop_rx.clone());
    let writer = store
        .groups_writes()
        .then(|| writer::Writer::start(store.clone(), config.retention))
        .transpose()
        .map_err(|e| StoreError::Database(format!("cannot start the store's writer: {e}")))?;
    let app = Arc::new(App {
        writer,
        outbox,
        store,
        tokens: tokens.clone(),
        retention: config.retention,
        rules_gen: watch::channel(0).0,
        active_rules: Mutex::new(None),
        live: broadcast::channel(1024).0,
        shutdown: stop_rx.clone(),
        connections: Mutex::new(HashMap::new()),
        sources: Arc::new(sources::Sources::new(data.join("sources"), &config.sources)),
        max_limits: config.max_limits,
        relay: shared.then(|| Arc::new(tokio::sync::Notify::new())),
        seen: Mutex::new(HashMap::new()),
    });
    app.sources.start(app.store.clone(), stop_rx.clone());
    if shared {
        replicas::start(app.clone(), stop_rx.clone());
    }

    // Rules whose time is up leave every agent's set.
    let expiry_app = app.clone();
    let mut expiry_stop = stop_rx.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EXPIRY_TICK);
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = async { let _ = expiry_stop.wait_for(|s| *s).await; } => return,
            }
            match expiry_app
                .blocking(|s| s.expire_rules(clock::now_ms()))
                .await
            {
                Ok(ids) if !ids.is_empty() => {
                    tracing::info!(rules = ?ids, "rules expired");
                    expiry_app.rules_changed();
                }
                Ok(_) => {}
                Err(e) => tracing::error!("cannot expire rules: {e}"),
            }
            ticks += 1;
            if ticks.is_multiple_of(PRUNE_EVERY_TICKS) {
                let retention = expiry_app.retention;
                match expiry_app
                    .blocking(move |s| s.prune_responses(clock::now_ms(), retention))
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        rows = n,
                        "pruned old responses and metric series of gone agents"
                    ),
                    Err(e) => tracing::error!("cannot prune responses and metric series: {e}"),
                }
            }
        }
    });

    let mut graceful = stop_rx.clone();
    let shutdown = async move {
        let _ = graceful.wait_for(|s| *s).await;
    };
    let limits = config.connections;
    let service = router(app).into_make_service();
    let task = match acceptor {
        None => tokio::spawn(async move {
            let server = axum::serve(conn::Limited::new(listener, limits), service)
                .with_graceful_shutdown(shutdown);
            if let Err(e) = server.await {
                tracing::error!("server stopped: {e}");
            }
        }),
        Some(acceptor) => {
            let tls = tls::TlsListener::new(listener, acceptor, stop_rx).map_err(|source| {
                ServeError::Bind {
                    addr: config.listen,
                    source,
                }
            })?;
            tokio::spawn(async move {
                let server = axum::serve(conn::Limited::new(tls, limits), service)
                    .with_graceful_shutdown(shutdown);
                if let Err(e) = server.await {
                    tracing::error!("server stopped: {e}");
                }
            })
        }
    };
    tracing::info!(%addr, data = %data.display(), store = %config.store.describe(&data), "serving");
    Ok(ServerHandle {
        addr,
        https: config.tls.is_some(),
        tokens,
        data,
        stop,
        task,
    })
}
