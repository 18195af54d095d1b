//! `vm`, `node` and `plan`.

use clap::{Args, Subcommand};

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
