//! The long-running processes: `up` (server and local agent together), `server`, `agent`.

use std::{net::SocketAddr, path::PathBuf};

use clap::Args;

use super::{AgentCertArgs, FunctionArgs, GuardArgs, LimitArgs, NodeTimerArgs, QuotaArgs};

/// The control plane's settings that `up` and `server` share.
#[derive(Debug, Args)]
pub struct ControlPlaneArgs {
    /// The fleet's topology and prices (TOML; see docs/topology.example.toml).
    #[arg(long, env = "FIREFLEET_TOPOLOGY")]
    pub topology: Option<PathBuf>,
    /// Plan and start migrations for low-battery and overloaded nodes this often (0: only on
    /// `firefleet plan --apply`).
    #[arg(long, default_value_t = 0)]
    pub rebalance_every_secs: u64,
    #[command(flatten)]
    pub functions: FunctionArgs,
    #[command(flatten)]
    pub guard: GuardArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub quota: QuotaArgs,
    #[command(flatten)]
    pub agent_certs: AgentCertArgs,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Directory for the store, CA, admin token and the local agent's state.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// Labels of the local node (`k=v`).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Name of the local node.
    #[arg(long, default_value = "local")]
    pub node_name: String,
    /// Leave the local VMMs running when `up` is stopped (the next `up` on the same data
    /// directory adopts them); by default `up` stops what it started.
    #[arg(long)]
    pub keep_vms: bool,
    /// Local image store.
    #[arg(long, env = "FIREFLEET_IMAGE_DIR")]
    pub image_dir: Option<PathBuf>,
    /// The local agent's VM bridge.
    #[arg(long, default_value = firefleet_vmm::net::DEFAULT_BRIDGE)]
    pub bridge: String,
    /// The local agent's subnet for VM addresses (the bridge gets the first address).
    #[arg(long, default_value = firefleet_vmm::net::DEFAULT_SUBNET)]
    pub subnet: String,
    #[command(flatten)]
    pub firecracker: FirecrackerArgs,
    #[command(flatten)]
    pub control: ControlPlaneArgs,
    /// The local agent's telemetry interval, milliseconds (see `agent --telemetry-interval-ms`).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub telemetry_interval_ms: u64,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Directory for the store, CA and admin token.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// Extra DNS name for the server certificate (repeatable).
    #[arg(long = "dns-name")]
    pub dns_names: Vec<String>,
    /// A name or IP address the server certificate covers besides localhost and the listen
    /// address (repeatable): every name and address clients and agents reach this replica at
    /// (its host name, its address, a load balancer's name).
    #[arg(long = "san", value_name = "NAME_OR_IP", value_parser = super::parse_san)]
    pub sans: Vec<super::San>,
    /// Write the bound address to this file once listening (useful with port 0).
    #[arg(long)]
    pub addr_file: Option<PathBuf>,
    #[command(flatten)]
    pub node_timers: NodeTimerArgs,
    #[command(flatten)]
    pub control: ControlPlaneArgs,
    #[command(flatten)]
    pub ha: crate::cmd_cluster::HaArgs,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Server address, or the addresses of several replicas, comma-separated: the agent fails
    /// over to the next one when the current one cannot be reached or answers 503.
    #[arg(
        long,
        env = "FIREFLEET_SERVER",
        default_value = "https://127.0.0.1:7443",
        value_parser = super::parse_servers
    )]
    pub server: super::ServerUrls,
    /// With several servers: seconds a call keeps failing over between them before it gives
    /// up (the agent's loops then try again).
    #[arg(long, env = "FIREFLEET_FAILOVER_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(0..=600))]
    pub failover_secs: u64,
    /// PEM file of the cluster CA.
    #[arg(long, env = "FIREFLEET_CA")]
    pub ca: PathBuf,
    /// Node name.
    #[arg(long)]
    pub name: String,
    /// One-time join token (first start only).
    #[arg(long, env = "FIREFLEET_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// Labels (`k=v`), e.g. `--label cloud=aws --label region=us-east-1`.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Directory for the identity and VM state.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Local image store.
    #[arg(long, env = "FIREFLEET_IMAGE_DIR")]
    pub image_dir: Option<PathBuf>,
    /// vCPUs offered to VMs (default: the host's CPUs).
    #[arg(long)]
    pub capacity_vcpus: Option<u32>,
    /// Memory offered to VMs in MiB (default: host memory less 512 MiB).
    #[arg(long)]
    pub capacity_memory_mib: Option<u64>,
    /// The VM bridge (created if missing; one agent per bridge).
    #[arg(long, default_value = firefleet_vmm::net::DEFAULT_BRIDGE)]
    pub bridge: String,
    /// The subnet for VM addresses (the bridge gets the first address).
    #[arg(long, default_value = firefleet_vmm::net::DEFAULT_SUBNET)]
    pub subnet: String,
    #[command(flatten)]
    pub firecracker: FirecrackerArgs,
    /// Report this power state instead of the host's: `mains` or `battery:PERCENT` (labs and
    /// tests of edge sites).
    #[arg(long)]
    pub power: Option<String>,
    /// Seconds a running VM's guest may stay silent on its channel before the VM is killed
    /// and replaced (0: never).
    #[arg(long, default_value_t = 30)]
    pub heartbeat_timeout_secs: u64,
    /// Milliseconds between telemetry samples of each running VM (sent to the guard in batches
    /// at the same pace).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub telemetry_interval_ms: u64,
    /// Most telemetry samples kept while the server cannot be reached (the oldest go first).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub telemetry_buffer: u64,
    /// Stop this node's VMMs when the agent is stopped (SIGTERM, Ctrl-C). By default they keep
    /// running and a restarted agent adopts them again.
    #[arg(long)]
    pub stop_vms_on_exit: bool,
}

/// Offering Firecracker on a node.
#[derive(Debug, Clone, Args)]
pub struct FirecrackerArgs {
    /// The `firecracker` binary: offer Firecracker besides QEMU (needs a usable /dev/kvm).
    #[arg(long = "firecracker", env = "FIREFLEET_FIRECRACKER")]
    pub firecracker: Option<PathBuf>,
    /// Run Firecracker under this `jailer` binary.
    #[arg(long = "jailer", env = "FIREFLEET_JAILER", requires = "firecracker")]
    pub jailer: Option<PathBuf>,
}

impl FirecrackerArgs {
    /// The agent's Firecracker configuration, if asked for.
    pub fn config(&self) -> Option<firefleet_agent::FirecrackerConfig> {
        self.firecracker
            .clone()
            .map(|binary| firefleet_agent::FirecrackerConfig {
                binary,
                jailer: self.jailer.clone(),
            })
    }
}

impl ServerArgs {
    /// The DNS names (`--dns-name` and the names of `--san`) and IP addresses (of `--san`) the
    /// server certificate covers besides localhost, the loopback addresses and `--listen`'s.
    pub fn certificate_names(&self) -> (Vec<String>, Vec<std::net::IpAddr>) {
        let (names, ips) = super::split_sans(&self.sans);
        let mut dns = self.dns_names.clone();
        for n in names {
            if !dns.contains(&n) {
                dns.push(n);
            }
        }
        (dns, ips)
    }
}
