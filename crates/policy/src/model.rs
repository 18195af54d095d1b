//! The values going in and out of the engine.

use std::fmt;
use std::str::FromStr;

use crate::PolicyError;

/// What a policy applies to, from its package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `firefleet.admission.<name>`: VMs and functions being created or changed.
    Admission,
    /// `firefleet.host.<name>`: a node's posture.
    Host,
}

impl Kind {
    /// `admission` or `host`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Admission => "admission",
            Kind::Host => "host",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a violation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse the object (admission) or taint the host.
    Deny,
    /// Accept, and report the violation as a warning.
    Warn,
    /// Accept silently; the violation is only recorded.
    Audit,
}

impl Mode {
    /// `deny`, `warn` or `audit`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Deny => "deny",
            Mode::Warn => "warn",
            Mode::Audit => "audit",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "deny" => Ok(Mode::Deny),
            "warn" => Ok(Mode::Warn),
            "audit" => Ok(Mode::Audit),
            other => Err(PolicyError::Mode(other.to_string())),
        }
    }
}

/// A policy as a user writes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyDoc {
    /// Its name (e.g. `admission/image_pinned`); errors and results are reported under it.
    pub name: String,
    /// The Rego source.
    pub source: String,
    /// The mode it is applied in; `None`: its `enforcement` rule, else deny.
    #[serde(default)]
    pub mode: Option<Mode>,
}

/// What a compiled policy is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyInfo {
    /// Its name.
    pub name: String,
    /// Its package, without `data.` (e.g. `firefleet.admission.image_pinned`).
    pub package: String,
    /// Admission or host.
    pub kind: Kind,
    /// The mode in force: the document's, else the policy's `enforcement`, else deny.
    pub mode: Mode,
    /// Its `test_` rules, in source order.
    pub tests: Vec<String>,
}

/// One check of a policy's report.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Control {
    /// The key in the policy's `controls` (or the policy's short name when it has none).
    pub id: String,
    /// Readable name.
    pub name: String,
    /// Whether the object passes it.
    pub passed: bool,
    /// What was seen.
    pub evidence: serde_json::Value,
}

/// One policy's verdict on one input.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PolicyResult {
    /// The policy's name.
    pub policy: String,
    /// The mode it was applied in.
    pub mode: Mode,
    /// Its `deny` messages, sorted (empty: compliant).
    pub violations: Vec<String>,
    /// Its per-control report.
    pub controls: Vec<Control>,
}

/// Every applicable policy's verdict on one input.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    /// One per policy of the kind, in the set's order.
    pub results: Vec<PolicyResult>,
}

impl Evaluation {
    /// Some policy in mode deny is violated: refuse the object (taint the host).
    #[must_use]
    pub fn denied(&self) -> bool {
        self.results
            .iter()
            .any(|r| r.mode == Mode::Deny && !r.violations.is_empty())
    }

    /// The violations of policies in mode deny, each `"<policy>: <message>"`.
    #[must_use]
    pub fn deny_reasons(&self) -> Vec<String> {
        self.messages(Mode::Deny)
    }

    /// The violations of policies in mode warn, each `"<policy>: <message>"`.
    #[must_use]
    pub fn warnings(&self) -> Vec<String> {
        self.messages(Mode::Warn)
    }

    /// No violation at all, whatever the modes.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.results.iter().all(|r| r.violations.is_empty())
    }

    /// The messages of the policies in `mode` that are violated, each prefixed with its policy.
    pub fn messages(&self, mode: Mode) -> Vec<String> {
        self.results
            .iter()
            .filter(|r| r.mode == mode)
            .flat_map(|r| {
                r.violations
                    .iter()
                    .map(move |v| format!("{}: {v}", r.policy))
            })
            .collect()
    }
}

/// The outcome of one Rego test rule.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TestResult {
    /// The policy's name.
    pub policy: String,
    /// The rule's name (`test_...`).
    pub test: String,
    /// It evaluated to true.
    pub passed: bool,
    /// Why it failed, when it did not just evaluate to false or undefined.
    pub error: Option<String>,
}
