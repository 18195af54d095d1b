//! The placement engine: which node each VM should run on.
//!
//! This crate owns the decision only. The server's scheduling controller prepares a
//! [`ClusterView`] from the store, calls [`place`], and writes the resulting [`Placement`]s as
//! intents; the simulator calls the very same function.
//!
//! It is pure and must stay so: no I/O, no async, no clock, no filesystem, no async runtime, HTTP or
//! database dependency (checked by `cargo xtask check` and `crates/xtask/tests/layering.rs`).
//! Randomness comes in as an argument (a seeded RNG), so a given input and seed always give the
//! same plan.
//!
//! Hard constraints filter nodes (readiness, cordon, node selector, runtime, dedicated hosts,
//! data residency, compliance, free vCPUs, memory, GPUs, power budget); among the nodes that
//! pass, a normalised weighted objective (availability − (risk + cost + latency), weights per
//! workload class, see [`Weights`]) picks. At fleet scale the [`Search::Sampled`] mode scores a
//! bounded number of candidates from location buckets ordered by an upper bound;
//! [`Search::Exhaustive`] scores every node, for comparison.
//!
//! [`plan_migrations`] plans moves of running VMs (drains, low battery, guard findings,
//! imbalance, price rebalance) with the same engine and objective, net of the migration cost,
//! under a concurrency budget.

mod engine;
mod num;
mod planner;
mod reason;
mod view;

pub use engine::{place, place_scored, Scored, MAX_LISTED_REASONS};
pub use planner::{
    plan_migrations, Benefit, DeferReason, Deferred, GuardFinding, Kept, MigrationBudget,
    MigrationModel, Move, PlacedVm, Plan, Stuck, Trigger, Triggers,
};
pub use reason::{Placement, ReasonKind, UnschedulableReason};
pub use view::{
    Capacity, ClusterView, NodeView, PlacementRequest, Search, TermWeights, Weights, LABEL_CLOUD,
    LABEL_DEDICATED, LABEL_REGION, LABEL_ZONE,
};
