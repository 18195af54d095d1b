//! The FireFleet node agent.
//!
//! Enrolls once with a one-time join token (its key never leaves the node: it sends a CSR and
//! gets a certificate signed by the cluster CA; the certificate is short-lived and renewed over
//! mutual TLS, see `identity.rs`), then talks to the server only over mutual TLS
//! and only outbound: heartbeats with the node's facts, a long-poll on the intents for its node,
//! status reports and console uploads. It reconciles the host to the intents: launches what
//! should run, stops what should not, removes what was deleted, and reports what is. VMM
//! processes outlive the agent; a restarted agent re-adopts them from their state directories.
//! VMs get a network interface on the node's bridge ([`network`]); a node whose network cannot be
//! set up runs them without one.
//!
//! It never decides placement and never deletes a VM the control plane still lists for it.
//!
//! # Structure
//! `reconcile` gathers, per VM, the intent, the runtime's observation and what a failed launch
//! left, asks the pure `decide` (no paths, runtimes, clock or I/O) for the phase to report and
//! the action, and hands the action to the executor `ops`, which dispatches to one async
//! function per operation (VMM, disk and host-network steps on the blocking pool; the server
//! through the `control::ControlPlane` trait). `decide` imports nothing of the crate; `ops`
//! imports `decide`, `control`, `disks`, `guest`, `migrate`, `network` and `runtimes`, none of
//! which imports `ops` or `reconcile`.

mod control;
mod decide;
mod disks;
mod facts;
mod guest;
mod identity;
mod invoke;
mod migrate;
pub mod network;
mod ops;
mod posture;
mod reconcile;
pub mod runtimes;
mod tasks;
mod telemetry;

use std::{path::PathBuf, sync::Arc, time::Duration};

use firefleet_client::{Client, ClientError, Connection};
use firefleet_types::{Labels, NodeId, Resources};
use firefleet_vmm::QemuRuntime;
use tokio::sync::watch;

pub use facts::gather_facts;
pub use runtimes::FirecrackerConfig;

/// How the agent is started.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `https://host:port` of every server replica (at least one): the agent's client fails
    /// over between them (see `firefleet_client::Failover`).
    pub servers: Vec<String>,
    /// How the agent's client fails over between `servers`.
    pub failover: firefleet_client::Failover,
    /// PEM file of the cluster CA (trusted for enrollment; the enrolled CA is kept in `data_dir`).
    pub ca_file: PathBuf,
    /// The node's name.
    pub node: NodeId,
    /// Topology and other labels.
    pub labels: Labels,
    /// One-time join token, needed only for the first start.
    pub join_token: Option<String>,
    /// Where the identity and the VM state directories live.
    pub data_dir: PathBuf,
    /// The local image store.
    pub image_dir: PathBuf,
    /// Capacity offered to VMs (default: the host's CPUs and memory less a reserve).
    pub capacity: Option<Resources>,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// The VM bridge (default `ffbr0`). One agent per bridge.
    pub bridge: Option<String>,
    /// The node subnet for VM addresses (default `10.213.0.0/24`).
    pub subnet: Option<String>,
    /// Offer Firecracker, with this binary (and jailer), besides QEMU.
    pub firecracker: Option<FirecrackerConfig>,
    /// Report this power state instead of what sysfs says (labs and tests of edge sites).
    pub power_override: Option<firefleet_types::node::PowerFacts>,
    /// A running VM whose ready guest has not answered for this long is killed, reported
    /// Failed and replaced by the control plane (zero: never).
    pub heartbeat_timeout: Duration,
    /// How often telemetry is collected per running VM and sent to the server.
    pub telemetry_interval: Duration,
    /// Most telemetry samples held while the server cannot be reached (oldest dropped first).
    pub telemetry_buffer: usize,
    /// Stop every local VMM when the agent is stopped (`firefleet up`: stop what it started);
    /// otherwise they keep running and the next agent adopts them.
    pub stop_vms_on_exit: bool,
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Enrollment or identity loading failed.
    #[error("identity: {0}")]
    Identity(String),
    /// An I/O step failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// An API call failed.
    #[error("{what}")]
    Api {
        /// What was being done.
        what: String,
        /// Cause (boxed: an API error is large).
        #[source]
        source: Box<ClientError>,
    },
    /// The VMM runtime failed to start.
    #[error("vmm")]
    Vmm(#[source] firefleet_vmm::VmmError),
    /// The network configuration (bridge name, subnet) is malformed.
    #[error("network configuration")]
    NetConfig(#[source] firefleet_vmm::net::NetError),
}

/// Runs the agent until `shutdown` turns true. VMs keep running when it returns, unless
/// `config.stop_vms_on_exit`.
pub async fn run(
    config: AgentConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let identity = identity::load_or_enroll(&config).await?;
    let client = Client::with_failover(
        &Connection {
            servers: config.servers.clone(),
            ca_pem: identity.ca_pem.clone(),
            token: None,
            identity: Some((identity.cert_pem.clone(), identity.key_pem.clone())),
        },
        config.failover,
    )
    .map_err(|source| AgentError::Api {
        what: "building the mTLS client".into(),
        source: Box::new(source),
    })?;
    // The certificate is short-lived: renewed over mutual TLS, the client switched to it.
    let renewer = tokio::spawn(identity::keep_renewed(
        client.clone(),
        config.data_dir.clone(),
        config.node.clone(),
        identity.cert_pem.clone(),
        shutdown.clone(),
    ));
    // VMMs run sandboxed wherever the host allows it (root: own uid, seccomp, cgroups, jail);
    // the node facts say what is in force.
    let runtime = QemuRuntime::new(config.data_dir.join("vms")).map_err(AgentError::Vmm)?;
    let runtime = Arc::new(runtime.with_sandbox(firefleet_vmm::sandbox::Sandbox::detect()));
    let net_config = network::net_config(
        &config.data_dir,
        config.bridge.as_deref(),
        config.subnet.as_deref(),
    )
    .map_err(AgentError::NetConfig)?;
    let net = tokio::task::spawn_blocking(move || network::Network::start(&net_config))
        .await
        .map_err(|e| AgentError::Identity(format!("network setup panicked: {e}")))?;
    let net = Arc::new(net);

    let (runtimes, facts, firecracker_jailed) = backends(&config, runtime, &net).await?;
    let runtimes = Arc::new(runtimes);
    let invoker = tokio::spawn(invoke::serve(
        client.clone(),
        runtimes.clone(),
        shutdown.clone(),
    ));
    tracing::info!(node = %config.node, accel = %facts.accel, probe = %facts.accel_probe, runtimes = ?facts.runtimes, "agent started");

    let hb = tokio::spawn(tasks::heartbeats(
        client.clone(),
        firefleet_api::HeartbeatRequest {
            facts,
            labels: Some(config.labels.clone()),
        },
        config.heartbeat,
        firecracker_jailed,
        shutdown.clone(),
    ));

    let mut rec = reconcile::Reconciler::new(
        client.clone(),
        runtimes.clone(),
        net,
        config.data_dir.clone(),
        config.image_dir.clone(),
    )
    .with_heartbeat_timeout(config.heartbeat_timeout);
    let telemetry_buffer = Arc::new(telemetry::TelemetryBuffer::new(config.telemetry_buffer));
    let telemetry_interval = config.telemetry_interval.max(Duration::from_millis(100));
    rec = rec.with_telemetry(telemetry_interval, telemetry_buffer.clone());
    let uploader = tokio::spawn(telemetry::upload(
        client.clone(),
        telemetry_buffer,
        telemetry_interval,
        shutdown.clone(),
    ));
    let mut intents: Option<firefleet_api::IntentsResponse> = None;
    let (poll_tx, mut poll_rx) = tokio::sync::mpsc::channel(1);
    // Long-poll for intents in its own task so that local observation keeps going meanwhile.
    let poller = tokio::spawn(tasks::poll_intents(
        client.clone(),
        poll_tx,
        shutdown.clone(),
    ));
    loop {
        if let Some(list) = &intents {
            rec.reconcile(list).await;
        }
        let period = if rec.has_starting() {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1).min(telemetry_interval)
        };
        tokio::select! {
            Some(resp) = poll_rx.recv() => {
                intents = Some(resp);
            }
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => break,
        }
    }
    poller.abort();
    renewer.abort();
    uploader.abort();
    invoker.abort();
    hb.abort();
    if config.stop_vms_on_exit {
        let stopped = tokio::task::spawn_blocking(move || stop_all(&runtimes))
            .await
            .unwrap_or_default();
        tracing::info!(stopped, "agent stopped with its VMs");
    } else {
        tracing::info!("agent stopped; VMs keep running");
    }
    Ok(())
}

/// The node's backends and facts: QEMU (`runtime`), Firecracker when configured and usable,
/// and whether Firecracker runs jailed (`None`: not offered).
async fn backends(
    config: &AgentConfig,
    runtime: Arc<QemuRuntime>,
    net: &network::Network,
) -> Result<(runtimes::Runtimes, firefleet_types::NodeFacts, Option<bool>), AgentError> {
    let mut facts = {
        let cfg = config.clone();
        let rt = runtime.clone();
        let metadata_blocked = net.metadata_egress_blocked();
        tokio::task::spawn_blocking(move || gather_facts(&cfg, &rt, metadata_blocked))
            .await
            .map_err(|e| AgentError::Identity(format!("fact gathering panicked: {e}")))?
    };
    facts.network = net.facts();
    let runtimes = runtimes::Runtimes::new(
        runtime,
        facts.accel,
        &config.data_dir,
        config.firecracker.as_ref(),
    )
    .map_err(AgentError::Vmm)?;
    if let Some(why) = &runtimes.firecracker_unavailable {
        tracing::warn!(%why, "firecracker is not offered");
    }
    facts.runtimes = runtimes.names();
    // Firecracker offered: whether its VMMs run under the jailer (it weighs on the posture).
    let firecracker_jailed = runtimes.firecracker().is_some().then(|| {
        config
            .firecracker
            .as_ref()
            .is_some_and(|fc| fc.jailer.is_some())
    });
    if let Some(jailed) = firecracker_jailed {
        facts.posture = facts
            .posture
            .take()
            .map(|p| posture::with_firecracker(p, jailed));
    }
    if let Some(v) = &runtimes.firecracker_version {
        facts.vmm_version = format!("{}; {v}", facts.vmm_version);
    }
    Ok((runtimes, facts, firecracker_jailed))
}

/// Stops every VMM with a state directory here (a graceful shutdown first); returns how many.
fn stop_all(runtimes: &runtimes::Runtimes) -> usize {
    let ids = match runtimes.list() {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(error = %e, "listing the local VMs to stop them");
            return 0;
        }
    };
    let mut stopped = 0;
    for id in ids {
        match runtimes.for_vm(&id, None).stop(&id, Duration::from_secs(5)) {
            Ok(()) => stopped += 1,
            Err(e) => tracing::warn!(vm = %id, error = %e, "stopping a VM on exit"),
        }
    }
    stopped
}
