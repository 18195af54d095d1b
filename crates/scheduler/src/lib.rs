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
//! The engine is first fit for now: hard constraints filter nodes (readiness, cordon, node
//! selector, runtime, free CPU and memory) and the first node that passes, scanning from a
//! seeded offset, wins. [`Weights`] is where the scorer of DESIGN section 3 will plug in.

mod engine;
mod reason;
mod view;

pub use engine::{place, MAX_LISTED_REASONS};
pub use reason::{Placement, ReasonKind, UnschedulableReason};
pub use view::{ClusterView, NodeView, PlacementRequest, Weights};
