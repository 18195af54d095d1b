//! FireFleet's shared vocabulary: typed ids, resources, topology, VM and node specs and
//! statuses, the VM phase state machine, and pure validation returning typed errors that
//! name the offending field.
//!
//! This crate is pure: it depends on serde (and utoipa for schema derivation) only. It must
//! never do I/O, read the clock, or depend on tokio, an HTTP stack or a database driver
//! (checked by `cargo xtask check`).

#[cfg(any(test, feature = "test-util"))]
pub mod fixtures;
pub mod fleet;
pub mod function;
pub mod ids;
pub mod migration;
pub mod node;
pub mod resources;
pub mod schema;
pub mod snapshot;
pub mod topology;
pub mod validate;
pub mod vm;

pub use function::{Function, FunctionHandler, FunctionPhase, FunctionSpec, FunctionStatus};
pub use ids::{NodeId, TenantId, VmId};
pub use migration::{Migration, MigrationMode, MigrationPhase};
pub use node::{Accel, NodeFacts, NodeInfo, NodeNetworkFacts, NodeStatus, PostureFacts};
pub use resources::Resources;
pub use snapshot::{Snapshot, SnapshotPhase};
pub use topology::Labels;
pub use validate::ValidationError;
pub use vm::{
    DesiredState, DiskSpec, NetworkSpec, PlacementSpec, RestartPolicy, RestoreRequest, Vm, VmPhase,
    VmRuntime, VmSpec, VmStatus,
};

/// A monotonically increasing counter of spec changes (Omicron's `Generation`). Agents refuse
/// intents older than the generation they already have.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct Generation(pub u64);

impl Generation {
    /// The generation after this one.
    #[must_use]
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

/// Milliseconds since the Unix epoch. Pure code receives times as values; only I/O crates read
/// the clock.
pub type UnixMillis = u64;

/// An error and its causes on one line (`outer: inner: innermost`), for logs and reports.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
