//! Commands run in a VM's guest (`POST /v1/vms/{vm}/exec`): the request, the record the
//! agent picks up, and the result.

use firefleet_types::VmId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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
