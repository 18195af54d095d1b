//! The autoscaling engine: how many warm instances of each function to have, where, and how
//! long each idle instance may stay.
//!
//! This crate owns the decision only. The server's autoscaling controller gathers, every tick,
//! what happened to each function ([`Sample`]) and its instances ([`InstanceInfo`]), calls
//! [`Autoscaler::tick`], and applies the [`Decision`]s through the scheduler: it starts instances
//! (snapshot restore) up to `wanted` per region and stops idle instances whose keep-alive deadline
//! has passed (never below the function's `min`). `firefleet eval autoscale` replays a real
//! trace through the very same [`Autoscaler`] in simulated time ([`sim`]).
//!
//! It is pure and must stay so: no I/O, no async, no clock, no filesystem (checked by
//! `cargo xtask check`). Time comes in as `now_ms`, randomness from a seed; a given input and
//! seed always give the same decisions. Trace parsing ([`trace`]) takes text, not paths.
//!
//! Policies ([`PolicyKind`]): FireFleet's own (per-function model choice: damped-trend ETS
//! forecast for dense functions, cost-optimal pre-warm and keep-alive windows from the idle-time
//! histogram for sparse ones, a conservative
//! keep-alive for rare ones; a pool sized from recent concurrency; a reactive panic layer;
//! scale to zero), and three baselines from their publications: fixed keep-alive, the hybrid
//! histogram policy of *Serverless in the Wild* (ATC'20) and Knative's KPA.

mod config;
mod engine;
pub mod forecast;
mod history;
mod policy;
pub mod sim;
pub mod trace;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use config::{
    EngineConfig, FireFleetParams, HybridParams, KnativeParams, PolicyKind, PolicyParseError,
};
pub use engine::Autoscaler;

/// What the engine must know about a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionParams {
    /// Warm instances always kept (0: the function may scale to zero).
    pub min: u32,
    /// Never more warm instances than this.
    pub max: u32,
    /// Invocations one instance serves at once.
    pub concurrency: u32,
    /// Regions the function runs in; empty: anywhere (region `""`).
    pub regions: Vec<String>,
    /// Memory of one instance.
    pub memory_mib: u32,
}

impl Default for FunctionParams {
    fn default() -> Self {
        FunctionParams {
            min: 0,
            max: 1000,
            concurrency: 1,
            regions: Vec::new(),
            memory_mib: 128,
        }
    }
}

/// What happened to a function in one region during the last tick.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Function name.
    pub function: String,
    /// Region the invocations came from (`""` if unknown).
    pub region: String,
    /// Invocations that arrived during the tick.
    pub invocations: u64,
    /// Highest number of invocations in flight at once during the tick.
    pub peak_in_flight: u32,
    /// Invocations that found no warm instance.
    pub cold_starts: u64,
    /// Sum over invocations of their time in flight during the tick (ms); the average
    /// concurrency is this over the tick length. 0 if unknown (the peak is used instead).
    pub in_flight_ms: u64,
}

/// One instance of a function as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Instance id.
    pub id: String,
    /// Region it runs in.
    pub region: String,
    /// Invocations it is serving now.
    pub in_flight: u32,
    /// Since when it has been idle; `None` while busy.
    pub idle_since_ms: Option<u64>,
    /// Started and able to serve.
    pub ready: bool,
}

/// The engine's decision for one function at one tick. Functions without instances and with
/// nothing wanted get no decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Function name.
    pub function: String,
    /// Warm instances to have per region (a floor: the controller starts instances up to it;
    /// invocations may still cold-start more on demand).
    pub wanted: BTreeMap<String, u32>,
    /// For each idle instance: when it may be stopped (never before `now_ms`).
    pub keep_alive_until_ms: BTreeMap<String, u64>,
    /// When the engine next expects to want an instance warm (pre-warm), if it does.
    pub prewarm_at_ms: Option<u64>,
    /// Which model or layer decided, for logs.
    pub reason: String,
}

impl Decision {
    /// Total warm instances wanted over all regions.
    pub fn wanted_total(&self) -> u32 {
        self.wanted.values().sum()
    }
}
