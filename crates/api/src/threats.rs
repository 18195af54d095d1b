//! The guard's threats (`/v1/threats`) with their playbooks, and quarantined images
//! (`/v1/quarantine/images`).

use firefleet_types::{UnixMillis, VmId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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
