//! The command line.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "firefleet",
    version,
    about = "FireFleet: a control plane for microVMs"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Options every client command takes.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Server address.
    #[arg(
        long,
        global = true,
        env = "FIREFLEET_SERVER",
        default_value = "https://127.0.0.1:7443"
    )]
    pub server: String,
    /// Bearer token, or @FILE to read it from a file.
    #[arg(long, global = true, env = "FIREFLEET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the cluster CA.
    #[arg(long, global = true, env = "FIREFLEET_CA")]
    pub ca: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "table")]
    pub output: Output,
    /// Local image store.
    #[arg(long, global = true, env = "FIREFLEET_IMAGE_DIR")]
    pub image_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a server and a local agent in one process tree (embedded SQLite store).
    Up(UpArgs),
    /// Run the control-plane server.
    Server(ServerArgs),
    /// Run a node agent.
    Agent(AgentArgs),
    /// Manage VMs.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// One-time join tokens for agents.
    #[command(subcommand, name = "join-token")]
    JoinToken(JoinTokenCommand),
    /// Guest images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Benchmarks against a live cluster.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The migrations the planner would make now and why (dry run; `--apply` starts them).
    Plan(PlanArgs),
    /// Serverless functions: deploy, invoke, inspect, remove.
    #[command(subcommand)]
    Fn(FnCommand),
    /// Threat detection: check rule and playbook files, run rules on recorded telemetry.
    #[command(subcommand)]
    Guard(crate::cmd_guard::GuardCommand),
    /// Threats the guard found in running VMs and what it did about them.
    #[command(subcommand)]
    Threat(crate::cmd_guard::ThreatCommand),
    /// The tamper-evident audit log: list, verify (on the server or an export), export.
    #[command(subcommand)]
    Audit(crate::cmd_audit::AuditCommand),
    /// Offline evaluations of the decision engines on recorded traces.
    #[command(subcommand)]
    Eval(crate::cmd_eval::EvalCommand),
    /// Compliance as code: Rego admission and host policies (apply, list, test locally).
    #[command(subcommand)]
    Policy(crate::cmd_policy::PolicyCommand),
    /// Tenant attributes the policies see (class, data-residency regions).
    #[command(subcommand)]
    Tenant(crate::cmd_tenant::TenantCommand),
    /// Every VM's and node's evaluation against the policies, and reports of it.
    #[command(subcommand)]
    Compliance(crate::cmd_policy::ComplianceCommand),
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Consider every VM for cost, latency and availability, not only triggered ones.
    #[arg(long)]
    pub rebalance: bool,
    /// Utilisation above which a node is overloaded (default 0.9).
    #[arg(long)]
    pub imbalance: Option<f64>,
    /// Battery percent under which a node's VMs should leave (default 30).
    #[arg(long)]
    pub battery_below: Option<u8>,
    /// Start the planned migrations.
    #[arg(long)]
    pub apply: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time from `vm run` to Running, split into control-plane and VMM boot time.
    VmRun {
        /// Number of VMs, one after another.
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Memory per VM in MiB.
        #[arg(long, default_value_t = 256)]
        memory: u64,
    },
    /// A function's cold starts (instance restored from its template) against warm calls.
    Fn {
        /// Cold starts (each followed by `--warm` warm calls).
        #[arg(long, default_value_t = 5)]
        count: usize,
        /// Warm calls after each cold start.
        #[arg(long, default_value_t = 5)]
        warm: usize,
        /// Memory per instance in MiB.
        #[arg(long, default_value_t = 128)]
        memory: u64,
    },
    /// Admission latency with the built-in policy bundle: the engine alone, and (with
    /// `--api`) the API's round trip for a create the policies refuse.
    Admission {
        /// Samples of each.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Also measure through the server (`--server`, `--token`).
        #[arg(long)]
        api: bool,
    },
    /// Cold boot to ready vs restore from a snapshot to running, on this host (no server).
    Restore {
        /// Samples of each.
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Where the benchmark's VMs live (default: a temporary directory).
        #[arg(long)]
        state_dir: Option<std::path::PathBuf>,
    },
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
    /// Write the bound address to this file once listening (useful with port 0).
    #[arg(long)]
    pub addr_file: Option<PathBuf>,
    #[command(flatten)]
    pub node_timers: NodeTimerArgs,
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

/// The quota of tenants whose record sets none (`tenant set --quota`); 0: unlimited.
#[derive(Debug, Clone, Args)]
pub struct QuotaArgs {
    /// VMs per tenant.
    #[arg(long, default_value_t = default_quota(firefleet_server::DEFAULT_QUOTA.vms))]
    pub quota_vms: u64,
    /// vCPUs per tenant, its VMs together.
    #[arg(long, default_value_t = default_quota(firefleet_server::DEFAULT_QUOTA.vcpus))]
    pub quota_vcpus: u64,
    /// Memory per tenant, its VMs together, MiB.
    #[arg(long, default_value_t = default_quota(firefleet_server::DEFAULT_QUOTA.memory_mib))]
    pub quota_memory_mib: u64,
    /// Functions per tenant.
    #[arg(long, default_value_t = default_quota(firefleet_server::DEFAULT_QUOTA.functions))]
    pub quota_functions: u64,
    /// Snapshots per tenant, of its VMs together.
    #[arg(long, default_value_t = default_quota(firefleet_server::DEFAULT_QUOTA.snapshots))]
    pub quota_snapshots: u64,
}

fn default_quota(limit: Option<u64>) -> u64 {
    limit.unwrap_or(0)
}

impl QuotaArgs {
    /// The server's default quota (0 for unlimited).
    pub fn quota(&self) -> firefleet_api::TenantQuota {
        let limit = |v: u64| (v > 0).then_some(v);
        firefleet_api::TenantQuota {
            vms: limit(self.quota_vms),
            vcpus: limit(self.quota_vcpus),
            memory_mib: limit(self.quota_memory_mib),
            functions: limit(self.quota_functions),
            snapshots: limit(self.quota_snapshots),
        }
    }
}

/// What callers may hold (defaults in `firefleet_server::Limits`).
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Open connections in all.
    #[arg(long, default_value_t = firefleet_server::Limits::default().max_connections)]
    pub max_connections: usize,
    /// Open connections from one client address.
    #[arg(long, default_value_t = firefleet_server::Limits::default().max_connections_per_client)]
    pub max_connections_per_client: usize,
    /// Seconds a TLS handshake and each request's headers may take.
    #[arg(long, default_value_t = firefleet_server::Limits::default().header_timeout.as_secs())]
    pub header_timeout_secs: u64,
    /// Seconds a connection may stay open with no request in flight.
    #[arg(long, default_value_t = firefleet_server::Limits::default().idle_timeout.as_secs())]
    pub idle_timeout_secs: u64,
    /// Requests per second per token (and per anonymous client address); past the burst, 429.
    #[arg(long, default_value_t = firefleet_server::Limits::default().requests_per_sec)]
    pub rate_limit: f64,
    /// Requests a token may make at once after a quiet spell.
    #[arg(long, default_value_t = firefleet_server::Limits::default().burst)]
    pub rate_burst: f64,
}

impl LimitArgs {
    /// The server's settings; zero or negative values are refused, naming the flag.
    pub fn limits(&self) -> anyhow::Result<firefleet_server::Limits> {
        for (flag, ok) in [
            ("--max-connections", self.max_connections > 0),
            (
                "--max-connections-per-client",
                self.max_connections_per_client > 0,
            ),
            ("--header-timeout-secs", self.header_timeout_secs > 0),
            ("--idle-timeout-secs", self.idle_timeout_secs > 0),
            (
                "--rate-limit",
                self.rate_limit.is_finite() && self.rate_limit > 0.0,
            ),
            (
                "--rate-burst",
                self.rate_burst.is_finite() && self.rate_burst >= 1.0,
            ),
        ] {
            anyhow::ensure!(ok, "{flag} must be positive (at least 1 for --rate-burst)");
        }
        Ok(firefleet_server::Limits {
            max_connections: self.max_connections,
            max_connections_per_client: self.max_connections_per_client,
            header_timeout: std::time::Duration::from_secs(self.header_timeout_secs),
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout_secs),
            requests_per_sec: self.rate_limit,
            burst: self.rate_burst,
        })
    }
}

/// Agent certificates.
#[derive(Debug, Clone, Args)]
pub struct AgentCertArgs {
    /// How long agent certificates are valid, seconds (agents renew theirs when two thirds
    /// have passed; an agent offline for longer needs `join-token create --node NAME`).
    #[arg(long, default_value_t = firefleet_server::AGENT_CERT_LIFETIME.as_secs(),
          value_parser = clap::value_parser!(u64).range(60..))]
    pub agent_cert_lifetime_secs: u64,
}

impl AgentCertArgs {
    /// The agent certificate lifetime.
    pub fn lifetime(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.agent_cert_lifetime_secs)
    }
}

/// The guard's rules and responses.
#[derive(Debug, Clone, Args)]
pub struct GuardArgs {
    /// A guard rule file (TOML) merged over the built-in rules by id (check it first with
    /// `firefleet guard rules test FILE`).
    #[arg(long, env = "FIREFLEET_GUARD_RULES")]
    pub rules: Option<PathBuf>,
    /// A response playbook file (TOML: severity -> ordered actions, per tenant) merged over the
    /// built-in playbooks.
    #[arg(long, env = "FIREFLEET_PLAYBOOKS")]
    pub playbooks: Option<PathBuf>,
}

impl GuardArgs {
    /// The server's settings; a broken file is an error naming the file, line and column.
    pub fn config(&self) -> anyhow::Result<firefleet_server::GuardConfig> {
        use anyhow::Context as _;
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        let rules = match &self.rules {
            Some(p) => firefleet_guard::Rules::parse(&read(p)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
            None => firefleet_guard::Rules::builtin(),
        };
        let playbooks = match &self.playbooks {
            Some(p) => firefleet_guard::Playbooks::parse(&read(p)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
            None => firefleet_guard::Playbooks::builtin(),
        };
        Ok(firefleet_server::GuardConfig { rules, playbooks })
    }
}

/// How functions are scaled.
#[derive(Debug, Clone, Args)]
pub struct FunctionArgs {
    /// The autoscaler's policy: firefleet, fixed-10m (fixed-<N>m, fixed:<secs>), hybrid,
    /// knative.
    #[arg(long, default_value = "firefleet")]
    pub fn_policy: firefleet_server::PolicyKind,
    /// The autoscaler's tick, milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub fn_tick_ms: u64,
    /// The autoscaler's histogram bin and forecast step, seconds.
    #[arg(long, default_value_t = 60)]
    pub fn_bin_secs: u64,
    /// Keep-alive of idle instances of a function with too little history, seconds.
    #[arg(long, default_value_t = 600)]
    pub fn_keep_alive_secs: u64,
    /// How long an invocation waits for an instance before it fails, seconds.
    #[arg(long, default_value_t = 60)]
    pub fn_hold_secs: u64,
}

impl FunctionArgs {
    /// The server's settings.
    pub fn config(&self) -> firefleet_server::FunctionsConfig {
        use std::time::Duration;
        firefleet_server::FunctionsConfig {
            tick: Duration::from_millis(self.fn_tick_ms.max(50)),
            bin: Duration::from_secs(self.fn_bin_secs.max(1)),
            default_keep_alive: Duration::from_secs(self.fn_keep_alive_secs),
            hold: Duration::from_secs(self.fn_hold_secs.max(1)),
            policy: self.fn_policy,
        }
    }
}

/// Node failure detection.
#[derive(Debug, Clone, Args)]
pub struct NodeTimerArgs {
    /// Seconds without a heartbeat before a node is NotReady (no new placements).
    #[arg(long, default_value_t = firefleet_server::NODE_GRACE.as_secs())]
    pub node_grace_secs: u64,
    /// Seconds a node stays NotReady before its VMs are placed on other nodes.
    #[arg(long, default_value_t = firefleet_server::EVICT_AFTER.as_secs())]
    pub evict_after_secs: u64,
}

impl NodeTimerArgs {
    /// The server's timers.
    pub fn timers(&self) -> firefleet_server::NodeTimers {
        firefleet_server::NodeTimers {
            grace: std::time::Duration::from_secs(self.node_grace_secs.max(1)),
            evict_after: std::time::Duration::from_secs(self.evict_after_secs),
        }
    }
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Server address.
    #[arg(
        long,
        env = "FIREFLEET_SERVER",
        default_value = "https://127.0.0.1:7443"
    )]
    pub server: String,
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

#[derive(Debug, Subcommand)]
pub enum FnCommand {
    /// Deploy a function (or change one): its first instance is booted and snapshotted, and
    /// that snapshot is the template every other instance starts from.
    Deploy(Box<FnDeployArgs>),
    /// List functions.
    Ls,
    /// Show a function, its instances and counters.
    Get {
        /// Function name.
        name: String,
    },
    /// Remove a function and all its instances.
    Rm {
        /// Function name.
        name: String,
    },
    /// The consoles of a function's template and instances.
    Logs {
        /// Function name.
        name: String,
    },
    /// Invoke a function: the response body goes to stdout.
    Invoke {
        /// Function name.
        name: String,
        /// Request body: text, `@FILE`, or `-` for standard input (default: empty).
        #[arg(long)]
        data: Option<String>,
        /// The caller's region (the nearest instance serves).
        #[arg(long)]
        region: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct FnDeployArgs {
    /// Name.
    pub name: String,
    /// Image name or digest (default: the `default` image, built on first use).
    #[arg(long, default_value = "default")]
    pub image: String,
    /// The handler, run with `sh -c` once per invocation (request on stdin, response on
    /// stdout); with `--port`, the workload serving HTTP on that port.
    #[arg(long)]
    pub cmd: String,
    /// HTTP mode: invocations are POSTed to this port inside the instance.
    #[arg(long)]
    pub port: Option<u16>,
    /// HTTP mode: the path they are POSTed to.
    #[arg(long)]
    pub path: Option<String>,
    /// Memory per instance, MiB.
    #[arg(long, default_value_t = 128)]
    pub memory: u64,
    /// vCPUs per instance.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Invocations in flight per instance at most.
    #[arg(long, default_value_t = 1)]
    pub concurrency: u32,
    /// Warm instances at least (0: scale to zero).
    #[arg(long, default_value_t = 0)]
    pub min: u32,
    /// Instances at most.
    #[arg(long, default_value_t = 10)]
    pub max: u32,
    /// Region or edge site for its instances (repeatable; default: anywhere).
    #[arg(long = "region")]
    pub regions: Vec<String>,
    /// Invocation timeout, seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
    /// Keep idle instances this long (seconds) instead of what the autoscaler decides.
    #[arg(long)]
    pub keep_alive_secs: Option<u64>,
    /// The VMM: qemu or firecracker.
    #[arg(long, default_value = "qemu")]
    pub runtime: String,
    /// End users may invoke it without a token (`/fn/TENANT/NAME`).
    #[arg(long)]
    pub public: bool,
    /// Tenant (admin only).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Return at once instead of waiting until the template is ready.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Create a VM.
    Run(Box<VmRunArgs>),
    /// List VMs.
    Ls,
    /// Show a VM.
    Get {
        /// VM name or id.
        vm: String,
    },
    /// Show a VM's console.
    Logs {
        /// VM name or id.
        vm: String,
        /// Keep printing new output until the VM stops.
        #[arg(long, short)]
        follow: bool,
    },
    /// Stop a VM.
    Stop {
        /// VM name or id.
        vm: String,
        /// Wait until it has stopped.
        #[arg(long)]
        wait: bool,
    },
    /// Pause a running VM (its vCPUs stop; memory stays).
    Pause {
        /// VM name or id.
        vm: String,
        /// Wait until it is paused.
        #[arg(long)]
        wait: bool,
    },
    /// Resume a paused VM.
    Resume {
        /// VM name or id.
        vm: String,
        /// Wait until it runs.
        #[arg(long)]
        wait: bool,
    },
    /// Snapshot a running or paused VM (memory, device state, disks), kept on its node.
    Snapshot {
        /// VM name or id.
        vm: String,
        /// Snapshot name.
        name: String,
        /// Wait until it is ready.
        #[arg(long)]
        wait: bool,
    },
    /// List a VM's snapshots.
    Snapshots {
        /// VM name or id.
        vm: String,
    },
    /// Restore a VM from a snapshot in a fresh VMM process; the guest continues from it.
    Restore {
        /// VM name or id.
        vm: String,
        /// Snapshot name.
        snapshot: String,
        /// Wait until it runs.
        #[arg(long)]
        wait: bool,
    },
    /// Move a running VM to another node (snapshot, transfer, restore; admin). The guest goes on
    /// where it was.
    Migrate {
        /// VM name or id.
        vm: String,
        /// The destination node.
        #[arg(long)]
        to: String,
        /// Wait until it runs there (or the migration failed); exits non-zero if it failed.
        #[arg(long)]
        wait: bool,
        /// Longest wait in seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Move it by snapshot (paused for the whole transfer) even where a live (pre-copy)
        /// migration is possible.
        #[arg(long)]
        by_snapshot: bool,
    },
    /// Run a command in a VM's guest and print its output; exits with the command's status.
    Exec {
        /// VM name or id.
        vm: String,
        /// Kill it after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Show a VM's statistics (host side and guest side).
    Stats {
        /// VM name or id.
        vm: String,
    },
    /// Delete a VM (stopping it first).
    Rm {
        /// VM name or id.
        vm: String,
        /// Wait until it is gone.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Debug, Args)]
pub struct VmRunArgs {
    /// Name (default: a generated one).
    #[arg(long)]
    pub name: Option<String>,
    /// Image name or digest (default: the `default` image, built on first use).
    #[arg(long, default_value = "default")]
    pub image: String,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Memory in MiB.
    #[arg(long, default_value_t = 256)]
    pub memory: u64,
    /// Labels (`k=v`).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Command for the guest, run with `sh -c`; the VM stops when it exits.
    #[arg(long)]
    pub cmd: Option<String>,
    /// Restart policy: `never`, `on-failure` (it failed, or its command exited non-zero) or
    /// `always`; restarts back off from 1 s to 60 s.
    #[arg(long = "restart", default_value = "never", value_parser = parse_restart)]
    pub restart: firefleet_types::RestartPolicy,
    /// Tenant (admin only).
    #[arg(long)]
    pub tenant: Option<String>,
    /// No network interface.
    #[arg(long, conflicts_with_all = ["egress_mbit", "ingress_mbit"])]
    pub no_network: bool,
    /// Bandwidth limit for traffic from the guest, Mbit/s (default 1000).
    #[arg(long)]
    pub egress_mbit: Option<u32>,
    /// Bandwidth limit for traffic to the guest, Mbit/s.
    #[arg(long)]
    pub ingress_mbit: Option<u32>,
    /// The VMM: qemu or firecracker (only nodes offering it are considered).
    #[arg(long, default_value = "qemu")]
    pub runtime: String,
    /// Only nodes with this label (`k=v`, repeatable).
    #[arg(long = "node-selector")]
    pub node_selector: Vec<String>,
    /// Only nodes in this cloud (repeatable; data residency).
    #[arg(long = "allow-cloud")]
    pub allowed_clouds: Vec<String>,
    /// Only nodes in this region or edge site (repeatable; data residency).
    #[arg(long = "allow-region")]
    pub allowed_regions: Vec<String>,
    /// Spread group: replicas of one group go to different nodes, zones, regions, clouds.
    #[arg(long)]
    pub group: Option<String>,
    /// Workload class (selects placement weights).
    #[arg(long)]
    pub class: Option<String>,
    /// Where the VM's users are (latency is scored from there).
    #[arg(long)]
    pub user_region: Option<String>,
    /// Only on nodes whose host posture passes the host policies.
    #[arg(long)]
    pub compliant_host: bool,
    /// A disk, repeatable, in attachment order: `image=NAME[,root][,ro]` (a disk image from
    /// `image build-disk`; `root`: the workload runs in it; `ro`: read-only) or `size=MIB`
    /// (a blank ext4 disk).
    #[arg(long = "disk")]
    pub disks: Vec<String>,
    /// Wait until the VM is Running (or has finished).
    #[arg(long)]
    pub wait: bool,
    /// Longest wait in seconds.
    #[arg(long, default_value_t = 180)]
    pub timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    Ls,
    /// Stop placing VMs on a node (its VMs keep running).
    Cordon {
        /// Node name.
        node: String,
    },
    /// Place VMs on a node again.
    Uncordon {
        /// Node name.
        node: String,
    },
    /// Remove a node: its record goes and every certificate it was issued is refused from then
    /// on. Refused while VMs are placed on it (drain it first).
    Rm {
        /// Node name.
        node: String,
    },
    /// Cordon a node and migrate its running VMs to the nodes the scheduler picks.
    Drain {
        /// Node name.
        node: String,
        /// Wait until every migration is done or failed; exits non-zero if one failed or a VM
        /// could not be moved.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token (admin): a tenant's, a metrics scraper's (`--role metrics`: reads
    /// /metrics only) or another admin's. The secret is printed once.
    Create {
        /// Tenant the token acts for (admin tokens: `admin`, the default for them).
        #[arg(long)]
        tenant: Option<String>,
        /// Role.
        #[arg(long, value_enum, default_value_t = TokenRole::Tenant)]
        role: TokenRole,
        /// Seconds until it expires (default: never).
        #[arg(long = "ttl")]
        ttl_secs: Option<u64>,
        /// What it is for (shown by `token ls`).
        #[arg(long)]
        note: Option<String>,
    },
    /// List tokens (admin): ids, tenants, roles, expiry; never the secrets.
    Ls {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a token by id (admin): refused from the next request on.
    Revoke {
        /// Token id (from `token ls`).
        id: String,
    },
}

/// A token's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenRole {
    /// A tenant's own objects.
    Tenant,
    /// Reads /metrics only.
    Metrics,
    /// Everything.
    Admin,
}

#[derive(Debug, Subcommand)]
pub enum JoinTokenCommand {
    /// Create a one-time join token for an agent (admin).
    Create {
        /// Validity in seconds.
        #[arg(long)]
        ttl_secs: Option<u64>,
        /// Bind the token to this node name: it enrols only that name, and may enrol it again
        /// while it exists (an agent that lost its data directory). Without it, a name that is
        /// taken is refused.
        #[arg(long)]
        node: Option<String>,
        /// The node enrols cordoned (default: a new node uncordoned, a re-enrolled one as it
        /// was).
        #[arg(long, conflicts_with = "uncordon")]
        cordon: bool,
        /// The node enrols uncordoned.
        #[arg(long)]
        uncordon: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build a guest image from Debian's cloud kernel and firefleet-guest.
    Build {
        /// Image name.
        #[arg(long, default_value = "default")]
        name: String,
        /// The static firefleet-guest binary (default: next to this binary, or FIREFLEET_GUEST_BIN).
        #[arg(long)]
        guest_bin: Option<PathBuf>,
    },
    /// Build an ext4 disk image from a directory (`mkfs.ext4 -d`), for `vm run --disk`.
    BuildDisk {
        /// Image name.
        #[arg(long)]
        name: String,
        /// The directory whose contents the filesystem holds.
        #[arg(long)]
        from: PathBuf,
        /// Filesystem size in MiB (default: the directory's size plus room).
        #[arg(long)]
        size_mib: Option<u64>,
    },
    /// List images (boot images and disk images).
    Ls,
}

/// Parses `--restart`.
fn parse_restart(s: &str) -> Result<firefleet_types::RestartPolicy, String> {
    use firefleet_types::RestartPolicy;
    match s {
        "never" => Ok(RestartPolicy::Never),
        "on-failure" => Ok(RestartPolicy::OnFailure),
        "always" => Ok(RestartPolicy::Always),
        _ => Err(format!("{s:?}: expected never, on-failure or always")),
    }
}
