//! Policies (`/v1/policies`) and the admission warning header.

use firefleet_types::UnixMillis;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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
