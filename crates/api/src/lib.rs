//! The wire contract of the FireFleet REST API: request and response bodies, shared by the
//! server (which derives the OpenAPI document from them) and the client. Types only: no HTTP
//! stack, no I/O. Requests refuse unknown fields.

use firefleet_types::{
    node::NodeFacts, Accel, Generation, Labels, NodeId, NodeInfo, Resources, RestartPolicy,
    TenantId, UnixMillis, Vm, VmId, VmPhase, VmSpec,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Largest request body the server reads (bytes). Console uploads have their own limit.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest console chunk an agent uploads at once (bytes).
pub const MAX_CONSOLE_CHUNK: usize = 256 * 1024;
/// The header agents and CLIs send their bearer token in.
pub const AUTHORIZATION: &str = "authorization";

/// `POST /v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    /// Name, unique within the tenant (`[a-z0-9-]`, at most 63).
    pub name: String,
    /// Image digest, `sha256:<64 hex>`.
    pub image: String,
    /// Resources.
    pub resources: Resources,
    /// Labels.
    #[serde(default)]
    pub labels: Labels,
    /// Command the guest runs; the VM stops when it exits.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// Restart policy.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Owner; only an admin may set it (a tenant's VMs are its own).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub tenant: Option<TenantId>,
}

/// A list of VMs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VmList {
    /// The VMs, by name.
    pub items: Vec<Vm>,
}

/// A list of nodes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    /// The nodes, by id.
    pub items: Vec<NodeInfo>,
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

/// Who a token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Its own tenant's objects.
    Tenant,
}

/// `POST /v1/tokens` (admin).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// The tenant the token acts for.
    #[schema(value_type = String)]
    pub tenant: TenantId,
}

/// A new token; the secret is shown once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// The bearer token.
    pub token: String,
    /// Its tenant.
    #[schema(value_type = String)]
    pub tenant: TenantId,
    /// Its role.
    pub role: Role,
}

/// `POST /v1/join-tokens` (admin).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJoinTokenRequest {
    /// Validity in seconds (default 3600, at most one week).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// A one-time join token for an agent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenResponse {
    /// The token.
    pub token: String,
    /// When it expires.
    pub expires_ms: UnixMillis,
}

/// `POST /v1/agent/enroll`: an agent trades a join token and a CSR for a certificate.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The one-time join token.
    pub join_token: String,
    /// The node's name.
    #[schema(value_type = String)]
    pub node: NodeId,
    /// Topology and other labels.
    #[serde(default)]
    pub labels: Labels,
    /// PEM certificate signing request.
    pub csr_pem: String,
}

/// The agent's certificate.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrollResponse {
    /// PEM client certificate for the node, signed by the cluster CA.
    pub cert_pem: String,
    /// PEM of the cluster CA.
    pub ca_pem: String,
}

/// `POST /v1/agent/heartbeat` (mutual TLS).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// The node's facts now.
    pub facts: NodeFacts,
    /// The node's labels as the agent was started with (replacing those given at enrollment).
    #[serde(default)]
    pub labels: Option<Labels>,
}

/// One VM the agent should make true on its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmIntent {
    /// Id.
    #[schema(value_type = String)]
    pub id: VmId,
    /// Spec generation.
    #[schema(value_type = u64)]
    pub generation: Generation,
    /// Spec.
    pub spec: VmSpec,
    /// The VM is being deleted: stop it and remove its state.
    pub deleting: bool,
    /// The phase the control plane last recorded.
    pub phase: VmPhase,
}

/// `GET /v1/agent/intents`: every VM placed on the calling node.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IntentsResponse {
    /// The store revision these intents were read at; pass it as `after` to wait for changes.
    pub revision: u64,
    /// The VMs.
    pub vms: Vec<VmIntent>,
}

/// `PUT /v1/agent/vms/{id}/status`: what the agent observes of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmStatusReport {
    /// The spec generation this report is about.
    #[schema(value_type = u64)]
    pub generation: Generation,
    /// Observed phase.
    pub phase: VmPhase,
    /// Accelerator used.
    pub accel: Option<Accel>,
    /// Guest command exit status.
    pub exit_code: Option<i32>,
    /// Detail.
    pub message: Option<String>,
    /// When the VMM started.
    pub launched_ms: Option<UnixMillis>,
    /// When the guest became ready.
    pub running_ms: Option<UnixMillis>,
    /// When it stopped.
    pub stopped_ms: Option<UnixMillis>,
    /// The agent removed the VM's state (answering a delete).
    #[serde(default)]
    pub removed: bool,
}

/// Where the server's console copy of a VM ends (answer to an upload).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConsoleOffset {
    /// Bytes of console the server holds for the VM (the next upload's offset).
    pub next_offset: u64,
}

/// Every error body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// An error: a stable code, a message for people, and the field at fault when there is one.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`invalid_request`, `not_found`, `unauthorized`, ...).
    pub code: String,
    /// What went wrong.
    pub message: String,
    /// The request field at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// "ok".
    pub status: String,
    /// Store revision.
    pub revision: u64,
}

/// Resources in a VM-run request from the CLI; re-exported for convenience.
pub type VmResources = Resources;
