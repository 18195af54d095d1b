//! Policies as code: admission and host posture policies written in Rego, evaluated in-process
//! with regorus (OPA-compatible).
//!
//! This crate owns the policy conventions (one Rego file = one package,
//! `firefleet.admission.<name>` or `firefleet.host.<name>`, a `deny` set of messages, optional
//! `controls` and `enforcement`, OPA-style `test_` rules), the built-in bundle of `policies/`
//! (compiled in) and the evaluation of a set of policies against an admission input
//! (`{"vm", "tenant", "function"}`) or a host input (`{"node"}`). See `docs/policy.md`.
//!
//! It is a pure decision engine: no I/O, no async, no clock. Storing policies, choosing the
//! input and acting on the result (refusing a VM, tainting a node) belong to the server.

mod builtin;
mod error;
mod eval;
mod model;
mod set;

pub use builtin::builtin;
pub use error::PolicyError;
pub use model::{Control, Evaluation, Kind, Mode, PolicyDoc, PolicyInfo, PolicyResult, TestResult};
pub use set::{inspect, PolicySet, EVAL_BUDGET};

#[cfg(test)]
mod tests;
