//! The command line: the top-level parser, the options every client command takes, and the
//! command enum `main` dispatches on. Each command group's arguments live in a submodule of
//! `args` (processes, server settings, VMs and nodes, functions, tokens, images, benchmarks),
//! re-exported here so every command module imports them from `crate::args`.

mod addresses;
mod bench;
mod function;
mod image;
mod run;
mod server;
mod tokens;
mod vm;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use addresses::{parse_san, parse_servers, split_sans, San, ServerUrls};
pub use bench::BenchCommand;
pub use function::{FnCommand, FnDeployArgs};
pub use image::ImageCommand;
pub use run::{AgentArgs, ControlPlaneArgs, ServerArgs, UpArgs};
pub use server::{AgentCertArgs, FunctionArgs, GuardArgs, LimitArgs, NodeTimerArgs, QuotaArgs};
pub use tokens::{JoinTokenCommand, TokenCommand, TokenRole};
pub use vm::{NodeCommand, PlanArgs, VmCommand, VmRunArgs};

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
    /// Server address, or the addresses of several replicas, comma-separated
    /// (`https://a:7443,https://b:7443`): each call fails over to the next one when the
    /// current one cannot be reached or answers 503.
    #[arg(
        long,
        global = true,
        env = "FIREFLEET_SERVER",
        default_value = "https://127.0.0.1:7443",
        value_parser = parse_servers
    )]
    pub server: ServerUrls,
    /// With several servers: seconds a call keeps failing over between them (unreachable, or
    /// answering 503) before it gives up.
    #[arg(long, global = true, env = "FIREFLEET_FAILOVER_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(0..=600))]
    pub failover_secs: u64,
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
    /// Run the control-plane server (one of several replicas on etcd, or alone on SQLite).
    Server(ServerArgs),
    /// The control plane's replicas and leader.
    #[command(subcommand)]
    Cluster(crate::cmd_cluster::ClusterCommand),
    /// The store itself: copy a fleet's state from one store to another.
    #[command(subcommand)]
    Store(crate::cmd_cluster::StoreCommand),
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
