//! Compliance (`/v1/compliance`, `/v1/compliance/report`): each subject's evaluation and the
//! per-control report.

use firefleet_types::UnixMillis;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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
