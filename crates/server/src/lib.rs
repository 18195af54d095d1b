//! The FireFleet control plane.
//!
//! Owns the REST API under `/v1` (axum, served over HTTPS with the cluster's own CA; agents
//! authenticate with client certificates, people and scripts with bearer tokens), the typed
//! repositories over the [`firefleet_store`] key-value store, and the level-triggered
//! controllers (scheduling, node readiness, compliance, healing, functions, the guard).
//! Decisions are made by the pure engines (`firefleet-scheduler`, `-autoscaler`, `-guard`,
//! `-policy`); this crate prepares their inputs from the store and writes their outputs back.
//!
//! Layers, each importing only those below it:
//! - `http/`: handlers parse and authorise a request, call one `app` function, render.
//! - `controllers/`: loops on timers and kicks; they call `app` (and read through `repo`).
//! - `app/`: the domain operations, one module per domain; never imports `http` or
//!   `controllers`.
//! - `repo/`: typed records over the store; imports only the store, types and API crates.
//!
//! This file only wires them up: configuration, the shared state, start and shutdown.
//! Where to start reading: [`Server::start`], then `http/mod.rs` (routes), `app/` and
//! `controllers/`.

mod app;
mod audit;
mod auth;
mod controllers;
mod error;
mod files;
pub mod http;
mod limits;
mod metrics;
mod repo;
mod tls;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use firefleet_pki::Ca;
use firefleet_store::{KvStore, SqliteStore};
use tokio::{net::TcpListener, sync::watch};

pub use app::quota::DEFAULT_QUOTA;
pub use app::threats::GuardConfig;
pub use controllers::functions::FunctionsConfig;
pub use error::ApiError;
pub use firefleet_autoscaler::PolicyKind;
pub use http::openapi_json;
pub use limits::Limits;

/// Heartbeats older than this mark a node NotReady (default of [`NodeTimers::grace`]).
pub const NODE_GRACE: Duration = Duration::from_secs(15);
/// How long a node stays NotReady before its VMs are placed elsewhere (default of
/// [`NodeTimers::evict_after`]).
pub const EVICT_AFTER: Duration = Duration::from_secs(15);

/// How long agent certificates are valid (default of [`ServerConfig::agent_cert_lifetime`]):
/// agents renew theirs over mutual TLS when two thirds of it have passed.
pub const AGENT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// When a silent node is given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeTimers {
    /// Heartbeats older than this mark the node NotReady: no new placements.
    pub grace: Duration,
    /// After `grace` plus this, its VMs are placed on other nodes (and the node, should it come
    /// back, stops them).
    pub evict_after: Duration,
}

impl Default for NodeTimers {
    fn default() -> Self {
        Self {
            grace: NODE_GRACE,
            evict_after: EVICT_AFTER,
        }
    }
}

/// How the server is started.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Directory for the store, the CA and the admin token.
    pub data_dir: PathBuf,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Extra DNS names for the server certificate.
    pub dns_names: Vec<String>,
    /// Node failure detection.
    pub node_timers: NodeTimers,
    /// The fleet's topology and prices (placement scores cost, latency and edge power from it).
    pub topology: firefleet_types::fleet::FleetTopology,
    /// Plan and start migrations for the triggers in force (low battery, imbalance) this often;
    /// none: only when asked (`firefleet plan --apply`).
    pub rebalance_every: Option<Duration>,
    /// How functions are scaled.
    pub functions: FunctionsConfig,
    /// The guard's rules and response playbooks.
    pub guard: GuardConfig,
    /// What callers may hold: connections, time, request rate.
    pub limits: Limits,
    /// How long the certificates issued to agents (enrolment, renewal) are valid; at least
    /// [`firefleet_pki::MIN_AGENT_CERT_LIFETIME`]. Default [`AGENT_CERT_LIFETIME`].
    pub agent_cert_lifetime: Duration,
    /// The quota of tenants whose record sets none. Default [`DEFAULT_QUOTA`].
    pub default_quota: firefleet_api::TenantQuota,
}

impl ServerConfig {
    /// A server keeping its state in `data_dir`, listening on `listen`, with every other
    /// setting at its default.
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen,
            dns_names: Vec::new(),
            node_timers: NodeTimers::default(),
            topology: Default::default(),
            rebalance_every: None,
            functions: FunctionsConfig::default(),
            guard: GuardConfig::default(),
            limits: Limits::default(),
            agent_cert_lifetime: AGENT_CERT_LIFETIME,
            default_quota: DEFAULT_QUOTA,
        }
    }
}

/// Shared state of every handler and controller.
#[derive(Clone)]
pub(crate) struct AppState {
    pub store: Arc<dyn KvStore>,
    pub ca: Arc<Ca>,
    pub metrics: Arc<metrics::Metrics>,
    /// Fires when something controllers should look at changed (new VM, stop, heartbeat).
    pub kick: Arc<tokio::sync::Notify>,
    /// The latest statistics each agent reported per VM (ephemeral: not stored).
    pub stats: Arc<
        std::sync::Mutex<std::collections::HashMap<firefleet_types::VmId, firefleet_api::VmStats>>,
    >,
    /// Node failure detection.
    pub node_timers: NodeTimers,
    /// The fleet's topology and prices.
    pub topology: Arc<firefleet_types::fleet::FleetTopology>,
    /// The server's data directory (store, CA, migration transfers).
    pub data_dir: PathBuf,
    /// Live migrations' destinations waiting for their source's stream.
    pub live: Arc<http::migrations::LiveRelay>,
    /// The functions gateway (instances, in-flight invocations, counters).
    pub gateway: Arc<app::functions::Gateway>,
    /// How functions are scaled.
    pub functions: FunctionsConfig,
    /// The guard: telemetry queue and counters.
    pub guard: Arc<app::threats::Guard>,
    /// The audit log's signing key and appender.
    pub audit: Arc<audit::Auditor>,
    /// The compiled policy set in force.
    pub policies: app::policy::Shared,
    /// Request rate per token and per anonymous client address.
    pub rate: Arc<limits::RateLimiter>,
    /// What callers may hold (connections, time, rate).
    pub limits: Limits,
    /// Refused calls waiting to be written to the audit log, aggregated.
    pub refusals: Arc<http::audit::Refusals>,
    /// How long agent certificates are valid.
    pub agent_cert_lifetime: Duration,
    /// The quota of tenants whose record sets none.
    pub default_quota: firefleet_api::TenantQuota,
    /// Per-tenant create locks (quota checks).
    pub quota_locks: Arc<app::quota::QuotaLocks>,
}

impl repo::Db for AppState {
    fn store(&self) -> &dyn KvStore {
        &*self.store
    }
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be prepared.
    #[error("cannot prepare data directory {path}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("cannot open the store")]
    Store(#[source] firefleet_store::StoreError),
    /// The CA or server certificate could not be made.
    #[error("cannot prepare TLS")]
    Pki(#[source] firefleet_pki::PkiError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Bootstrapping the admin token failed.
    #[error("cannot create the admin token")]
    Bootstrap(#[source] ApiError),
}

/// A running server.
pub struct Server {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// PEM of the cluster CA.
    pub ca_pem: String,
    state: AppState,
    /// The store's file, closed (its lock released) by [`Server::shutdown`].
    sqlite: SqliteStore,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Opens the store and CA in `config.data_dir` (creating them on first start, with
    /// `admin.token` and `ca.pem`), binds, and starts serving and the controllers.
    pub async fn start(config: ServerConfig) -> Result<Server, StartError> {
        let dir = &config.data_dir;
        if config.agent_cert_lifetime < firefleet_pki::MIN_AGENT_CERT_LIFETIME {
            return Err(StartError::Pki(firefleet_pki::PkiError::LifetimeTooShort {
                secs: config.agent_cert_lifetime.as_secs(),
            }));
        }
        files::make_private_dir(dir).map_err(|source| StartError::DataDir {
            path: dir.clone(),
            source,
        })?;
        let sqlite = SqliteStore::open(&dir.join("store.db")).map_err(StartError::Store)?;
        let store: Arc<dyn KvStore> = Arc::new(sqlite.clone());
        // The store holds every secret's hash and every tenant's objects: owner only, like the
        // directory (SQLite creates its files with the umask's mode).
        for f in ["store.db", "store.db-wal", "store.db-shm"] {
            files::make_private_file(&dir.join(f)).map_err(|source| StartError::DataDir {
                path: dir.join(f),
                source,
            })?;
        }
        let ca = Ca::load_or_create(dir).map_err(StartError::Pki)?;
        let ca_pem = ca.cert_pem().to_owned();
        let mut dns = config.dns_names.clone();
        dns.push("localhost".to_owned());
        let ips = vec![config.listen.ip()];
        let server_cert = ca.issue_server_cert(&dns, &ips).map_err(StartError::Pki)?;
        let tls =
            firefleet_pki::server_tls_config(&ca_pem, &server_cert.cert_pem, &server_cert.key_pem)
                .map_err(StartError::Pki)?;

        let state = AppState {
            store,
            ca: Arc::new(ca),
            metrics: Arc::new(metrics::Metrics::default()),
            kick: Arc::new(tokio::sync::Notify::new()),
            stats: Default::default(),
            node_timers: config.node_timers,
            topology: Arc::new(config.topology.clone()),
            data_dir: dir.to_path_buf(),
            live: Arc::default(),
            gateway: Arc::default(),
            functions: config.functions.clone(),
            guard: Arc::default(),
            audit: Arc::new(audit::Auditor::load_or_create(dir).map_err(|source| {
                StartError::DataDir {
                    path: dir.join("audit.key"),
                    source,
                }
            })?),
            policies: Arc::default(),
            rate: Arc::new(limits::RateLimiter::new(&config.limits)),
            limits: config.limits.clone(),
            refusals: Arc::default(),
            agent_cert_lifetime: config.agent_cert_lifetime,
            default_quota: config.default_quota,
            quota_locks: Arc::default(),
        };
        app::tokens::ensure_admin_token(&state, dir)
            .await
            .map_err(StartError::Bootstrap)?;
        app::policy::install_builtin(&state)
            .await
            .map_err(StartError::Bootstrap)?;

        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let router = http::router(state.clone());
        let mut tasks = vec![tokio::spawn(tls::serve(
            listener,
            Arc::new(tls),
            router,
            config.limits.clone(),
            shutdown_rx.clone(),
        ))];
        if let Some(period) = config.rebalance_every {
            tasks.push(controllers::rebalance::spawn(
                state.clone(),
                shutdown_rx.clone(),
                period,
            ));
        }
        tasks.push(controllers::functions::spawn(
            state.clone(),
            shutdown_rx.clone(),
        ));
        tasks.push(controllers::guard::spawn(
            state.clone(),
            config.guard.clone(),
            shutdown_rx.clone(),
        ));
        tasks.push(http::audit::spawn_refusal_flush(
            state.clone(),
            shutdown_rx.clone(),
        ));
        tasks.extend(controllers::spawn_all(state.clone(), shutdown_rx));
        tracing::info!(%addr, "firefleet server listening");
        Ok(Server {
            addr,
            ca_pem,
            state,
            sqlite,
            shutdown,
            tasks,
        })
    }

    /// Creates a one-time join token for node `node` (used by `firefleet up` for its local
    /// agent; bound to its name, so it also re-enrols an agent whose data directory is gone).
    pub async fn create_join_token(
        &self,
        ttl: Duration,
        node: firefleet_types::NodeId,
    ) -> Result<String, ApiError> {
        app::nodes::create_join_token(&self.state, ttl, Some(node), None)
            .await
            .map(|r| r.token)
    }

    /// Stops serving and the controllers, then closes the store: when it returns, the store's
    /// file lock is released (a connection task that outlives the listener, holding a clone of
    /// the state, gets `closed` errors instead of keeping the file locked).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Err(e) = self.sqlite.close().await {
            tracing::warn!(error = %e, "closing the store");
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
