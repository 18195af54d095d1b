//! The agent-facing API (`/v1/agent/...`, mutual TLS after enrollment): enrollment and
//! renewal, heartbeats, the intents an agent makes true, and what it reports back (VM status,
//! snapshots, migrations, console, invocations, telemetry). The public API does not use these.

use firefleet_types::{
    node::NodeFacts, Accel, Generation, Labels, Migration, MigrationPhase, NetworkSpec, NodeId,
    Snapshot, SnapshotPhase, UnixMillis, VmId, VmPhase, VmSpec,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{ExecRequestRecord, VmStats};

/// Largest console chunk an agent uploads at once (bytes).
pub const MAX_CONSOLE_CHUNK: usize = 256 * 1024;

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

/// `POST /v1/agent/renew` (mutual TLS): an agent trades a new CSR for a new certificate, which
/// becomes its node's current one.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// PEM certificate signing request (a fresh key).
    pub csr_pem: String,
}

/// The agent's new certificate.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RenewResponse {
    /// PEM client certificate for the node, signed by the cluster CA.
    pub cert_pem: String,
    /// When it expires.
    pub not_after_ms: UnixMillis,
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
    /// The last restore request the agent carried out.
    #[serde(default)]
    #[schema(value_type = Option<u64>)]
    pub restored_generation: Option<Generation>,
    /// How many times the control plane restarted the VM (`VmStatus::restarts`). When it is
    /// more than the runs this agent carried out and the VM does not run here, the agent launches
    /// it afresh.
    #[serde(default)]
    pub restarts: u32,
}

/// `GET /v1/agent/intents`: every VM placed on the calling node, with the snapshots to take
/// and the commands to run in them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IntentsResponse {
    /// The store revision these intents were read at; pass it as `after` to wait for changes.
    pub revision: u64,
    /// The VMs.
    pub vms: Vec<VmIntent>,
    /// Snapshots requested and not yet taken.
    #[serde(default)]
    pub snapshots: Vec<Snapshot>,
    /// Commands to run in guests.
    #[serde(default)]
    pub execs: Vec<ExecRequestRecord>,
    /// Migrations under way from or to this node.
    #[serde(default)]
    pub migrations: Vec<MigrationIntent>,
}

/// A migration an agent takes part in, with what the destination needs to restore the VM.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MigrationIntent {
    /// The record.
    pub migration: Migration,
    /// The VM's spec.
    pub spec: VmSpec,
}

/// `POST /v1/agent/migrations/{vm}/report`: what an agent did in a migration.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrationReport {
    /// The step reached: `restoring` is implied by an upload; the destination reports `done`
    /// once the VM runs; either side reports `failed`.
    pub phase: MigrationPhase,
    /// When the source paused the VM, ms since the epoch.
    #[serde(default)]
    pub paused_ms: Option<u64>,
    /// When the VM ran on the destination.
    #[serde(default)]
    pub resumed_ms: Option<u64>,
    /// Why it failed.
    #[serde(default)]
    pub message: Option<String>,
    /// Source, live: the kernel command line the VM was booted with.
    #[serde(default)]
    pub kernel_cmdline: Option<String>,
    /// Source, live: the guest's stop time as the VMM measured it, ms.
    #[serde(default)]
    pub vmm_downtime_ms: Option<u64>,
}

/// `PUT /v1/agent/vms/{vm}/snapshots/{name}`: the agent's outcome.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotReport {
    /// Ready or Failed.
    pub phase: SnapshotPhase,
    /// Bytes on disk.
    pub bytes: Option<u64>,
    /// How long the VM was paused.
    pub pause_ms: Option<u64>,
    /// Why it failed.
    pub message: Option<String>,
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
    /// The last restore request carried out.
    #[serde(default)]
    #[schema(value_type = Option<u64>)]
    pub restored_generation: Option<Generation>,
    /// The guest's address on the node network, when it has one.
    #[serde(default)]
    pub ip: Option<String>,
    /// The network settings in force on the node for the running VM (limits, isolation).
    #[serde(default)]
    pub network: Option<NetworkSpec>,
    /// The run this report is about (the intent's `restarts` it carried out); the server refuses
    /// a report about a run older than its last restart.
    #[serde(default)]
    pub restarts: u32,
    /// The VM failed because its guest stopped answering (no heartbeat): the agent killed it.
    #[serde(default)]
    pub heartbeat_lost: bool,
}

/// Where the server's console copy of a VM ends (answer to an upload).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConsoleOffset {
    /// Bytes of console the server holds for the VM (the next upload's offset).
    pub next_offset: u64,
}

/// An invocation handed to a node's agent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentInvocation {
    /// Invocation id (echoed in the result).
    pub id: String,
    /// The instance.
    #[schema(value_type = String)]
    pub vm: VmId,
    /// How to reach the handler.
    pub handler: firefleet_types::FunctionHandler,
    /// Request body, base64.
    pub body_b64: String,
    /// The handler's time limit, ms.
    pub timeout_ms: u64,
}

/// `GET /v1/agent/invocations`: the invocations queued for this node.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentInvocations {
    /// Invocations, oldest first.
    pub items: Vec<AgentInvocation>,
}

/// What the agent reports for an invocation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentInvocationResult {
    /// Status: 200 success, 500 handler failure, 502 the guest could not be reached, 504 timeout.
    pub status: u16,
    /// Response body, base64.
    pub body_b64: String,
    /// Standard error of a command handler, base64.
    #[serde(default)]
    pub stderr_b64: String,
    /// What went wrong.
    #[serde(default)]
    pub error: Option<String>,
    /// Time in the handler, ms.
    pub duration_ms: u64,
}

/// Largest telemetry batch body an agent posts (bytes).
pub const MAX_TELEMETRY_BYTES: usize = 4 * 1024 * 1024;

/// One VM's telemetry at one instant: the statistics (`GET /v1/vms/{vm}/stats`) and what the
/// guard looks at in the guest (processes, listeners, connections).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TelemetrySample {
    /// The VM.
    #[schema(value_type = String)]
    pub vm: VmId,
    /// Host- and guest-side statistics.
    pub stats: VmStats,
    /// The guest's processes, listeners, connections and counters, when it answered.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub guest: Option<firefleet_guard::GuestSample>,
}

/// `POST /v1/agent/telemetry`: samples an agent collected since its last batch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TelemetryBatch {
    /// Samples, oldest first.
    pub samples: Vec<TelemetrySample>,
    /// Samples the agent dropped since its last batch (its buffer was full).
    #[serde(default)]
    pub dropped: u64,
}
