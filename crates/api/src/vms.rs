//! VMs (`/v1/vms`): the create request, list pages and console chunks.

use firefleet_types::{
    DiskSpec, Labels, NetworkSpec, PlacementSpec, Resources, RestartPolicy, TenantId, Vm, VmRuntime,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use firefleet_types::schema::{CommandRequest, LabelRequest, ResourceRequest};

/// `POST /v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    /// Name, unique within the tenant (`[a-z0-9-]`, at most 63).
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    /// Image digest, `sha256:<64 hex>`.
    #[schema(pattern = "^sha256:[0-9a-f]{64}$")]
    pub image: String,
    /// Resources.
    #[schema(value_type = ResourceRequest)]
    pub resources: Resources,
    /// Labels.
    #[serde(default)]
    #[schema(value_type = LabelRequest)]
    pub labels: Labels,
    /// Command the guest runs; the VM stops when it exits (1..=64 arguments, at most 1024
    /// bytes in all, no NUL).
    #[serde(default)]
    #[schema(value_type = Option<CommandRequest>)]
    pub cmd: Option<Vec<String>>,
    /// Restart policy.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Owner; only an admin may set it (a tenant's VMs are its own).
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", min_length = 1, max_length = 63)]
    pub tenant: Option<TenantId>,
    /// Network interface and bandwidth limits (default: a NIC, no limits).
    #[serde(default)]
    pub network: NetworkSpec,
    /// The VMM: `qemu` (default) or `firecracker`.
    #[serde(default)]
    pub runtime: VmRuntime,
    /// Block devices, in attachment order (at most 8).
    #[serde(default)]
    #[schema(max_items = 8)]
    pub disks: Vec<DiskSpec>,
    /// Placement constraints and preferences.
    #[serde(default)]
    pub placement: PlacementSpec,
}

/// A page of VMs (`GET /v1/vms?limit=&after=`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VmList {
    /// The VMs, by tenant and name.
    pub items: Vec<Vm>,
    /// The cursor of the next page (`after=`); absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A chunk of a VM's console.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConsoleChunk {
    /// Console text from `offset` (lossy UTF-8).
    pub data: String,
    /// Offset of `data` in the console stream.
    pub offset: u64,
    /// Offset to ask for next.
    pub next_offset: u64,
    /// Whether the VM has stopped (no more output will come).
    pub finished: bool,
}

/// Resources in a VM-run request from the CLI; re-exported for convenience.
pub type VmResources = Resources;
