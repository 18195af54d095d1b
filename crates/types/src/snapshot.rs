//! Snapshots of VMs: requested through the API, taken by the agent of the VM's node.

use crate::{
    ids::{NodeId, VmId},
    validate::{check_name, ValidationError},
    UnixMillis,
};

/// Where a snapshot is in its life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotPhase {
    /// Requested; the agent has not finished taking it.
    Pending,
    /// Complete on the node's disk.
    Ready,
    /// Could not be taken.
    Failed,
}

/// A snapshot of a VM (memory, device state, disks) kept on the VM's node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Snapshot {
    /// The VM.
    #[schema(value_type = String)]
    pub vm: VmId,
    /// Name, unique per VM.
    pub name: String,
    /// The node holding it.
    #[schema(value_type = String)]
    pub node: NodeId,
    /// Phase.
    pub phase: SnapshotPhase,
    /// When it was requested.
    pub requested_ms: UnixMillis,
    /// When it became ready.
    pub ready_ms: Option<UnixMillis>,
    /// Bytes on disk.
    pub bytes: Option<u64>,
    /// How long the VM was paused to take it.
    pub pause_ms: Option<u64>,
    /// Why it failed.
    pub message: Option<String>,
    /// A copy is kept by the control plane: the VM can be restored from it on another node
    /// (after its node was lost).
    #[serde(default)]
    pub replicated: bool,
}

impl Snapshot {
    /// A snapshot just requested of `vm` on `node`, for its agent to take.
    #[must_use]
    pub fn requested(vm: VmId, name: String, node: NodeId, now: UnixMillis) -> Self {
        Snapshot {
            vm,
            name,
            node,
            phase: SnapshotPhase::Pending,
            requested_ms: now,
            ready_ms: None,
            bytes: None,
            pause_ms: None,
            message: None,
            replicated: false,
        }
    }
}

/// Checks a snapshot name (same rules as other names).
pub fn validate_snapshot_name(name: &str) -> Result<(), ValidationError> {
    check_name("name", name)
}
