//! What the planner takes and gives: the running VMs, the triggers, the migration cost model
//! and budget; the plan's moves, deferred moves, stuck and kept VMs.

use std::collections::{BTreeMap, BTreeSet};

use firefleet_types::{NodeId, VmId};

use crate::{PlacementRequest, UnschedulableReason};

/// A running VM as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacedVm {
    /// The node it runs on now.
    pub node: NodeId,
    /// What it needs and may run on (its `vm` field names the VM).
    pub request: PlacementRequest,
    /// Memory to transfer when it migrates, in MiB (usually its memory size).
    pub memory_mib: u64,
}

/// A guard finding on a node: its VMs should leave.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardFinding {
    /// Severity in `[0, 1]`; the node's risk is taken as at least this when scoring staying.
    pub severity: f64,
    /// What was found, for the reason string.
    pub summary: String,
}

/// Why VMs are considered for migration. Prices need no trigger: they are the view's current
/// prices, and [`Triggers::rebalance_all`] makes every VM a candidate for them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Triggers {
    /// Nodes being drained: every VM must leave (forced moves).
    pub drain: BTreeSet<NodeId>,
    /// Edge nodes on battery, with the charge left in percent: their VMs leave if a move has
    /// a positive net benefit; staying is scored with reliability at most the charge.
    pub low_battery: BTreeMap<NodeId, u8>,
    /// Nodes with a guard finding: staying is scored with risk at least its severity.
    pub guard: BTreeMap<NodeId, GuardFinding>,
    /// Utilisation (the largest of vCPU and memory allocated over capacity) above which a node
    /// is overloaded: its VMs are candidates, with a balance gain, and no non-forced move may
    /// take a destination above it. `None`: no imbalance trigger.
    pub imbalance_threshold: Option<f64>,
    /// Consider every VM (cost, latency, availability rebalance against current facts).
    pub rebalance_all: bool,
}

/// Why a VM was considered.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// Its node is being drained (forced).
    Drain,
    /// Its node is on battery with this charge left, in percent.
    LowBattery {
        /// Charge left.
        percent: u8,
    },
    /// Its node has a guard finding.
    Guard {
        /// The finding's severity.
        severity: f64,
        /// The finding.
        summary: String,
    },
    /// Its node's utilisation is above the threshold.
    Imbalance {
        /// The node's utilisation when the VM was planned.
        utilisation: f64,
        /// The threshold.
        threshold: f64,
    },
    /// A rebalance of every VM ([`Triggers::rebalance_all`]).
    Rebalance,
}

/// Assumed link speeds and the weights turning migration time into objective units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MigrationModel {
    /// Bandwidth between two nodes of the same region, MiB/s.
    pub same_region_mib_s: f64,
    /// Bandwidth between regions, MiB/s.
    pub cross_region_mib_s: f64,
    /// Bandwidth to or from an edge site (`cloud=edge` or `site=edge` label), MiB/s.
    pub edge_mib_s: f64,
    /// Downtime of the final stop-and-copy, seconds, before the link's round trip is added.
    pub downtime_base_s: f64,
    /// Objective units per second of transfer.
    pub transfer_weight: f64,
    /// Objective units per second of downtime.
    pub downtime_weight: f64,
    /// Weight of the balance gain (how far the source is above the imbalance threshold).
    pub imbalance_weight: f64,
}

impl Default for MigrationModel {
    fn default() -> Self {
        MigrationModel {
            same_region_mib_s: 1000.0,
            cross_region_mib_s: 100.0,
            edge_mib_s: 20.0,
            downtime_base_s: 0.3,
            transfer_weight: 0.001,
            downtime_weight: 0.01,
            imbalance_weight: 1.0,
        }
    }
}

/// How many migrations may run at once, and the cost model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MigrationBudget {
    /// Migrations in the plan, in total.
    pub max_concurrent: usize,
    /// Migrations touching one node (as source or destination).
    pub max_per_node: usize,
    /// Link speeds and cost weights.
    pub model: MigrationModel,
}

impl Default for MigrationBudget {
    fn default() -> Self {
        MigrationBudget {
            max_concurrent: 16,
            max_per_node: 2,
            model: MigrationModel::default(),
        }
    }
}

/// The parts of a move's net benefit. Objective parts are the weighted, normalised terms of
/// the placement objective (destination minus source, over the sum of the class weights), so
/// `availability + risk + cost + latency` is the objective gain.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Benefit {
    /// Availability gain (spread and reliability).
    pub availability: f64,
    /// Risk reduction (guard risk, co-location, spot).
    pub risk: f64,
    /// Cost saving (normalised).
    pub cost: f64,
    /// Latency reduction.
    pub latency: f64,
    /// Balance gain (imbalance trigger only).
    pub balance: f64,
    /// Migration cost subtracted (transfer and downtime, weighted).
    pub migration_cost: f64,
    /// Seconds to transfer the memory.
    pub transfer_s: f64,
    /// Expected downtime, seconds.
    pub downtime_s: f64,
    /// Saving in currency per hour at the view's prices (negative: dearer).
    pub saves_per_hour: f64,
    /// The net benefit: objective gain + balance − migration cost.
    pub net: f64,
}

impl Benefit {
    /// The placement objective's gain (sum of its four parts).
    #[must_use]
    pub fn objective(&self) -> f64 {
        self.availability + self.risk + self.cost + self.latency
    }
}

/// One planned migration.
#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    /// The VM.
    pub vm: VmId,
    /// Where it runs now.
    pub from: NodeId,
    /// Where it goes.
    pub to: NodeId,
    /// Why it was considered.
    pub trigger: Trigger,
    /// Forced (drain): made even without a positive net benefit.
    pub forced: bool,
    /// Net benefit and its parts.
    pub benefit: Benefit,
    /// Human-readable reason, e.g. `drain of edge-1; moves 2048 MiB cross-region (20.5 s)`.
    pub reason: String,
}

/// Why a wanted move is not in the plan this round.
#[derive(Debug, Clone, PartialEq)]
pub enum DeferReason {
    /// The plan already has `max_concurrent` moves.
    TotalBudget,
    /// The source node already has `max_per_node` moves.
    SourceBusy,
    /// Every destination that fits already has `max_per_node` moves.
    DestinationsBusy,
}

/// A move that is wanted but not planned now, for the budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Deferred {
    /// The VM.
    pub vm: VmId,
    /// Where it runs now.
    pub from: NodeId,
    /// Why it was considered.
    pub trigger: Trigger,
    /// Its net benefit when last evaluated (`None`: not evaluated, e.g. total budget spent
    /// before a forced move).
    pub net: Option<f64>,
    /// Why it waits.
    pub why: DeferReason,
}

/// A VM of a drained node that no node can take.
#[derive(Debug, Clone, PartialEq)]
pub struct Stuck {
    /// The VM.
    pub vm: VmId,
    /// Its (drained) node.
    pub from: NodeId,
    /// Why no node fits (the placement engine's reasons).
    pub reasons: Vec<UnschedulableReason>,
}

/// A triggered VM (battery, guard, imbalance) that stays, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    /// The VM.
    pub vm: VmId,
    /// Its node.
    pub node: NodeId,
    /// Why it was considered.
    pub trigger: Trigger,
    /// Best net benefit found (`None`: no destination fits).
    pub best_net: Option<f64>,
}

/// The result of [`plan_migrations`](crate::plan_migrations).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Moves to run now, in the order chosen (forced first, then by net benefit).
    pub moves: Vec<Move>,
    /// Moves wanted but over the budget.
    pub deferred: Vec<Deferred>,
    /// Drained VMs with nowhere to go.
    pub stuck: Vec<Stuck>,
    /// Triggered VMs (not forced, not [`Trigger::Rebalance`]) with no move worth making.
    pub kept: Vec<Kept>,
}
