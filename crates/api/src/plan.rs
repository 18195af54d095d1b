//! The placement planner's proposal (`GET /v1/plan`, `POST /v1/plan/apply`).

use firefleet_types::Migration;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /v1/plan` and `POST /v1/plan/apply` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PlanQuery {
    /// Consider every VM for cost, latency and availability (not only triggered ones).
    #[serde(default)]
    pub rebalance: bool,
    /// Utilisation above which a node is overloaded (0 < x <= 1; default 0.9).
    #[serde(default)]
    #[param(exclusive_minimum = 0.0, maximum = 1.0)]
    pub imbalance: Option<f64>,
    /// Battery charge, percent, under which a node's VMs should leave (default 30).
    #[serde(default)]
    #[param(minimum = 0, maximum = 100)]
    pub battery_below: Option<u8>,
}

/// A migration the planner proposes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlannedMove {
    /// The VM's name.
    pub vm: String,
    /// The VM's id.
    pub vm_id: String,
    /// Where it runs.
    pub from: String,
    /// Where it would go.
    pub to: String,
    /// Why it was considered (`drain`, `low_battery`, `guard`, `imbalance`, `rebalance`).
    pub trigger: String,
    /// Made even without a positive net benefit (drains).
    pub forced: bool,
    /// Net benefit (objective gain + balance − migration cost).
    pub net: f64,
    /// Expected downtime, seconds.
    pub downtime_s: f64,
    /// Saving per hour at current prices.
    pub saves_per_hour: f64,
    /// Why, in words.
    pub reason: String,
}

/// A VM the planner leaves where it is this round, and why.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlanNote {
    /// The VM's name.
    pub vm: String,
    /// Its node.
    pub node: String,
    /// Why it is not moved now.
    pub why: String,
}

/// The planner's proposal (and, for `apply`, the migrations started).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlanResponse {
    /// Moves, in the order they would run.
    pub moves: Vec<PlannedMove>,
    /// Moves wanted but over the concurrency budget, VMs that fit nowhere, and triggered VMs
    /// with no move worth making.
    pub notes: Vec<PlanNote>,
    /// Migrations started (`apply` only).
    #[serde(default)]
    pub started: Vec<Migration>,
}
