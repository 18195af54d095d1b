//! The wire contract of the FireFleet REST API: request and response bodies, shared by the
//! server (which derives the OpenAPI document from them) and the client. Types only: no HTTP
//! stack, no I/O. Requests refuse unknown fields.

use firefleet_types::{
    node::NodeFacts, Accel, DiskSpec, Generation, Labels, Migration, MigrationPhase, NetworkSpec,
    NodeId, NodeInfo, PlacementSpec, Resources, RestartPolicy, Snapshot, SnapshotPhase, TenantId,
    UnixMillis, Vm, VmId, VmPhase, VmRuntime, VmSpec,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use firefleet_types::schema::{
    CommandRequest, LabelRequest, NameRequest, ResourceRequest, DIGEST_PATTERN, NAME_PATTERN,
};

/// Largest request body the server reads (bytes). Console uploads have their own limit.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest console chunk an agent uploads at once (bytes).
pub const MAX_CONSOLE_CHUNK: usize = 256 * 1024;
/// What a snapshot archive may hold besides guest memory and disk copies: device state,
/// manifest, tar headers (QEMU's state stream carries memory with a few MiB of framing).
pub const SNAPSHOT_OVERHEAD_BYTES: u64 = 256 << 20;
/// The allowance for a writable disk made from an image in a snapshot archive. The control
/// plane does not know image sizes (they live in each node's store); 64 GiB is far above the
/// images `image build-disk` makes (a directory's contents plus slack) and still bounds what a
/// node can make the server store.
pub const IMAGE_DISK_SNAPSHOT_BYTES: u64 = 64 << 30;

/// The largest snapshot archive (a migration's, or a snapshot's copy) the server accepts for a
/// VM of `memory_mib` with `disks` (its spec's): its memory, each writable disk (a blank disk's size, an image disk's
/// [`IMAGE_DISK_SNAPSHOT_BYTES`]) plus 1/256 of it for qcow2 metadata, and
/// [`SNAPSHOT_OVERHEAD_BYTES`]. Sized per VM rather than fixed: a fixed cap small enough to
/// matter would refuse large VMs (memory goes up to 1 TiB). Read-only disks are referenced, not
/// copied. Pure.
pub fn max_snapshot_bytes(memory_mib: u64, disks: &[DiskSpec]) -> u64 {
    const MIB: u64 = 1 << 20;
    let disks = disks
        .iter()
        .filter(|d| !d.read_only)
        .map(|d| match (&d.image, d.size_mib) {
            (None, Some(mib)) => mib.saturating_mul(MIB),
            _ => IMAGE_DISK_SNAPSHOT_BYTES,
        })
        .fold(0u64, |sum, bytes| {
            sum.saturating_add(bytes).saturating_add(bytes / 256)
        });
    memory_mib
        .saturating_mul(MIB)
        .saturating_add(disks)
        .saturating_add(SNAPSHOT_OVERHEAD_BYTES)
}

/// The header agents and CLIs send their bearer token in.
pub const AUTHORIZATION: &str = "authorization";

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

/// Items a list page holds unless `limit=` says otherwise.
pub const DEFAULT_PAGE_LIMIT: usize = 500;
/// The largest `limit=` a list accepts.
pub const MAX_PAGE_LIMIT: usize = 1000;

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
    /// Everything. Admin tokens act for the reserved tenant [`ADMIN_TENANT`].
    Admin,
    /// Its own tenant's objects.
    Tenant,
    /// Reads `/metrics` and nothing else (a scraper's token).
    Metrics,
}

/// The tenant name of admin tokens; no tenant or metrics token can be made for it.
pub const ADMIN_TENANT: &str = "admin";

/// Longest token validity a `ttl_secs` may ask for (10 years); none: no expiry.
pub const MAX_TOKEN_TTL_SECS: u64 = 10 * 365 * 24 * 3600;

/// `POST /v1/tokens` (admin).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// The tenant the token acts for (`admin` only with role `admin`).
    #[schema(value_type = String, min_length = 1, max_length = 63, pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")]
    pub tenant: TenantId,
    /// Its role (default `tenant`).
    #[serde(default)]
    pub role: Option<Role>,
    /// Seconds until it expires (default: never; at most ten years).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 315360000)]
    pub ttl_secs: Option<u64>,
    /// A note saying what it is for (shown by `token ls`).
    #[serde(default)]
    #[schema(max_length = 128)]
    pub note: Option<String>,
}

/// A new token; the secret is shown once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// The bearer token.
    pub token: String,
    /// Its id (what `token ls` shows and `token revoke` takes; not a secret).
    pub id: String,
    /// Its tenant.
    #[schema(value_type = String)]
    pub tenant: TenantId,
    /// Its role.
    pub role: Role,
    /// When it expires (none: never).
    #[serde(default)]
    pub expires_ms: Option<UnixMillis>,
}

/// A token as `GET /v1/tokens` shows it (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    /// Its id.
    pub id: String,
    /// Its tenant.
    #[schema(value_type = String)]
    pub tenant: TenantId,
    /// Its role.
    pub role: Role,
    /// When it was made.
    pub created_ms: UnixMillis,
    /// When it expires (none: never).
    #[serde(default)]
    pub expires_ms: Option<UnixMillis>,
    /// Whether it has expired (it is refused).
    pub expired: bool,
    /// What it is for.
    #[serde(default)]
    pub note: Option<String>,
}

/// `GET /v1/tokens` (admin).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    /// The tokens, by id.
    pub items: Vec<TokenInfo>,
}

/// `POST /v1/join-tokens` (admin).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJoinTokenRequest {
    /// Validity in seconds (default 3600, at most one week).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// Bind the token to this node name: it can enrol only that name, and it is the only kind
    /// of token that may re-enrol a node that exists (an agent that lost its disk). Without it
    /// the token enrols any name that is not taken.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub node: Option<NodeId>,
    /// The cordon the enrolled node gets: `true` cordoned, `false` uncordoned. Unset: a new
    /// node is uncordoned, a re-enrolled one keeps its cordon.
    #[serde(default)]
    pub cordon: Option<bool>,
}

/// A one-time join token for an agent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenResponse {
    /// The token.
    pub token: String,
    /// When it expires.
    pub expires_ms: UnixMillis,
    /// The node it is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub node: Option<NodeId>,
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

/// `POST /v1/vms/{vm}/migrate`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// The destination node.
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub to: String,
    /// Move it by snapshot even where a live migration is possible.
    #[serde(default)]
    pub by_snapshot: bool,
}

/// What `POST /v1/nodes/{node}/drain` started.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DrainResponse {
    /// The node (now cordoned).
    pub node: String,
    /// A migration per running or paused VM that had somewhere to go.
    pub migrations: Vec<Migration>,
    /// VMs that could not be moved, with why.
    pub stuck: Vec<StuckVm>,
}

/// `GET /v1/plan` and `POST /v1/plan/apply` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PlanQuery {
    /// Consider every VM for cost, latency and availability (not only triggered ones).
    #[serde(default)]
    pub rebalance: bool,
    /// Utilisation above which a node is overloaded (0 < x <= 1; default 0.9).
    #[serde(default)]
    #[param(exclusive_minimum = 0.0, maximum = 1.0)]
    pub imbalance: Option<f64>,
    /// Battery charge, percent, under which a node's VMs should leave (default 30).
    #[serde(default)]
    #[param(minimum = 0, maximum = 100)]
    pub battery_below: Option<u8>,
}

/// A migration the planner proposes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlannedMove {
    /// The VM's name.
    pub vm: String,
    /// The VM's id.
    pub vm_id: String,
    /// Where it runs.
    pub from: String,
    /// Where it would go.
    pub to: String,
    /// Why it was considered (`drain`, `low_battery`, `guard`, `imbalance`, `rebalance`).
    pub trigger: String,
    /// Made even without a positive net benefit (drains).
    pub forced: bool,
    /// Net benefit (objective gain + balance − migration cost).
    pub net: f64,
    /// Expected downtime, seconds.
    pub downtime_s: f64,
    /// Saving per hour at current prices.
    pub saves_per_hour: f64,
    /// Why, in words.
    pub reason: String,
}

/// A VM the planner leaves where it is this round, and why.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlanNote {
    /// The VM's name.
    pub vm: String,
    /// Its node.
    pub node: String,
    /// Why it is not moved now.
    pub why: String,
}

/// The planner's proposal (and, for `apply`, the migrations started).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlanResponse {
    /// Moves, in the order they would run.
    pub moves: Vec<PlannedMove>,
    /// Moves wanted but over the concurrency budget, VMs that fit nowhere, and triggered VMs
    /// with no move worth making.
    pub notes: Vec<PlanNote>,
    /// Migrations started (`apply` only).
    #[serde(default)]
    pub started: Vec<Migration>,
}

/// A VM a drain could not move.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StuckVm {
    /// The VM.
    pub vm: String,
    /// Why.
    pub reason: String,
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

/// `POST /v1/vms/{vm}/snapshots`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    /// Name, unique per VM.
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
}

/// A list of snapshots.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotList {
    /// The snapshots, by name.
    pub items: Vec<Snapshot>,
}

/// `POST /v1/vms/{vm}/restore`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreVmRequest {
    /// The snapshot to restore from (it must be ready).
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub snapshot: String,
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

/// Most arguments of an exec.
pub const MAX_EXEC_ARGS: usize = 64;
/// Most bytes of an exec's arguments and stdin together.
pub const MAX_EXEC_BYTES: usize = 16 * 1024;
/// Longest exec timeout (ms).
pub const MAX_EXEC_TIMEOUT_MS: u64 = 300_000;

/// `POST /v1/vms/{vm}/exec`: run a command in the guest and wait for it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// argv (no shell; use `["sh","-c","..."]` for one).
    pub argv: Vec<String>,
    /// Kill it after this long (ms; default 30000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Standard input, base64.
    #[serde(default)]
    pub stdin_b64: Option<String>,
}

/// An exec as stored for the agent to pick up.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecRequestRecord {
    /// Exec id.
    pub id: String,
    /// The VM.
    #[schema(value_type = String)]
    pub vm: VmId,
    /// The request.
    pub request: ExecRequest,
    /// Its result, once the agent posted it.
    #[serde(default)]
    pub result: Option<ExecResult>,
}

/// What an exec did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecResult {
    /// Exit status (128+N when killed by signal N; None: killed by the timeout, or not run).
    pub exit_code: Option<i32>,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
    /// Output was cut at the channel's limit.
    pub truncated: bool,
    /// Run time in ms.
    pub duration_ms: u64,
    /// Why it could not run (no guest channel, ...).
    #[serde(default)]
    pub error: Option<String>,
}

/// Host-side statistics of a VM's VMM process.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct HostVmStats {
    /// CPU time of the VMM process (all threads), ms.
    pub cpu_time_ms: u64,
    /// Resident memory of the VMM process, bytes.
    pub rss_bytes: u64,
    /// Threads of the VMM process.
    pub threads: u64,
    /// TAP counters, when the VM has a NIC.
    pub net: Option<NetStats>,
    /// Block I/O counters per disk, as the VMM counts them.
    #[serde(default)]
    pub disks: Vec<DiskStats>,
    /// The VMM's own counters where it keeps them (Firecracker's metrics, `group.name`).
    #[serde(default)]
    pub vmm_metrics: std::collections::BTreeMap<String, u64>,
}

/// Block I/O counters of one disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct DiskStats {
    /// The device's name in the VMM.
    pub device: String,
    /// Bytes the guest read.
    pub read_bytes: u64,
    /// Bytes the guest wrote.
    pub write_bytes: u64,
    /// Read requests.
    pub read_ops: u64,
    /// Write requests.
    pub write_ops: u64,
}

/// Network counters (host view of the VM's TAP: rx = from the guest).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct NetStats {
    /// Bytes received from the guest.
    pub rx_bytes: u64,
    /// Bytes sent to the guest.
    pub tx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
}

/// Guest-side statistics, from the guest channel.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct GuestVmStats {
    /// One-minute load average.
    pub load1: f64,
    /// Guest memory, KiB.
    pub mem_total_kib: u64,
    /// Guest memory available, KiB.
    pub mem_available_kib: u64,
    /// Processes in the guest.
    pub processes: u64,
    /// Listening sockets in the guest.
    pub listeners: u64,
    /// Guest uptime, ms.
    pub uptime_ms: u64,
}

/// `GET /v1/vms/{vm}/stats` (and what agents post).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct VmStats {
    /// When the agent collected them.
    pub collected_ms: UnixMillis,
    /// Host side.
    pub host: HostVmStats,
    /// Guest side, when the guest channel answered.
    pub guest: Option<GuestVmStats>,
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
    /// Why admission refused the object: one message per violated rule, prefixed with its
    /// policy (`admission/resource_limits: ...`); code `policy_denied`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
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

// ---- Functions ----------------------------------------------------------------------------

/// The largest invocation request or response body, in bytes (it travels base64-encoded on
/// one line of the guest channel, whose lines are at most 64 KiB).
pub const MAX_INVOKE_BYTES: usize = 32 * 1024;

/// `POST /v1/functions`: deploy a function (or update one: same name, new spec).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployFunctionRequest {
    /// Name, unique per tenant.
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    /// Owner (admins only; default: the caller's tenant).
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", min_length = 1, max_length = 63)]
    pub tenant: Option<firefleet_types::TenantId>,
    /// Image digest.
    #[schema(pattern = "^sha256:[0-9a-f]{64}$")]
    pub image: String,
    /// Handler command (stdin -> stdout), or the workload serving HTTP on `http_port`
    /// (1..=64 arguments, at most 1024 bytes in all, no NUL).
    #[schema(value_type = CommandRequest)]
    pub cmd: Vec<String>,
    /// HTTP mode: the port the workload listens on in the guest.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 65535)]
    pub http_port: Option<u16>,
    /// HTTP mode: the path requests are POSTed to (default `/`; only with `http_port`).
    #[serde(default)]
    #[schema(pattern = "^/[!-~]*$", max_length = 256)]
    pub http_path: Option<String>,
    /// Resources per instance.
    #[schema(value_type = ResourceRequest)]
    pub resources: firefleet_types::Resources,
    /// Invocations in flight per instance at most (default 1).
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 1000)]
    pub concurrency: u32,
    /// Warm instances at least (default 0: scale to zero; at most `max`).
    #[serde(default)]
    #[schema(maximum = 1000)]
    pub min: u32,
    /// Instances at most (default 10).
    #[serde(default = "ten")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max: u32,
    /// Regions or edge sites for its instances (empty: anywhere).
    #[serde(default)]
    #[schema(value_type = Vec<NameRequest>)]
    pub regions: Vec<String>,
    /// Invocation timeout, ms (default 30000).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 900000)]
    pub timeout_ms: Option<u64>,
    /// Keep idle instances at least this long (seconds); none: the autoscaler decides.
    #[serde(default)]
    #[schema(maximum = 86400)]
    pub keep_alive_secs: Option<u64>,
    /// VMM of its instances.
    #[serde(default)]
    pub runtime: firefleet_types::VmRuntime,
    /// Invocable by end users without a token on `/fn/{tenant}/{name}`.
    #[serde(default)]
    pub public: bool,
}

fn one() -> u32 {
    1
}

fn ten() -> u32 {
    10
}

/// One instance of a function, as the gateway sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FunctionInstanceInfo {
    /// The instance's VM.
    #[schema(value_type = String)]
    pub vm: VmId,
    /// VM name.
    pub name: String,
    /// Its phase.
    pub phase: firefleet_types::VmPhase,
    /// Node.
    #[schema(value_type = Option<String>)]
    pub node: Option<firefleet_types::NodeId>,
    /// Region of its node.
    pub region: Option<String>,
    /// Invocations in flight on it now.
    pub in_flight: u32,
    /// Idle since (ms since the epoch), when idle.
    pub idle_since_ms: Option<u64>,
    /// It is stopped when idle past this (ms since the epoch), per the autoscaler.
    pub keep_alive_until_ms: Option<u64>,
}

/// Per-function counters kept by the gateway since the server started.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct FunctionCounters {
    /// Invocations answered (any outcome).
    pub invocations: u64,
    /// Invocations that waited for an instance to start.
    pub cold_starts: u64,
    /// Invocations that failed (handler error, timeout, no instance in time).
    pub errors: u64,
    /// In flight now.
    pub in_flight: u64,
    /// Waiting for an instance now.
    pub waiting: u64,
    /// Instances started.
    pub instance_starts: u64,
}

/// A function with what the gateway knows of it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FunctionView {
    /// The function.
    #[serde(flatten)]
    pub function: firefleet_types::Function,
    /// Its instances (not the template).
    pub instances: Vec<FunctionInstanceInfo>,
    /// Counters.
    pub counters: FunctionCounters,
    /// The autoscaler's latest decision: warm instances wanted per region (`""`: any).
    pub wanted: std::collections::BTreeMap<String, u32>,
    /// Which model or layer made it.
    pub reason: Option<String>,
}

/// `GET /v1/functions`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FunctionList {
    /// Functions, by tenant and name.
    pub items: Vec<FunctionView>,
    /// The cursor of the next page (`after=`); absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The outcome of an invocation through the API.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InvokeResponse {
    /// HTTP-like status of the handler: 200 success; 500 the handler failed.
    pub status: u16,
    /// Response body (lossy UTF-8).
    pub body: String,
    /// Response body, base64 (exact bytes).
    pub body_b64: String,
    /// The handler's standard error (command mode), lossy UTF-8.
    #[serde(default)]
    pub stderr: String,
    /// What went wrong, when it did.
    #[serde(default)]
    pub error: Option<String>,
    /// It waited for an instance to start from the template.
    pub cold_start: bool,
    /// The instance that served it.
    #[schema(value_type = String)]
    pub instance: VmId,
    /// Its node.
    #[schema(value_type = String)]
    pub node: firefleet_types::NodeId,
    /// Time in the gateway, request to response, ms.
    pub latency_ms: u64,
    /// Time in the handler, ms.
    pub duration_ms: u64,
}

/// One instance's console, for `fn logs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FunctionLog {
    /// The instance's VM.
    #[schema(value_type = String)]
    pub vm: VmId,
    /// VM name.
    pub name: String,
    /// Console text.
    pub data: String,
}

/// `GET /v1/functions/{name}/logs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FunctionLogs {
    /// Consoles of the template and current instances.
    pub items: Vec<FunctionLog>,
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

/// What happened to one action of a threat's playbook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionState {
    /// Not started (an earlier action is still running).
    Pending,
    /// Asked for; waiting for the agent to carry it out.
    Started,
    /// Carried out.
    Done,
    /// Could not be carried out (see the message).
    Failed,
    /// Not needed (already in force, or the VM is gone).
    Skipped,
}

impl ActionState {
    /// Whether nothing more will happen to the action.
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Skipped)
    }
}

/// One action of a threat's playbook and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ThreatAction {
    /// The action.
    #[schema(value_type = String)]
    pub action: firefleet_guard::Action,
    /// Where it stands.
    pub state: ActionState,
    /// When it was started.
    #[serde(default)]
    pub started_ms: Option<UnixMillis>,
    /// When it was done, failed or skipped.
    #[serde(default)]
    pub finished_ms: Option<UnixMillis>,
    /// Detail: what it changed, or why it failed.
    #[serde(default)]
    pub message: Option<String>,
}

/// Who acknowledged a threat, when, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ThreatAck {
    /// The token's tenant.
    pub by: String,
    /// When.
    pub at_ms: UnixMillis,
    /// Note.
    #[serde(default)]
    pub note: Option<String>,
}

/// A finding of the guard about one VM, with the playbook run for it (`GET /v1/threats`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Threat {
    /// `<finding id>-<first_ms>`: one episode of one condition on one VM.
    pub id: String,
    /// The VM's tenant.
    pub tenant: String,
    /// The VM.
    #[schema(value_type = String)]
    pub vm: VmId,
    /// The VM's name.
    pub vm_name: String,
    /// The node it ran on.
    #[serde(default)]
    pub node: Option<String>,
    /// The VM's image.
    #[serde(default)]
    pub image: String,
    /// The finding (rule, severity, evidence, first/last sample time, count).
    #[schema(value_type = Object)]
    pub finding: firefleet_guard::Finding,
    /// When the server recorded it (the time to detect ends here).
    pub detected_ms: UnixMillis,
    /// The playbook's actions, in order.
    pub actions: Vec<ThreatAction>,
    /// When the last containment action finished (the time to contain ends here).
    #[serde(default)]
    pub contained_ms: Option<UnixMillis>,
    /// The forensic snapshot's name (under the VM), once taken.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// The fresh VM that replaced this one.
    #[serde(default)]
    pub replacement: Option<String>,
    /// Acknowledged by someone.
    #[serde(default)]
    pub ack: Option<ThreatAck>,
}

/// `POST /v1/threats/{id}/ack`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckThreatRequest {
    /// Why (kept with the threat).
    #[serde(default)]
    pub note: Option<String>,
}

/// An image the guard quarantined: no new VM may use it (`GET /v1/quarantine/images`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QuarantinedImage {
    /// The image digest.
    pub image: String,
    /// The threat whose playbook quarantined it.
    pub threat: String,
    /// When.
    pub at_ms: UnixMillis,
}

/// `GET /v1/audit`: audit log entries in order (see `firefleet_audit::Entry`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    /// The entries, by seq.
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<firefleet_audit::Entry>,
}

/// The first bad entry of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FirstBad {
    /// The seq that position should hold.
    pub seq: u64,
    /// Its position in the log, from 0.
    pub index: u64,
    /// What is wrong (`kind`: `hash_mismatch`, `bad_signature`, `deleted`, `reordered`,
    /// `inserted`, `truncated`, `head_mismatch`, `unreadable`, with details).
    #[schema(value_type = Object)]
    pub reason: firefleet_audit::Reason,
    /// The reason in words.
    pub message: String,
}

/// `GET /v1/audit/verify`: the stored chain checked with the control plane's public key.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditVerifyResponse {
    /// No entry is bad and the chain reaches the recorded head.
    pub ok: bool,
    /// How many entries are stored.
    pub entries: u64,
    /// The id of the key they were checked with.
    pub key_id: String,
    /// The first bad entry, if any.
    #[serde(default)]
    pub first_bad: Option<FirstBad>,
}

/// The header carrying admission warnings (policies in `warn` mode) on a create's response: one
/// header per warning, `299 - "<policy>: <message>"` (RFC 7234's miscellaneous persistent
/// warning, as Kubernetes does).
pub const WARNING_HEADER: &str = "warning";

/// A policy as the control plane keeps it (`GET /v1/policies`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PolicyRecord {
    /// Its name (`admission/resource_limits`, or any name a user applied it under).
    pub name: String,
    /// `admission` or `host`.
    pub kind: String,
    /// Its Rego package (`firefleet.admission.resource_limits`).
    pub package: String,
    /// Enforcement: `deny`, `warn` or `audit`.
    pub mode: String,
    /// This policy's version: 1 when first applied, one more on each apply.
    pub version: u64,
    /// The policy set's version this apply made.
    pub set_version: u64,
    /// The Rego source.
    pub source: String,
    /// From the built-in bundle (`policies/`), installed by the server.
    pub builtin: bool,
    /// Its Rego tests (`test_` rules).
    #[serde(default)]
    pub tests: Vec<String>,
    /// When it was applied.
    pub applied_ms: UnixMillis,
}

/// `POST /v1/policies`: adds or replaces a policy (admin).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyPolicyRequest {
    /// The name (replaces the policy of that name; a built-in's name replaces the built-in).
    pub name: String,
    /// The Rego source.
    pub source: String,
    /// `deny`, `warn` or `audit`; none: the policy's `enforcement` rule, else deny.
    #[serde(default)]
    pub mode: Option<String>,
}

/// `GET /v1/policies`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PolicyList {
    /// The policy set's version: one more on every apply or removal.
    pub version: u64,
    /// The policies, by name.
    pub policies: Vec<PolicyRecord>,
}

/// A tenant's attributes the policies see as `input.tenant` (`PUT /v1/tenants/{id}`, admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantRecord {
    /// The tenant.
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub id: String,
    /// Its class (`standard` when never set; e.g. `restricted`, `gpu`).
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub class: String,
    /// Data residency: the regions its VMs' data must stay in (empty: anywhere).
    #[serde(default)]
    #[schema(value_type = Vec<firefleet_types::schema::NameRequest>)]
    pub regions: Vec<String>,
    /// What it may hold; absent: the server's default quota (`admin` is never limited).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "quota_object"
    )]
    pub quota: Option<TenantQuota>,
}

/// A tenant's quota: each limit absent is unlimited. VMs, vCPUs and memory count the tenant's
/// own VMs (not its functions' template and instances, which each function's `max` bounds);
/// snapshots count those of its own VMs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantQuota {
    /// VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vms: Option<u64>,
    /// vCPUs of its VMs, together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u64>,
    /// Memory of its VMs together, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Functions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functions: Option<u64>,
    /// Snapshots of its VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<u64>,
}

/// A quota as a JSON object (or null): serde would also take a struct from an array.
fn quota_object<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<TenantQuota>, D::Error> {
    use serde::de::Error as _;
    Option::<serde_json::Map<String, serde_json::Value>>::deserialize(d)?
        .map(|m| TenantQuota::deserialize(serde_json::Value::Object(m)).map_err(D::Error::custom))
        .transpose()
}

impl TenantQuota {
    /// The largest limit accepted (what the document's 64-bit integers can hold).
    pub const MAX: u64 = i64::MAX as u64;

    /// Refuses a limit above [`TenantQuota::MAX`], naming it.
    pub fn validate(&self) -> Result<(), firefleet_types::ValidationError> {
        for (field, v) in [
            ("quota.vms", self.vms),
            ("quota.vcpus", self.vcpus),
            ("quota.memory_mib", self.memory_mib),
            ("quota.functions", self.functions),
            ("quota.snapshots", self.snapshots),
        ] {
            if v.is_some_and(|v| v > Self::MAX) {
                return Err(firefleet_types::ValidationError::new(
                    field,
                    format!("at most {}", Self::MAX),
                ));
            }
        }
        Ok(())
    }
}

/// What a tenant holds, counted as its quota counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QuotaUsage {
    /// VMs.
    pub vms: u64,
    /// vCPUs.
    pub vcpus: u64,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Functions.
    pub functions: u64,
    /// Snapshots.
    pub snapshots: u64,
}

/// `GET /v1/tenants`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TenantList {
    /// The tenants with attributes set, by id.
    pub tenants: Vec<TenantRecord>,
    /// The quota of tenants whose record has none.
    #[serde(default)]
    pub default_quota: TenantQuota,
    /// What each listed tenant holds, by id.
    #[serde(default)]
    pub usage: std::collections::BTreeMap<String, QuotaUsage>,
}

/// One violated rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PolicyViolation {
    /// The policy.
    pub policy: String,
    /// Its enforcement mode.
    pub mode: String,
    /// The policy's message.
    pub message: String,
}

/// One control of a policy, as evaluated for a subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ComplianceControl {
    /// The policy.
    pub policy: String,
    /// The control's id within it.
    pub id: String,
    /// Its name, for people.
    pub name: String,
    /// Whether the subject passes it.
    pub passed: bool,
    /// What was looked at (any JSON: the policy's evidence, often a list of messages).
    #[schema(value_type = Value)]
    pub evidence: serde_json::Value,
}

/// A VM's or a node's evaluation at a policy set version (`/v1/compliance`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ComplianceRecord {
    /// `vm` or `node`.
    pub kind: String,
    /// The VM's id or the node's name.
    pub subject: String,
    /// The VM's name or the node's name.
    pub name: String,
    /// The VM's tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The policy set version it was evaluated at.
    pub policy_version: u64,
    /// No policy in `deny` mode is violated (warn and audit violations are listed but pass).
    pub passed: bool,
    /// Every violated rule, whatever its mode.
    #[serde(default)]
    pub violations: Vec<PolicyViolation>,
    /// Every control evaluated.
    #[serde(default)]
    pub controls: Vec<ComplianceControl>,
    /// When.
    pub evaluated_ms: UnixMillis,
    /// What was done about a failure (`stopped`, `migrating to NODE`, `tainted`, `warned`).
    #[serde(default)]
    pub remediation: Option<String>,
}

/// `GET /v1/compliance`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ComplianceList {
    /// The policy set's current version.
    pub policy_version: u64,
    /// The records (a tenant sees only its VMs' records).
    pub records: Vec<ComplianceRecord>,
}

/// Passes and failures of one control over every subject of a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ControlSummary {
    /// The policy.
    pub policy: String,
    /// The control's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Subjects that pass it.
    pub passed: u64,
    /// Subjects that fail it.
    pub failed: u64,
}

/// `GET /v1/compliance/report[?tenant=T]`: pass/fail per control with the evidence per subject.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ComplianceReport {
    /// When it was made.
    pub generated_ms: UnixMillis,
    /// The policy set version.
    pub policy_version: u64,
    /// The tenant it is limited to, if any.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Per control, over every subject.
    pub controls: Vec<ControlSummary>,
    /// Every subject's record (nodes only for admins).
    pub records: Vec<ComplianceRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_may_hold_memory_writable_disks_and_overhead() {
        let disk = |image: Option<&str>, size_mib, read_only| DiskSpec {
            image: image.map(str::to_owned),
            size_mib,
            read_only,
            root: false,
        };
        let gib = 1u64 << 30;
        assert_eq!(max_snapshot_bytes(1024, &[]), gib + SNAPSHOT_OVERHEAD_BYTES);
        let disks = [
            disk(None, Some(2048), false),
            disk(Some("sha256:x"), None, false),
            disk(Some("sha256:y"), None, true),
        ];
        assert_eq!(
            max_snapshot_bytes(1024, &disks),
            gib + 2 * gib
                + 2 * gib / 256
                + IMAGE_DISK_SNAPSHOT_BYTES * 257 / 256
                + SNAPSHOT_OVERHEAD_BYTES
        );
        assert_eq!(max_snapshot_bytes(u64::MAX, &disks), u64::MAX);
    }
}
