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
mod secrets;
mod tls;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use firefleet_pki::Ca;
use firefleet_store::election::{
    Candidate, Election, EtcdElection, EtcdElectionConfig, LocalElection,
};
use firefleet_store::{EtcdConfig, EtcdStore, KvStore, SqliteStore};
use tokio::{net::TcpListener, sync::watch};

pub use app::quota::DEFAULT_QUOTA;
pub use app::threats::GuardConfig;
pub use controllers::functions::FunctionsConfig;
pub use error::ApiError;
pub use firefleet_autoscaler::PolicyKind;
pub use http::openapi_json;
pub use limits::Limits;
pub use secrets::{SecretsError, SecretsKey};

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
    /// Extra IP addresses for the server certificate (besides loopback and the listen
    /// address): what clients reach this replica by.
    pub ip_sans: Vec<std::net::IpAddr>,
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
    /// Where the fleet's state lives. Default: SQLite in `data_dir`.
    pub store: StoreConfig,
    /// The operator's key sealing the CA and audit key into the store, so that every replica
    /// shares them; required with etcd. None: they are files in `data_dir`.
    pub secrets_key: Option<SecretsKey>,
    /// This replica's id, address and leadership lease.
    pub replica: ReplicaConfig,
}

/// Where the fleet's state lives.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// An embedded SQLite file: `store.db` in the data directory when `None`. One replica.
    Sqlite(Option<PathBuf>),
    /// An etcd cluster every replica shares.
    Etcd(EtcdConfig),
}

impl StoreConfig {
    /// Parses `sqlite:PATH` or `etcd://HOST:PORT[,HOST:PORT…]` (the etcd TLS files and key
    /// prefix are set on the result); the error names what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err("sqlite: needs a path (sqlite:/var/lib/firefleet/store.db)".into());
            }
            return Ok(Self::Sqlite(Some(PathBuf::from(path))));
        }
        if text.starts_with("etcd://") {
            let endpoints = EtcdConfig::parse_url(text).map_err(|e| e.to_string())?;
            return Ok(Self::Etcd(EtcdConfig::new(endpoints, DEFAULT_ETCD_PREFIX)));
        }
        Err(format!(
            "store {text:?}: expected sqlite:PATH or etcd://HOST:PORT[,HOST:PORT...]"
        ))
    }
}

/// The key prefix of a fleet's state in etcd unless `--etcd-prefix` says otherwise.
pub const DEFAULT_ETCD_PREFIX: &str = "/firefleet/default";

/// The leadership lease unless `--lease-ttl` says otherwise.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);

/// This replica among the control plane's.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Its id; default: the host name and the listen port.
    pub id: Option<String>,
    /// The URL other replicas and clients reach it at; default from the listen address.
    pub advertise: Option<String>,
    /// The leader's lease: a leader that cannot renew it stops its controllers before it
    /// expires, and another replica takes over within about this long.
    pub lease_ttl: Duration,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self {
            id: None,
            advertise: None,
            lease_ttl: DEFAULT_LEASE_TTL,
        }
    }
}

impl ServerConfig {
    /// A server keeping its state in `data_dir`, listening on `listen`, with every other
    /// setting at its default.
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen,
            dns_names: Vec::new(),
            ip_sans: Vec::new(),
            node_timers: NodeTimers::default(),
            topology: Default::default(),
            rebalance_every: None,
            functions: FunctionsConfig::default(),
            guard: GuardConfig::default(),
            limits: Limits::default(),
            agent_cert_lifetime: AGENT_CERT_LIFETIME,
            default_quota: DEFAULT_QUOTA,
            store: StoreConfig::Sqlite(None),
            secrets_key: None,
            replica: ReplicaConfig::default(),
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
    /// This replica, the election and its leadership.
    pub cluster: Arc<app::cluster::Cluster>,
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
    /// The shared secrets (CA, audit key) could not be had.
    #[error("cannot load the cluster's secrets")]
    Secrets(#[source] SecretsError),
    /// The settings do not go together.
    #[error("{0}")]
    Config(String),
}

/// A running server.
pub struct Server {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// PEM of the cluster CA.
    pub ca_pem: String,
    state: AppState,
    /// This replica's record among the replicas, withdrawn at shutdown.
    registration: Option<firefleet_store::election::Registration>,
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
        let (store, election, store_kind) = open_store(&config).await?;
        let secrets = secrets::load(&*store, dir, config.secrets_key.as_ref())
            .await
            .map_err(StartError::Secrets)?;
        let ca = secrets.ca;
        let ca_pem = ca.cert_pem().to_owned();
        let mut dns = config.dns_names.clone();
        dns.push("localhost".to_owned());
        let mut ips = vec![config.listen.ip()];
        ips.extend(config.ip_sans.iter().copied());
        let server_cert = ca.issue_server_cert(&dns, &ips).map_err(StartError::Pki)?;
        let tls =
            firefleet_pki::server_tls_config(&ca_pem, &server_cert.cert_pem, &server_cert.key_pem)
                .map_err(StartError::Pki)?;
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
        let me = Candidate {
            id: config
                .replica
                .id
                .clone()
                .unwrap_or_else(|| default_replica_id(config.listen)),
            address: config
                .replica
                .advertise
                .clone()
                .unwrap_or_else(|| format!("https://{addr}")),
        };
        let peer = replica_client(&ca, &ca_pem, &me.id).map_err(StartError::Pki)?;

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
            audit: Arc::new(audit::Auditor::new(dir, secrets.audit).map_err(|source| {
                StartError::DataDir {
                    path: dir.join("audit.pub"),
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
            cluster: Arc::new(app::cluster::Cluster::new(me, store_kind, election, peer)),
        };
        app::tokens::ensure_admin_token(&state, dir)
            .await
            .map_err(StartError::Bootstrap)?;
        app::policy::install_builtin(&state)
            .await
            .map_err(StartError::Bootstrap)?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let router = http::router(state.clone());
        let mut tasks = vec![tokio::spawn(tls::serve(
            listener,
            Arc::new(tls),
            router,
            config.limits.clone(),
            shutdown_rx.clone(),
        ))];
        tasks.push(http::audit::spawn_refusal_flush(
            state.clone(),
            shutdown_rx.clone(),
        ));
        // Every replica registers itself and campaigns; the leader runs the controllers.
        let registration = state
            .cluster
            .election
            .register(&state.cluster.me)
            .await
            .map_err(StartError::Store)?;
        tasks.push(controllers::leader::spawn(
            state.clone(),
            controllers::leader::ControllerConfig {
                rebalance_every: config.rebalance_every,
                guard: config.guard.clone(),
                follow_store: !state.cluster.single_replica(),
            },
            shutdown_rx,
        ));
        tracing::info!(%addr, "firefleet server listening");
        Ok(Server {
            addr,
            ca_pem,
            state,
            registration: Some(registration),
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
        if let Some(r) = self.registration {
            if let Err(e) = r.deregister().await {
                tracing::warn!(error = %e, "withdrawing this replica's record");
            }
        }
        if let Err(e) = self.state.store.close().await {
            tracing::warn!(error = %e, "closing the store");
        }
    }
}

/// Opens the configured store and the election that goes with it.
async fn open_store(
    config: &ServerConfig,
) -> Result<(Arc<dyn KvStore>, Arc<dyn Election>, &'static str), StartError> {
    match &config.store {
        StoreConfig::Sqlite(path) => {
            let path = path
                .clone()
                .unwrap_or_else(|| config.data_dir.join("store.db"));
            let sqlite = SqliteStore::open(&path).map_err(StartError::Store)?;
            // The store holds every secret's hash and every tenant's objects: owner only,
            // like the directory (SQLite creates its files with the umask's mode).
            for suffix in ["", "-wal", "-shm"] {
                let f = PathBuf::from(format!("{}{suffix}", path.display()));
                files::make_private_file(&f)
                    .map_err(|source| StartError::DataDir { path: f, source })?;
            }
            let store: Arc<dyn KvStore> = Arc::new(sqlite);
            let election: Arc<dyn Election> = Arc::new(LocalElection::new(Arc::clone(&store)));
            Ok((store, election, "sqlite"))
        }
        StoreConfig::Etcd(etcd) => {
            if config.secrets_key.is_none() {
                return Err(StartError::Config(
                    "an etcd store needs --secrets-key FILE: every replica must share the cluster CA and audit key, which are kept in etcd sealed with that key (make one with `openssl rand -hex 32 > secrets.key; chmod 600 secrets.key`)".to_owned(),
                ));
            }
            let etcd = EtcdStore::connect(etcd.clone())
                .await
                .map_err(StartError::Store)?;
            let etcd = Arc::new(etcd);
            let election = EtcdElection::new(
                Arc::clone(&etcd) as Arc<dyn firefleet_store::election::LeaseStore>,
                EtcdElectionConfig {
                    ttl: config.replica.lease_ttl,
                },
            )
            .map_err(StartError::Store)?;
            Ok((etcd, Arc::new(election), "etcd"))
        }
    }
}

/// The HTTPS client this replica forwards calls to the leader with: trusting only the
/// cluster CA, presenting a replica certificate.
fn replica_client(
    ca: &Ca,
    ca_pem: &str,
    id: &str,
) -> Result<reqwest::Client, firefleet_pki::PkiError> {
    let cert = ca.issue_replica_cert(id)?;
    let tls = firefleet_pki::client_tls_config(ca_pem, Some((&cert.cert_pem, &cert.key_pem)))?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| firefleet_pki::PkiError::Tls {
            op: "build the replica client",
            source: rustls::Error::General(e.to_string()),
        })
}

/// The host name and the port: unique per host and listener.
fn default_replica_id(listen: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}-{}", listen.port())
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
