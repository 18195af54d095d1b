//! Migration planning: which running VMs should move, where to, and in which order.
//!
//! [`plan_migrations`] takes the cluster as the placement engine sees it, the running VMs with
//! their placement requests, the [`Triggers`] (drains, low battery at the edge, guard findings,
//! utilisation imbalance, and optionally a cost rebalance of every VM against the current
//! prices) and a [`MigrationBudget`], and returns a [`Plan`]: moves, deferred moves and stuck VMs.
//!
//! Destinations are chosen by the placement engine itself ([`place_scored`]): every hard
//! constraint applies, and the VM's own usage is taken off its current node (tenant and replica
//! counts), so it never competes with itself. A move's net benefit is the gain of the normalised
//! placement objective (destination minus current node, split into availability, risk, cost and
//! latency parts), plus a balance part for imbalance, minus the migration cost (memory over the
//! link between the two sites, plus expected downtime, each weighted, see [`MigrationModel`]).
//!
//! Moves that are not forced need a positive net benefit. Drains are forced: every VM of a
//! drained node gets the best destination that fits, or is reported [`Stuck`] with the
//! engine's reasons. Moves run concurrently, so a source node's capacity is not credited to
//! other moves of the same plan: each destination must hold all the moves planned into it.
//!
//! The plan is deterministic: the engine's tie-break RNG is a fixed-seed SplitMix64.

use std::collections::{BTreeMap, BTreeSet};

use firefleet_types::{NodeId, VmId};
use rand::RngCore;

use crate::{
    place_scored, Capacity, ClusterView, NodeView, PlacementRequest, Search, TermWeights,
    UnschedulableReason, Weights, LABEL_CLOUD, LABEL_DEDICATED, LABEL_REGION,
};

/// Label the planner puts on a scratch copy of a node to score one VM there (never stored).
const PIN_LABEL: &str = "firefleet.planner/pin";

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

/// The result of [`plan_migrations`].
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

/// Plans migrations (DESIGN section 3: maximise availability − migration cost under a
/// concurrency budget).
///
/// Candidates are the VMs of drained nodes (forced, planned first, largest first), then VMs
/// of nodes on low battery, with a guard finding, or above the imbalance threshold, and every
/// VM when [`Triggers::rebalance_all`] is set. A VM's trigger is the first that applies in that
/// order. Non-forced candidates are scored against the cluster as it is, sorted by net benefit
/// (best first), then re-scored in that order against the cluster with the moves planned so far
/// and taken while the net benefit stays positive.
///
/// Destinations are never the source, a drained, low-battery or guarded node, nor a node with
/// `max_per_node` moves already; non-forced moves also keep destinations under the imbalance
/// threshold. VMs whose node is not in the view are ignored.
pub fn plan_migrations(
    view: &ClusterView,
    vms: &[PlacedVm],
    triggers: &Triggers,
    weights: &Weights,
    budget: &MigrationBudget,
) -> Plan {
    let mut work = Work::new(view, triggers, budget, weights);
    let mut order: Vec<usize> = (0..vms.len()).collect();
    order.sort_by(|&a, &b| vms[a].request.vm.cmp(&vms[b].request.vm));
    let mut forced = Vec::new();
    let mut others = Vec::new();
    for i in order {
        let vm = &vms[i];
        let Some(&src) = work.index.get(&vm.node) else {
            continue;
        };
        if triggers.drain.contains(&vm.node) {
            forced.push(i);
        } else if let Some(t) = work.trigger_of(src) {
            others.push((i, t));
        }
    }
    let mut plan = Plan::default();
    // Forced: largest first (first-fit decreasing packs better), then by VM id.
    forced.sort_by(|&a, &b| {
        let (ra, rb) = (&vms[a].request.resources, &vms[b].request.resources);
        (rb.gpus, rb.vcpus, rb.memory_mib)
            .cmp(&(ra.gpus, ra.vcpus, ra.memory_mib))
            .then(vms[a].request.vm.cmp(&vms[b].request.vm))
    });
    for i in forced {
        work.plan_forced(&vms[i], &mut plan);
    }
    // Others: by net benefit against the cluster after the forced moves.
    let mut ranked: Vec<(f64, usize, Trigger)> = Vec::new();
    for (i, t) in others {
        match work.evaluate(&vms[i], &t, false, true) {
            Ok(Some(e)) if e.benefit.net > 0.0 => ranked.push((e.benefit.net, i, t)),
            Ok(e) => work.keep(&vms[i], t, e.map(|e| e.benefit.net), &mut plan),
            Err(_) => work.keep(&vms[i], t, None, &mut plan),
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for (net, i, t) in ranked {
        work.plan_optional(&vms[i], t, net, &mut plan);
    }
    plan
}

/// A scored destination.
struct Eval {
    to: usize,
    benefit: Benefit,
}

/// The planner's working state: the view with the moves planned so far.
struct Work<'a> {
    view: ClusterView,
    index: BTreeMap<NodeId, usize>,
    triggers: &'a Triggers,
    budget: &'a MigrationBudget,
    weights: &'a Weights,
    /// Resources leaving each node (still reserved there, but not counted for utilisation).
    leaving: Vec<Capacity>,
    /// Moves touching each node.
    busy: Vec<usize>,
    total: usize,
}

impl<'a> Work<'a> {
    fn new(
        view: &ClusterView,
        triggers: &'a Triggers,
        budget: &'a MigrationBudget,
        weights: &'a Weights,
    ) -> Work<'a> {
        let index = view
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        Work {
            view: view.clone(),
            index,
            triggers,
            budget,
            weights,
            leaving: vec![Capacity::default(); view.nodes.len()],
            busy: vec![0; view.nodes.len()],
            total: 0,
        }
    }

    /// Utilisation of node `i`: the larger of vCPU and memory use over capacity.
    fn utilisation(&self, i: usize) -> f64 {
        let n = &self.view.nodes[i];
        let used = n.allocated.saturating_sub(&self.leaving[i]);
        let frac = |u: f64, c: f64| if c > 0.0 { u / c } else { 0.0 };
        frac(f64::from(used.vcpus), f64::from(n.capacity.vcpus))
            .max(frac(used.memory_mib as f64, n.capacity.memory_mib as f64))
    }

    /// The (non-drain) trigger of node `i`'s VMs, if any.
    fn trigger_of(&self, i: usize) -> Option<Trigger> {
        let id = &self.view.nodes[i].id;
        if let Some(&percent) = self.triggers.low_battery.get(id) {
            return Some(Trigger::LowBattery { percent });
        }
        if let Some(g) = self.triggers.guard.get(id) {
            return Some(Trigger::Guard {
                severity: g.severity,
                summary: g.summary.clone(),
            });
        }
        if let Some(threshold) = self.triggers.imbalance_threshold {
            let utilisation = self.utilisation(i);
            if utilisation > threshold {
                return Some(Trigger::Imbalance {
                    utilisation,
                    threshold,
                });
            }
        }
        self.triggers.rebalance_all.then_some(Trigger::Rebalance)
    }

    /// Whether node `i` may receive VMs in this plan at all.
    fn excluded_destination(&self, i: usize) -> bool {
        let id = &self.view.nodes[i].id;
        self.triggers.drain.contains(id)
            || self.triggers.low_battery.contains_key(id)
            || self.triggers.guard.contains_key(id)
    }

    /// A scratch view for `vm`: its usage taken off its node, trigger facts applied to it,
    /// ineligible destinations marked not ready.
    fn scratch(&self, vm: &PlacedVm, src: usize, forced: bool, respect_busy: bool) -> ClusterView {
        let mut s = self.view.clone();
        let req = &vm.request;
        let threshold = self.triggers.imbalance_threshold.filter(|_| !forced);
        for (i, n) in s.nodes.iter_mut().enumerate() {
            if i == src {
                take_off(n, req);
                let id = n.id.clone();
                if let Some(&p) = self.triggers.low_battery.get(&id) {
                    n.reliability = n.reliability.min(f64::from(p) / 100.0);
                }
                if let Some(g) = self.triggers.guard.get(&id) {
                    n.risk = n.risk.max(g.severity);
                }
                n.ready = false;
            } else if self.excluded_destination(i)
                || (respect_busy && self.busy[i] >= self.budget.max_per_node)
            {
                n.ready = false;
            } else if let Some(t) = threshold {
                // Keep destinations at or under the threshold.
                let t = t.clamp(0.0, 1.0);
                n.capacity.vcpus = (f64::from(n.capacity.vcpus) * t).floor() as u32;
                n.capacity.memory_mib = (n.capacity.memory_mib as f64 * t).floor() as u64;
            }
        }
        s
    }

    /// The best destination for `vm` and its benefit; `Ok(None)`: the node is not in the
    /// view; `Err`: no destination fits.
    fn evaluate(
        &self,
        vm: &PlacedVm,
        trigger: &Trigger,
        forced: bool,
        respect_busy: bool,
    ) -> Result<Option<Eval>, Vec<UnschedulableReason>> {
        let Some(&src) = self.index.get(&vm.node) else {
            return Ok(None);
        };
        let mut s = self.scratch(vm, src, forced, respect_busy);
        let mut rng = SplitMix(0x5eed_u64);
        let placed = place_scored(
            &s,
            std::slice::from_ref(&vm.request),
            self.weights,
            &mut rng,
        );
        let Some(first) = placed.into_iter().next() else {
            return Err(Vec::new());
        };
        let dest = match first.placement {
            crate::Placement::Placed { node, .. } => node,
            crate::Placement::Unschedulable { reasons, .. } => return Err(reasons),
        };
        let Some(&dst) = self.index.get(&dest) else {
            return Err(Vec::new());
        };
        // Score staying and the destination term by term, pinned to one node each.
        let w = self.weights.for_class(&vm.request.class);
        let src_terms = terms_on(&mut s, src, vm, true);
        let dst_terms = terms_on(&mut s, dst, vm, false);
        let total = pos(w.availability) + pos(w.risk) + pos(w.cost) + pos(w.latency);
        let part = |wt: f64, k: usize| {
            if total > 0.0 {
                pos(wt) * (dst_terms[k] - src_terms[k]) / total
            } else {
                0.0
            }
        };
        let mut b = Benefit {
            availability: part(w.availability, 0),
            risk: part(w.risk, 1),
            cost: part(w.cost, 2),
            latency: part(w.latency, 3),
            ..Benefit::default()
        };
        if let Trigger::Imbalance { threshold, .. } = trigger {
            let over = self.utilisation(src) - threshold;
            if over > 0.0 {
                b.balance = pos(self.budget.model.imbalance_weight) * over.min(1.0);
            }
        }
        let (a, z) = (&self.view.nodes[src], &self.view.nodes[dst]);
        let (transfer_s, downtime_s) = self.transfer(a, z, vm.memory_mib);
        b.transfer_s = transfer_s;
        b.downtime_s = downtime_s;
        let m = &self.budget.model;
        b.migration_cost =
            pos(m.transfer_weight) * transfer_s + pos(m.downtime_weight) * downtime_s;
        b.saves_per_hour = hourly(a, &vm.request) - hourly(z, &vm.request);
        b.net = b.objective() + b.balance - b.migration_cost;
        if !b.net.is_finite() {
            b.net = if forced { 0.0 } else { f64::NEG_INFINITY };
        }
        Ok(Some(Eval {
            to: dst,
            benefit: b,
        }))
    }

    /// Seconds to copy `mib` from `a` to `b`, and the expected downtime.
    fn transfer(&self, a: &NodeView, b: &NodeView, mib: u64) -> (f64, f64) {
        let m = &self.budget.model;
        let region = |n: &NodeView| n.labels.get(LABEL_REGION).cloned();
        let edge = |n: &NodeView| {
            n.labels.get(LABEL_CLOUD).is_some_and(|c| c == "edge")
                || n.labels.get("site").is_some_and(|c| c == "edge")
        };
        let (ra, rb) = (region(a), region(b));
        let same = ra.is_some() && ra == rb;
        let bandwidth = if edge(a) || edge(b) {
            m.edge_mib_s
        } else if same {
            m.same_region_mib_s
        } else {
            m.cross_region_mib_s
        };
        let rtt_ms = match (&ra, &rb) {
            _ if same => 0.0,
            (Some(x), Some(y)) => self
                .view
                .latency_ms
                .get(&(x.clone(), y.clone()))
                .or_else(|| self.view.latency_ms.get(&(y.clone(), x.clone())))
                .map_or_else(
                    || f64::from(self.view.latency_ms.values().copied().max().unwrap_or(0)),
                    |&ms| f64::from(ms),
                ),
            _ => f64::from(self.view.latency_ms.values().copied().max().unwrap_or(0)),
        };
        let transfer = if bandwidth > 0.0 && bandwidth.is_finite() {
            mib as f64 / bandwidth + rtt_ms / 1000.0
        } else {
            f64::INFINITY
        };
        (transfer, pos(m.downtime_base_s) + 2.0 * rtt_ms / 1000.0)
    }

    fn plan_forced(&mut self, vm: &PlacedVm, plan: &mut Plan) {
        let Some(&src) = self.index.get(&vm.node) else {
            return;
        };
        let defer = |why, net| Deferred {
            vm: vm.request.vm.clone(),
            from: vm.node.clone(),
            trigger: Trigger::Drain,
            net,
            why,
        };
        if self.total >= self.budget.max_concurrent {
            plan.deferred.push(defer(DeferReason::TotalBudget, None));
            return;
        }
        if self.busy[src] >= self.budget.max_per_node {
            plan.deferred.push(defer(DeferReason::SourceBusy, None));
            return;
        }
        match self.evaluate(vm, &Trigger::Drain, true, true) {
            Ok(Some(e)) => self.commit(vm, Trigger::Drain, true, e, plan),
            Ok(None) => {}
            Err(reasons) => match self.evaluate(vm, &Trigger::Drain, true, false) {
                Ok(Some(e)) => plan
                    .deferred
                    .push(defer(DeferReason::DestinationsBusy, Some(e.benefit.net))),
                _ => plan.stuck.push(Stuck {
                    vm: vm.request.vm.clone(),
                    from: vm.node.clone(),
                    reasons,
                }),
            },
        }
    }

    fn plan_optional(&mut self, vm: &PlacedVm, trigger: Trigger, net: f64, plan: &mut Plan) {
        let Some(&src) = self.index.get(&vm.node) else {
            return;
        };
        let defer = |why, net, trigger| Deferred {
            vm: vm.request.vm.clone(),
            from: vm.node.clone(),
            trigger,
            net: Some(net),
            why,
        };
        if self.total >= self.budget.max_concurrent {
            plan.deferred
                .push(defer(DeferReason::TotalBudget, net, trigger));
            return;
        }
        if self.busy[src] >= self.budget.max_per_node {
            plan.deferred
                .push(defer(DeferReason::SourceBusy, net, trigger));
            return;
        }
        // Re-score against the moves planned so far (the trigger may have changed too).
        let trigger = match trigger {
            Trigger::Imbalance { threshold, .. } => Trigger::Imbalance {
                utilisation: self.utilisation(src),
                threshold,
            },
            t => t,
        };
        match self.evaluate(vm, &trigger, false, true) {
            Ok(Some(e)) if e.benefit.net > 0.0 => self.commit(vm, trigger, false, e, plan),
            Ok(Some(e)) => self.keep(vm, trigger, Some(e.benefit.net), plan),
            Ok(None) => {}
            Err(_) => match self.evaluate(vm, &trigger, false, false) {
                Ok(Some(e)) if e.benefit.net > 0.0 => {
                    plan.deferred
                        .push(defer(DeferReason::DestinationsBusy, e.benefit.net, trigger))
                }
                _ => self.keep(vm, trigger, None, plan),
            },
        }
    }

    fn keep(&self, vm: &PlacedVm, trigger: Trigger, best_net: Option<f64>, plan: &mut Plan) {
        if trigger != Trigger::Rebalance {
            plan.kept.push(Kept {
                vm: vm.request.vm.clone(),
                node: vm.node.clone(),
                trigger,
                best_net,
            });
        }
    }

    /// Records a move: the destination takes the VM; the source keeps its reservation until
    /// the move is done (moves run concurrently) but no longer counts it for utilisation.
    fn commit(&mut self, vm: &PlacedVm, trigger: Trigger, forced: bool, e: Eval, plan: &mut Plan) {
        let Some(&src) = self.index.get(&vm.node) else {
            return;
        };
        let req = &vm.request;
        let dst = e.to;
        {
            let n = &mut self.view.nodes[src];
            remove_count(&mut n.tenants, &req.tenant);
            if let Some(g) = &req.group {
                remove_count(&mut n.groups, g);
            }
        }
        self.leaving[src] = self.leaving[src].saturating_add(&req.resources);
        {
            let n = &mut self.view.nodes[dst];
            n.allocated = n.allocated.saturating_add(&req.resources);
            n.power_used_watts = n.power_used_watts.saturating_add(req.watts);
            *n.tenants.entry(req.tenant.clone()).or_default() += 1;
            if let Some(g) = &req.group {
                *n.groups.entry(g.clone()).or_default() += 1;
            }
        }
        self.busy[src] += 1;
        self.busy[dst] += 1;
        self.total += 1;
        let from = vm.node.clone();
        let to = self.view.nodes[dst].id.clone();
        let reason = reason(
            &trigger,
            &from,
            &self.view.nodes[src],
            &self.view.nodes[dst],
            vm,
            &e.benefit,
        );
        plan.moves.push(Move {
            vm: req.vm.clone(),
            from,
            to,
            trigger,
            forced,
            benefit: e.benefit,
            reason,
        });
    }
}

/// The human-readable reason of a move.
fn reason(
    trigger: &Trigger,
    from: &NodeId,
    a: &NodeView,
    b: &NodeView,
    vm: &PlacedVm,
    benefit: &Benefit,
) -> String {
    let why = match trigger {
        Trigger::Drain => format!("drain of {from}"),
        Trigger::LowBattery { percent } => format!("battery {percent}% on {from}"),
        Trigger::Guard { severity, summary } => {
            format!("guard finding on {from} (severity {severity:.2}): {summary}")
        }
        Trigger::Imbalance {
            utilisation,
            threshold,
        } => format!(
            "{from} at {:.0}% utilisation (threshold {:.0}%)",
            utilisation * 100.0,
            threshold * 100.0
        ),
        Trigger::Rebalance => "rebalance".to_owned(),
    };
    let mut gains = Vec::new();
    if benefit.saves_per_hour > 0.0005 {
        gains.push(format!("saves {:.3}/h", benefit.saves_per_hour));
    }
    for (name, v) in [
        ("availability", benefit.availability),
        ("risk reduction", benefit.risk),
        ("latency reduction", benefit.latency),
    ] {
        if v > 0.0005 {
            gains.push(format!("+{v:.3} {name}"));
        }
    }
    let link = match (a.labels.get(LABEL_REGION), b.labels.get(LABEL_REGION)) {
        (Some(x), Some(y)) if x == y => "in-region",
        _ => "cross-region",
    };
    let mut s = why;
    if !gains.is_empty() {
        s.push_str("; ");
        s.push_str(&gains.join(" and "));
    }
    s.push_str(&format!(
        "; moves {} MiB {link} ({:.1} s, net {:+.3})",
        vm.memory_mib, benefit.transfer_s, benefit.net
    ));
    s
}

/// The four objective terms, each as the engine's normalised score under weights of that term
/// alone (so `[availability, 1 - risk, 1 - cost, 1 - latency]`), of `vm` pinned on node `i` of
/// the scratch view. `staying`: node `i` is the VM's own node, so its hard constraints are
/// lifted (a drained, cordoned or full node can still be scored).
fn terms_on(s: &mut ClusterView, i: usize, vm: &PlacedVm, staying: bool) -> [f64; 4] {
    let saved = s.nodes[i].clone();
    {
        let n = &mut s.nodes[i];
        n.labels.insert(PIN_LABEL.to_owned(), "1".to_owned());
        n.ready = true;
        if staying {
            n.cordoned = false;
            n.compliant = true;
            n.labels.remove(LABEL_DEDICATED);
            n.capacity = n.allocated.saturating_add(&vm.request.resources);
            n.power_budget_watts = None;
        }
    }
    let mut req = vm.request.clone();
    req.node_selector
        .insert(PIN_LABEL.to_owned(), "1".to_owned());
    if staying {
        req.node_selector = [(PIN_LABEL.to_owned(), "1".to_owned())].into();
        req.runtime = None;
        req.allowed_clouds.clear();
        req.allowed_regions.clear();
        req.require_compliant = false;
        req.watts = 0;
    }
    let zero = TermWeights {
        availability: 0.0,
        risk: 0.0,
        cost: 0.0,
        latency: 0.0,
        pack: 0.0,
    };
    let mut out = [0.0; 4];
    for (k, slot) in out.iter_mut().enumerate() {
        let mut w = zero;
        match k {
            0 => w.availability = 1.0,
            1 => w.risk = 1.0,
            2 => w.cost = 1.0,
            _ => w.latency = 1.0,
        }
        let weights = Weights {
            default: w,
            per_class: BTreeMap::new(),
            search: Search::Exhaustive,
        };
        req.class = String::new();
        let mut rng = SplitMix(1);
        *slot = place_scored(s, std::slice::from_ref(&req), &weights, &mut rng)
            .first()
            .and_then(|r| r.score)
            .unwrap_or(0.0);
    }
    s.nodes[i] = saved;
    out
}

/// Takes one VM's usage off a node (allocation, power, tenant and group counts).
fn take_off(n: &mut NodeView, req: &PlacementRequest) {
    n.allocated = n.allocated.saturating_sub(&req.resources);
    n.power_used_watts = n.power_used_watts.saturating_sub(req.watts);
    remove_count(&mut n.tenants, &req.tenant);
    if let Some(g) = &req.group {
        remove_count(&mut n.groups, g);
    }
}

fn remove_count(map: &mut BTreeMap<String, u32>, key: &str) {
    if let Some(c) = map.get_mut(key) {
        *c = c.saturating_sub(1);
        if *c == 0 {
            map.remove(key);
        }
    }
}

/// Price of `req` on `n` per hour.
fn hourly(n: &NodeView, req: &PlacementRequest) -> f64 {
    pos(n.price_vcpu_hour) * f64::from(req.resources.vcpus)
        + pos(n.price_gib_hour) * req.resources.memory_mib as f64 / 1024.0
}

/// A non-negative finite value (others count as 0).
fn pos(x: f64) -> f64 {
    if x.is_finite() {
        x.max(0.0)
    } else {
        0.0
    }
}

/// SplitMix64: the fixed-seed tie-break RNG handed to the engine.
struct SplitMix(u64);

impl RngCore for SplitMix {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nid(s: &str) -> NodeId {
        s.parse().unwrap()
    }

    fn node(id: &str, region: &str, vcpus: u32, mib: u64) -> NodeView {
        let mut n = NodeView::new(
            nid(id),
            Capacity {
                vcpus,
                memory_mib: mib,
                gpus: 0,
            },
        );
        n.labels.insert(LABEL_REGION.into(), region.into());
        n.runtimes = vec!["qemu".into()];
        n
    }

    /// Places `vm` on `n` (updating the node's allocation and counts).
    fn vm(n: &mut NodeView, id: &str, vcpus: u32, mib: u64) -> PlacedVm {
        let mut request = PlacementRequest::new(
            id.parse().unwrap(),
            Capacity {
                vcpus,
                memory_mib: mib,
                gpus: 0,
            },
        );
        request.tenant = "t".into();
        n.allocated = n.allocated.saturating_add(&request.resources);
        *n.tenants.entry("t".into()).or_default() += 1;
        PlacedVm {
            node: n.id.clone(),
            request,
            memory_mib: mib,
        }
    }

    fn view(nodes: Vec<NodeView>) -> ClusterView {
        ClusterView {
            nodes,
            latency_ms: BTreeMap::new(),
        }
    }

    /// Plans with a roomy budget (10 per node).
    fn plan(v: &ClusterView, vms: &[PlacedVm], t: &Triggers) -> Plan {
        let budget = MigrationBudget {
            max_per_node: 10,
            ..MigrationBudget::default()
        };
        plan_migrations(v, vms, t, &Weights::default(), &budget)
    }

    #[test]
    fn drain_moves_everything_or_reports_stuck() {
        let mut a = node("a", "eu", 8, 8192);
        let b = node("b", "eu", 4, 4096);
        let vms = vec![vm(&mut a, "small", 2, 1024), vm(&mut a, "huge", 6, 6000)];
        let v = view(vec![a, b]);
        let t = Triggers {
            drain: [nid("a")].into(),
            ..Triggers::default()
        };
        let p = plan(&v, &vms, &t);
        assert_eq!(p.moves.len(), 1, "{p:?}");
        let m = &p.moves[0];
        assert_eq!(
            (m.vm.to_string().as_str(), m.to.to_string().as_str()),
            ("small", "b")
        );
        assert!(m.forced && m.trigger == Trigger::Drain);
        assert!(m.reason.starts_with("drain of a"), "{}", m.reason);
        assert_eq!(p.stuck.len(), 1);
        assert_eq!(p.stuck[0].vm.to_string(), "huge");
        assert!(!p.stuck[0].reasons.is_empty());
        assert!(p.deferred.is_empty());
    }

    #[test]
    fn drain_is_forced_even_at_a_loss_and_respects_the_node_budget() {
        let mut a = node("a", "eu", 8, 8192);
        // The only destination is worse (risky, far) but the drain is forced.
        let mut b = node("b", "us", 8, 8192);
        b.risk = 0.9;
        let vms: Vec<_> = (0..3)
            .map(|i| vm(&mut a, &format!("v{i}"), 1, 512))
            .collect();
        let v = view(vec![a, b]);
        let t = Triggers {
            drain: [nid("a")].into(),
            ..Triggers::default()
        };
        let budget = MigrationBudget {
            max_per_node: 2,
            ..MigrationBudget::default()
        };
        let p = plan_migrations(&v, &vms, &t, &Weights::default(), &budget);
        assert_eq!(p.moves.len(), 2, "{p:?}");
        assert!(p.moves.iter().all(|m| m.forced && m.benefit.net < 0.0));
        assert_eq!(p.deferred.len(), 1);
        assert_eq!(p.deferred[0].why, DeferReason::SourceBusy);
    }

    #[test]
    fn low_battery_vms_leave_when_worth_it() {
        let mut edge = node("edge-2", "site", 4, 4096);
        edge.labels.insert(LABEL_CLOUD.into(), "edge".into());
        let other = node("edge-3", "site", 4, 4096);
        let vms = vec![vm(&mut edge, "v", 1, 256)];
        let v = view(vec![edge, other]);
        let t = Triggers {
            low_battery: [(nid("edge-2"), 12)].into(),
            ..Triggers::default()
        };
        let p = plan(&v, &vms, &t);
        assert_eq!(p.moves.len(), 1, "{p:?}");
        let m = &p.moves[0];
        assert_eq!(m.to, nid("edge-3"));
        assert!(!m.forced && m.benefit.net > 0.0 && m.benefit.availability > 0.0);
        assert!(
            m.reason.starts_with("battery 12% on edge-2"),
            "{}",
            m.reason
        );
        // A nearly full battery is not worth a move.
        let t = Triggers {
            low_battery: [(nid("edge-2"), 100)].into(),
            ..Triggers::default()
        };
        let p = plan(&v, &vms, &t);
        assert!(p.moves.is_empty(), "{p:?}");
        assert_eq!(p.kept.len(), 1);
    }

    #[test]
    fn guard_findings_move_vms_off_the_node() {
        let mut a = node("a", "eu", 4, 4096);
        let b = node("b", "eu", 4, 4096);
        let vms = vec![vm(&mut a, "v", 1, 256)];
        let v = view(vec![a, b]);
        let t = Triggers {
            guard: [(
                nid("a"),
                GuardFinding {
                    severity: 0.9,
                    summary: "miner process".into(),
                },
            )]
            .into(),
            ..Triggers::default()
        };
        let p = plan(&v, &vms, &t);
        assert_eq!(p.moves.len(), 1, "{p:?}");
        let m = &p.moves[0];
        assert!(m.benefit.risk > 0.0);
        assert!(
            m.reason
                .starts_with("guard finding on a (severity 0.90): miner process"),
            "{}",
            m.reason
        );
    }

    #[test]
    fn imbalance_moves_until_under_the_threshold() {
        let mut hot = node("hot", "eu", 10, 10240);
        let cool = node("cool", "eu", 10, 10240);
        let vms: Vec<_> = (0..9)
            .map(|i| vm(&mut hot, &format!("v{i}"), 1, 256))
            .collect();
        let v = view(vec![hot, cool]);
        let t = Triggers {
            imbalance_threshold: Some(0.7),
            ..Triggers::default()
        };
        let p = plan(&v, &vms, &t);
        // 90% -> 70%: two moves; a third has no balance gain left.
        assert_eq!(p.moves.len(), 2, "{p:?}");
        assert!(p
            .moves
            .iter()
            .all(|m| m.to == nid("cool") && m.benefit.balance > 0.0));
        assert!(p.moves[0]
            .reason
            .starts_with("hot at 90% utilisation (threshold 70%)"));
        assert_eq!(p.kept.len(), 7);
        // With two moves per node, the rest of the wanted moves wait for the source.
        let p = plan_migrations(
            &v,
            &vms,
            &t,
            &Weights::default(),
            &MigrationBudget::default(),
        );
        assert_eq!(p.moves.len(), 2);
        assert!(p.deferred.iter().all(|d| d.why == DeferReason::SourceBusy));
    }

    #[test]
    fn prices_rebalance_only_when_the_saving_beats_the_migration_cost() {
        let mut dear = node("dear", "eu", 8, 8192);
        dear.price_vcpu_hour = 0.04;
        dear.price_gib_hour = 0.005;
        let mut cheap = node("cheap", "eu", 8, 8192);
        cheap.price_vcpu_hour = 0.01;
        cheap.price_gib_hour = 0.001;
        let vms = vec![vm(&mut dear, "v", 1, 1024)];
        let v = view(vec![dear, cheap]);
        let t = Triggers {
            rebalance_all: true,
            ..Triggers::default()
        };
        let p = plan(&v, &vms, &t);
        assert_eq!(p.moves.len(), 1, "{p:?}");
        let m = &p.moves[0];
        assert!(
            m.reason.starts_with("rebalance; saves 0.034/h"),
            "{}",
            m.reason
        );
        assert!((m.benefit.saves_per_hour - 0.034).abs() < 1e-9);
        // A slow link makes it not worth it.
        let mut budget = MigrationBudget::default();
        budget.model.same_region_mib_s = 1.0;
        let p = plan_migrations(&v, &vms, &t, &Weights::default(), &budget);
        assert!(p.moves.is_empty() && p.kept.is_empty(), "{p:?}");
    }

    #[test]
    fn identical_nodes_give_no_moves() {
        let mut a = node("a", "eu", 8, 8192);
        let b = node("b", "eu", 8, 8192);
        let vms = vec![vm(&mut a, "v", 1, 1024)];
        let t = Triggers {
            rebalance_all: true,
            ..Triggers::default()
        };
        assert!(plan(&view(vec![a, b]), &vms, &t).moves.is_empty());
    }

    #[test]
    fn cross_region_and_edge_links_cost_more() {
        let mut a = node("a", "eu", 8, 8192);
        let b = node("b", "eu", 8, 8192);
        let c = node("c", "us", 8, 8192);
        let mut e = node("e", "site", 8, 8192);
        e.labels.insert(LABEL_CLOUD.into(), "edge".into());
        let vms = [vm(&mut a, "v", 1, 2048)];
        let mut v = view(vec![a, b, c, e]);
        v.latency_ms.insert(("eu".into(), "us".into()), 80);
        let budget = MigrationBudget::default();
        let w = Weights::default();
        let t = Triggers::default();
        let work = Work::new(&v, &t, &budget, &w);
        let cost = |to: usize| work.transfer(&v.nodes[0], &v.nodes[to], vms[0].memory_mib);
        let (same, cross, edge) = (cost(1), cost(2), cost(3));
        assert!(
            same.0 < cross.0 && cross.0 < edge.0,
            "{same:?} {cross:?} {edge:?}"
        );
        assert!(same.1 < cross.1);
    }

    #[test]
    fn planning_is_deterministic_and_order_independent() {
        let mut a = node("a", "eu", 8, 8192);
        let b = node("b", "eu", 8, 8192);
        let c = node("c", "us", 8, 8192);
        let vms: Vec<_> = (0..4)
            .map(|i| vm(&mut a, &format!("v{i}"), 1, 512))
            .collect();
        let t = Triggers {
            drain: [nid("a")].into(),
            ..Triggers::default()
        };
        let v = view(vec![a.clone(), b.clone(), c.clone()]);
        let p1 = plan(&v, &vms, &t);
        let mut rv = vms.clone();
        rv.reverse();
        let p2 = plan(&view(vec![c, b, a]), &rv, &t);
        assert_eq!(p1, p2);
        assert_eq!(p1.moves.len(), 4);
    }
}
