//! Errors of reading and compiling policies.

/// Why a policy (or a set of policies) was refused. Each message names the policy; parse and
/// compile errors carry the parser's `<policy>:<line>:<col>` and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The Rego does not parse or compile.
    #[error("policy {policy}: {message}")]
    Invalid {
        /// The policy's name.
        policy: String,
        /// The parser's or compiler's message (starting `<policy>:<line>:<col>: error:`).
        message: String,
    },
    /// The package is not `firefleet.admission.<name>` nor `firefleet.host.<name>`.
    #[error(
        "policy {policy}: package {package} is not firefleet.admission.<name> nor firefleet.host.<name>"
    )]
    Package {
        /// The policy's name.
        policy: String,
        /// The package it declares.
        package: String,
    },
    /// The policy has no `deny` rule.
    #[error("policy {policy}: package {package} defines no deny rule")]
    NoDeny {
        /// The policy's name.
        policy: String,
        /// Its package.
        package: String,
    },
    /// The `enforcement` rule is not one of `deny`, `warn`, `audit`.
    #[error("policy {policy}: enforcement {value} is not \"deny\", \"warn\" or \"audit\"")]
    Enforcement {
        /// The policy's name.
        policy: String,
        /// What the rule evaluated to (JSON).
        value: String,
    },
    /// Two policies of a set declare the same package.
    #[error("policy {policy}: package {package} is already declared by policy {other}")]
    DuplicatePackage {
        /// The later policy.
        policy: String,
        /// The package.
        package: String,
        /// The earlier policy.
        other: String,
    },
    /// Two policies of a set have the same name.
    #[error("policy {policy}: the name is used twice")]
    DuplicateName {
        /// The name.
        policy: String,
    },
    /// A mode that is not `deny`, `warn` or `audit`.
    #[error("unknown enforcement mode {0:?}: must be deny, warn or audit")]
    Mode(String),
}
