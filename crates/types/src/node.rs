//! Nodes: what an agent reports about its host (facts) and what the control plane observes
//! (status).

use crate::{ids::NodeId, resources::Resources, topology::Labels, UnixMillis};

/// The accelerator a VMM uses.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// What an agent reports about its host with each heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct NodeFacts {
    /// Host name.
    pub hostname: String,
    /// Capacity offered to VMs.
    pub capacity: Resources,
    /// The accelerator chosen by the probe boot.
    pub accel: Accel,
    /// What the probe boot saw (why KVM was or was not chosen).
    pub accel_probe: String,
    /// VMM runtimes available (`qemu`, later `firecracker`).
    pub runtimes: Vec<String>,
    /// VMM version string.
    pub vmm_version: String,
    /// Host kernel release.
    pub kernel: String,
    /// Agent version.
    pub agent_version: String,
    /// The node's VM network, when the agent could set it up.
    #[serde(default)]
    pub network: Option<NodeNetworkFacts>,
    /// The protections in force for VMM processes (and what is not in force, and why).
    #[serde(default)]
    pub isolation: Option<IsolationFacts>,
    /// How the node is powered, where the host says.
    #[serde(default)]
    pub power: Option<PowerFacts>,
    /// The host's security posture (Firecracker's production host setup checklist), evaluated
    /// by the host policies (`input.node.facts.posture`).
    #[serde(default)]
    pub posture: Option<PostureFacts>,
}

/// A host's security posture: what the host policies check (Firecracker's production host setup
/// guide). Every field is what the agent read on the host; `None` means it could not be read.
#[derive(
    Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct PostureFacts {
    /// `/sys/devices/system/cpu/smt/control`: `on`, `off`, `forceoff`, `notsupported`,
    /// `notimplemented`.
    #[serde(default)]
    pub smt_control: Option<String>,
    /// `/sys/devices/system/cpu/smt/active`: siblings are running.
    #[serde(default)]
    pub smt_active: Option<bool>,
    /// `/sys/kernel/mm/ksm/run` is 1 (kernel same-page merging on: a side channel between VMs).
    #[serde(default)]
    pub ksm_enabled: Option<bool>,
    /// Swap space in use or available, KiB (`SwapTotal` in `/proc/meminfo`; 0: no swap).
    #[serde(default)]
    pub swap_total_kib: Option<u64>,
    /// `/sys/devices/system/cpu/vulnerabilities/*`: each file's name and text (e.g.
    /// `spectre_v2` -> `Mitigation: Retpolines; ...`, `Vulnerable`, `Not affected`).
    #[serde(default)]
    pub vulnerabilities: std::collections::BTreeMap<String, String>,
    /// The names of those whose text starts with `Vulnerable`.
    #[serde(default)]
    pub vulnerable: Vec<String>,
    /// Guests' traffic to the cloud metadata address (169.254.169.254) is dropped by the node's
    /// firewall.
    #[serde(default)]
    pub metadata_egress_blocked: bool,
    /// Each VMM runs in its own sandbox (the jailer's, or FireFleet's own: uid per VM, mount
    /// namespace, chroot).
    #[serde(default)]
    pub vmm_sandboxed: bool,
    /// A seccomp filter is in force for every VMM.
    #[serde(default)]
    pub seccomp: bool,
    /// Every VMM runs in a cgroup with CPU and memory limits.
    #[serde(default)]
    pub cgroup_limits: bool,
}

/// Where a node's power comes from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PowerSource {
    /// Mains (or a supply the host does not describe as a battery).
    Mains,
    /// Running on its battery.
    Battery,
    /// The host exposes nothing about its power.
    Unknown,
}

/// A node's power, from `/sys/class/power_supply` and powercap (RAPL).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct PowerFacts {
    /// Mains, battery or unknown.
    pub source: PowerSource,
    /// Battery charge, percent, when there is a battery.
    #[serde(default)]
    pub battery_percent: Option<u8>,
    /// Power drawn, milliwatts, where the host measures it.
    #[serde(default)]
    pub milliwatts: Option<u64>,
}

/// The protections a node applies to its VMM processes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct IsolationFacts {
    /// Each VMM runs under a uid/gid of its own, without supplementary groups or new privileges.
    pub uid_per_vm: bool,
    /// The seccomp filter in force.
    pub seccomp: String,
    /// Which cgroup hierarchy is used: `v2`, `v1`, `hybrid (...)` or `none`.
    pub cgroup: String,
    /// CPU limits are enforced.
    pub cpu_limit: bool,
    /// Memory limits are enforced.
    pub memory_limit: bool,
    /// What the VMM's jail is.
    pub jail: String,
    /// What is not in force, and why.
    pub notes: Vec<String>,
}

/// A node's VM network: a bridge with an address in the node subnet, the guests' gateway.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct NodeNetworkFacts {
    /// The bridge.
    pub bridge: String,
    /// The node subnet (`10.213.0.0/24`).
    pub subnet: String,
    /// The bridge's address, the guests' gateway.
    pub gateway: String,
}

/// Whether a node takes work.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum NodeReadiness {
    /// Heartbeats arrive.
    Ready,
    /// Heartbeats stopped arriving.
    NotReady,
}

/// What the control plane observes of a node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct NodeStatus {
    /// Readiness.
    pub readiness: NodeReadiness,
    /// When the last heartbeat arrived.
    pub last_heartbeat_ms: UnixMillis,
    /// The facts of the last heartbeat.
    pub facts: Option<NodeFacts>,
}

/// A node as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct NodeInfo {
    /// Id (its name).
    #[schema(value_type = String)]
    pub id: NodeId,
    /// Topology and other labels given at enrollment (`cloud`, `region`, `zone`, `site`).
    pub labels: Labels,
    /// Excluded from new placements.
    #[serde(default)]
    pub cordoned: bool,
    /// When it enrolled.
    pub enrolled_ms: UnixMillis,
    /// Observed state.
    pub status: NodeStatus,
}
