//! VMs: the spec a user writes, the status controllers and agents observe, and the phase
//! state machine with its legal transitions in one place.

use crate::{
    ids::{NodeId, TenantId, VmId},
    node::Accel,
    resources::Resources,
    topology::{validate_labels, Labels},
    validate::{check_name, ValidationError},
    Generation, UnixMillis,
};

/// Most arguments in a VM's command.
pub const MAX_CMD_ARGS: usize = 64;
/// Most bytes in a VM's command, all arguments together (it travels on the kernel command line).
pub const MAX_CMD_BYTES: usize = 1024;

/// What the user wants of a VM.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    /// Run it.
    Running,
    /// Keep it, with its vCPUs paused (memory stays allocated; resuming is instant).
    Paused,
    /// Stop it (and keep the record).
    Stopped,
}

/// What to do when a VM's guest exits.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// Leave it stopped.
    #[default]
    Never,
    /// Restart it if it failed.
    OnFailure,
    /// Always restart it.
    Always,
}

/// The desired state of a VM, as written through the API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// Human name, unique per tenant.
    pub name: String,
    /// Owner.
    #[schema(value_type = String)]
    pub tenant: TenantId,
    /// Image digest (`sha256:<hex>`).
    pub image: String,
    /// Requested resources.
    pub resources: Resources,
    /// User labels.
    #[serde(default)]
    pub labels: Labels,
    /// Command the guest runs after boot; none means the guest just idles.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// Restart policy.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Run, pause or stop.
    pub desired: DesiredState,
    /// Restore the VM from one of its snapshots (requested at a generation; the agent carries it
    /// out once per request).
    #[serde(default)]
    pub restore: Option<RestoreRequest>,
    /// The VM's network interface.
    #[serde(default)]
    pub network: NetworkSpec,
    /// The VMM that runs it (default `qemu`). Only nodes offering it are considered.
    #[serde(default)]
    pub runtime: VmRuntime,
    /// Block devices, in attachment order (the guest sees `/dev/vda`, `/dev/vdb`, ...).
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// Where it may and should run.
    #[serde(default)]
    pub placement: PlacementSpec,
    /// The function this VM is an instance of (set by the functions controller, not by users).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<crate::function::FunctionInstance>,
}

/// Placement constraints and preferences of a VM.
#[derive(
    Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct PlacementSpec {
    /// Only nodes with these labels (all of them).
    #[serde(default)]
    #[schema(value_type = crate::schema::LabelRequest)]
    pub node_selector: Labels,
    /// Only nodes in these clouds (data residency; empty: any).
    #[serde(default)]
    #[schema(value_type = Vec<crate::schema::NameRequest>)]
    pub allowed_clouds: Vec<String>,
    /// Only nodes in these regions or edge sites (data residency; empty: any).
    #[serde(default)]
    #[schema(value_type = Vec<crate::schema::NameRequest>)]
    pub allowed_regions: Vec<String>,
    /// Replicas of one group are spread over nodes, zones, regions and clouds.
    #[serde(default)]
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub group: Option<String>,
    /// Workload class: selects the placement weights (e.g. `latency`, `batch`).
    #[serde(default)]
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub class: Option<String>,
    /// Where its users are (a region or user region of the topology): latency is scored from
    /// there.
    #[serde(default)]
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub user_region: Option<String>,
    /// Only on nodes whose host posture passes the host policies (a tainted node gets none).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compliant_host: bool,
}

impl PlacementSpec {
    /// Checks names and labels.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_labels("placement.node_selector", &self.node_selector)?;
        for (field, list) in [
            ("placement.allowed_clouds", &self.allowed_clouds),
            ("placement.allowed_regions", &self.allowed_regions),
        ] {
            for (i, v) in list.iter().enumerate() {
                check_name(&format!("{field}[{i}]"), v)?;
            }
        }
        for (field, v) in [
            ("placement.group", &self.group),
            ("placement.class", &self.class),
            ("placement.user_region", &self.user_region),
        ] {
            if let Some(v) = v {
                check_name(field, v)?;
            }
        }
        Ok(())
    }
}

/// The VMM backends.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum VmRuntime {
    /// QEMU's `microvm` machine (KVM, or TCG software emulation where KVM cannot boot a guest).
    #[default]
    Qemu,
    /// Firecracker (needs KVM).
    Firecracker,
}

impl VmRuntime {
    /// The name nodes report in their facts (`qemu`, `firecracker`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            VmRuntime::Qemu => "qemu",
            VmRuntime::Firecracker => "firecracker",
        }
    }
}

impl std::fmt::Display for VmRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for VmRuntime {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "qemu" => Ok(VmRuntime::Qemu),
            "firecracker" => Ok(VmRuntime::Firecracker),
            other => Err(ValidationError::new(
                "runtime",
                format!("{other:?}: must be qemu or firecracker"),
            )),
        }
    }
}

/// Most disks per VM.
pub const MAX_DISKS: usize = 8;
/// The largest blank disk, in MiB.
pub const MAX_DISK_MIB: u64 = 1 << 20;

/// A block device of a VM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// The disk image it starts as (`sha256:<hex>` of an image from `firefleet image build-disk`):
    /// the VM gets its own copy-on-write layer over the shared image (or the image itself,
    /// when read-only). None: a blank ext4 disk of `size_mib`.
    #[serde(default)]
    #[schema(pattern = "^sha256:[0-9a-f]{64}$")]
    pub image: Option<String>,
    /// Size of a blank disk, MiB (1..=1048576). Only without `image`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1048576)]
    pub size_mib: Option<u64>,
    /// Attach it read-only (the guest cannot write it; an image is then shared, not copied).
    #[serde(default)]
    pub read_only: bool,
    /// The guest's root filesystem: the workload runs inside it (at most one disk; needs an
    /// image). Other disks are mounted under `/mnt/<index>`.
    #[serde(default)]
    pub root: bool,
}

impl DiskSpec {
    fn validate(&self, field: &str) -> Result<(), ValidationError> {
        match (&self.image, self.size_mib) {
            (Some(image), None) => validate_image_ref(&format!("{field}.image"), image)?,
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    format!("{field}.size_mib"),
                    "only for a blank disk (not with image)",
                ))
            }
            (None, Some(m)) if m == 0 || m > MAX_DISK_MIB => {
                return Err(ValidationError::new(
                    format!("{field}.size_mib"),
                    format!("{m} MiB: must be 1..={MAX_DISK_MIB}"),
                ))
            }
            (None, Some(_)) => {}
            (None, None) => {
                return Err(ValidationError::new(
                    field,
                    "give an image or the size_mib of a blank disk",
                ))
            }
        }
        if self.root && self.image.is_none() {
            return Err(ValidationError::new(
                format!("{field}.root"),
                "a root disk needs an image (a blank disk has no system to run)",
            ));
        }
        if self.read_only && self.image.is_none() {
            return Err(ValidationError::new(
                format!("{field}.read_only"),
                "a blank read-only disk would hold nothing",
            ));
        }
        Ok(())
    }
}

/// The largest bandwidth limit accepted, in Mbit/s.
pub const MAX_NET_MBIT: u32 = 100_000;

/// The egress limit of a VM whose spec names none, in Mbit/s: every VM's sending is bounded
/// unless its owner says otherwise (`"egress_mbit": null`), which the built-in admission policy
/// `egress_limited` then flags.
pub const DEFAULT_EGRESS_MBIT: u32 = 1000;

/// A VM's network interface: on the node's bridge, with an address from the node's subnet,
/// reachable by the host and by the tenant's other VMs on the node.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// Give the VM a network interface (default true). Nodes without networking run the VM
    /// without one.
    #[serde(default = "enabled_default")]
    pub enabled: bool,
    /// Bandwidth limit for traffic from the guest, Mbit/s (1..=100000; default 1000;
    /// null: unlimited).
    #[serde(default = "egress_default")]
    #[schema(minimum = 1, maximum = 100000)]
    pub egress_mbit: Option<u32>,
    /// Bandwidth limit for traffic to the guest, Mbit/s (1..=100000; none: unlimited).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100000)]
    pub ingress_mbit: Option<u32>,
    /// Drop all traffic to and from the VM (the guard's `isolate`; the guest channel, which
    /// is not a network, still works).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub isolated: bool,
}

fn enabled_default() -> bool {
    true
}

fn egress_default() -> Option<u32> {
    Some(DEFAULT_EGRESS_MBIT)
}

impl Default for NetworkSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            egress_mbit: egress_default(),
            ingress_mbit: None,
            isolated: false,
        }
    }
}

impl NetworkSpec {
    /// Checks the limits.
    pub fn validate(&self) -> Result<(), ValidationError> {
        for (field, v) in [
            ("network.egress_mbit", self.egress_mbit),
            ("network.ingress_mbit", self.ingress_mbit),
        ] {
            if let Some(m) = v {
                if m == 0 || m > MAX_NET_MBIT {
                    return Err(ValidationError::new(
                        field,
                        format!("{m} Mbit/s: must be 1..={MAX_NET_MBIT}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A request to restore a VM from a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// The snapshot's name.
    pub snapshot: String,
    /// The VM generation at which it was requested; done once `status.restored_generation`
    /// reaches it.
    #[schema(value_type = u64)]
    pub generation: Generation,
}

impl VmSpec {
    /// Validates every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_name("name", &self.name)?;
        validate_image_ref("image", &self.image)?;
        self.resources.validate_request()?;
        validate_labels("labels", &self.labels)?;
        if let Some(cmd) = &self.cmd {
            validate_cmd(cmd)?;
        }
        self.network.validate()?;
        validate_disks(&self.disks)?;
        self.placement.validate()?;
        Ok(())
    }
}

/// Checks a VM's disk list: at most [`MAX_DISKS`], at most one root, each disk well formed.
pub fn validate_disks(disks: &[DiskSpec]) -> Result<(), ValidationError> {
    if disks.len() > MAX_DISKS {
        return Err(ValidationError::new(
            "disks",
            format!("{} disks: at most {MAX_DISKS}", disks.len()),
        ));
    }
    for (i, d) in disks.iter().enumerate() {
        d.validate(&format!("disks[{i}]"))?;
    }
    if disks.iter().filter(|d| d.root).count() > 1 {
        return Err(ValidationError::new("disks", "at most one root disk"));
    }
    Ok(())
}

/// Checks an image reference: `sha256:` and 64 lowercase hex digits.
pub fn validate_image_ref(field: &str, s: &str) -> Result<(), ValidationError> {
    let hex = s.strip_prefix("sha256:").ok_or_else(|| {
        ValidationError::new(
            field,
            format!("{s:?} is not an image digest (sha256:<64 hex>)"),
        )
    })?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(ValidationError::new(
            field,
            format!("{s:?} is not an image digest (sha256:<64 hex>)"),
        ));
    }
    Ok(())
}

/// Checks a guest command.
pub fn validate_cmd(cmd: &[String]) -> Result<(), ValidationError> {
    if cmd.is_empty() {
        return Err(ValidationError::new("cmd", "must not be empty when given"));
    }
    if cmd.len() > MAX_CMD_ARGS {
        return Err(ValidationError::new(
            "cmd",
            format!("at most {MAX_CMD_ARGS} arguments"),
        ));
    }
    let total: usize = cmd.iter().map(String::len).sum();
    if total > MAX_CMD_BYTES {
        return Err(ValidationError::new(
            "cmd",
            format!("at most {MAX_CMD_BYTES} bytes in all"),
        ));
    }
    if cmd.iter().any(|a| a.contains('\0')) {
        return Err(ValidationError::new(
            "cmd",
            "arguments must not contain NUL",
        ));
    }
    Ok(())
}

/// Where a VM is in its life. Legal moves are in [`VmPhase::can_move_to`] and nowhere else.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum VmPhase {
    /// Accepted, not yet placed.
    Pending,
    /// Placed on a node; the agent has not started it yet.
    Scheduled,
    /// The VMM process runs; the guest is not ready yet.
    Starting,
    /// The guest reported ready.
    Running,
    /// The guest's vCPUs are paused.
    Paused,
    /// Stop requested; shutting down.
    Stopping,
    /// Not running (stopped by request, or its command exited).
    Stopped,
    /// Could not be started, or crashed.
    Failed,
}

impl VmPhase {
    /// Whether moving from `self` to `next` is legal. Staying put is always legal.
    #[must_use]
    pub fn can_move_to(self, next: VmPhase) -> bool {
        use VmPhase::*;
        if self == next {
            return true;
        }
        matches!(
            (self, next),
            (Pending, Scheduled | Stopped | Failed)
                | (Scheduled, Starting | Running | Stopping | Stopped | Failed)
                | (Starting, Running | Stopping | Stopped | Failed)
                // A restore replaces a running or paused instance: it starts again.
                | (Running, Paused | Starting | Stopping | Stopped | Failed)
                | (Paused, Running | Starting | Stopping | Stopped | Failed)
                | (Stopping, Stopped | Failed)
                // A restart (restart policy, or the user starting it again) goes back to Pending;
                // a restore from a snapshot on its node goes back to Scheduled.
                | (Stopped | Failed, Pending | Scheduled)
                // Its node was lost: placed again elsewhere.
                | (Scheduled | Starting | Running | Paused | Stopping, Pending)
        )
    }

    /// Whether a VMM process may exist in this phase.
    #[must_use]
    pub fn is_active(self) -> bool {
        matches!(
            self,
            VmPhase::Scheduled | VmPhase::Starting | VmPhase::Running | VmPhase::Stopping
        )
    }

    /// Whether the VM has come to rest.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, VmPhase::Stopped | VmPhase::Failed)
    }
}

/// What is observed of a VM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct VmStatus {
    /// Phase.
    pub phase: VmPhase,
    /// The node it is placed on.
    #[schema(value_type = Option<String>)]
    pub node: Option<NodeId>,
    /// The accelerator its VMM uses.
    pub accel: Option<Accel>,
    /// The spec generation the agent last acted on.
    #[schema(value_type = u64)]
    pub observed_generation: Generation,
    /// Exit status of the guest command, when it has exited.
    pub exit_code: Option<i32>,
    /// Human-readable detail about the phase (why it failed, why it is pending).
    pub message: Option<String>,
    /// When the VM was accepted.
    pub created_ms: UnixMillis,
    /// When it was placed.
    pub scheduled_ms: Option<UnixMillis>,
    /// When the agent started its VMM process.
    pub launched_ms: Option<UnixMillis>,
    /// When the guest reported ready.
    pub running_ms: Option<UnixMillis>,
    /// When it stopped.
    pub stopped_ms: Option<UnixMillis>,
    /// The last restore request carried out (its generation).
    #[serde(default)]
    #[schema(value_type = Option<u64>)]
    pub restored_generation: Option<Generation>,
    /// The guest's address on its node's network, once it has one.
    #[serde(default)]
    pub ip: Option<String>,
    /// The network settings its node has in force (limits, isolation), as last reported.
    #[serde(default)]
    pub network: Option<NetworkSpec>,
    /// How many times the control plane restarted it after it failed or stopped (its restart
    /// policy, or a lost guest heartbeat). Only grows; agents compare it with the runs they
    /// carried out, and refuse to act on (and the server refuses reports from) an older run.
    #[serde(default)]
    pub restarts: u32,
    /// Restarts in a row without the VM running for a while in between: sets the backoff.
    #[serde(default)]
    pub restart_streak: u32,
    /// When the next restart is due (None: none is planned).
    #[serde(default)]
    pub next_restart_ms: Option<UnixMillis>,
    /// The last failure was a guest that stopped answering (no heartbeat): it is replaced
    /// whatever its restart policy says.
    #[serde(default)]
    pub heartbeat_lost: bool,
}

impl VmStatus {
    /// The status of a VM just accepted at `now`.
    #[must_use]
    pub fn new(now: UnixMillis) -> Self {
        Self {
            phase: VmPhase::Pending,
            node: None,
            accel: None,
            observed_generation: Generation(0),
            exit_code: None,
            message: None,
            created_ms: now,
            scheduled_ms: None,
            launched_ms: None,
            running_ms: None,
            stopped_ms: None,
            restored_generation: None,
            ip: None,
            network: None,
            restarts: 0,
            restart_streak: 0,
            next_restart_ms: None,
            heartbeat_lost: false,
        }
    }
}

/// A VM as stored: id, spec, generation and status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Vm {
    /// Id.
    #[schema(value_type = String)]
    pub id: VmId,
    /// Spec generation; bumped on each spec change.
    #[schema(value_type = u64)]
    pub generation: Generation,
    /// Desired state.
    pub spec: VmSpec,
    /// Observed state.
    pub status: VmStatus,
    /// Deletion was requested: the agent stops the VM and removes its state, then the record goes.
    #[serde(default)]
    pub deleting: bool,
}

#[cfg(test)]
mod tests;
