//! Functions (`/v1/functions`): deploy, the gateway's view, invocations and logs.

use firefleet_types::VmId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use firefleet_types::schema::{CommandRequest, NameRequest, ResourceRequest};

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
