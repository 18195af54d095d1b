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

mod scoring;
#[cfg(test)]
mod tests;
mod types;

use std::collections::BTreeMap;

use firefleet_types::NodeId;

use crate::{
    place_scored, Capacity, ClusterView, NodeView, UnschedulableReason, Weights, LABEL_CLOUD,
    LABEL_REGION,
};

use crate::num::non_negative;
use scoring::{hourly, reason, remove_count, take_off, terms_on, SplitMix};

pub use types::{
    Benefit, DeferReason, Deferred, GuardFinding, Kept, MigrationBudget, MigrationModel, Move,
    PlacedVm, Plan, Stuck, Trigger, Triggers,
};

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
    let mut work = Planning::new(view, triggers, budget, weights);
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
struct Candidate {
    to: usize,
    benefit: Benefit,
}

/// The planner's working state: the view with the moves planned so far.
struct Planning<'a> {
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

impl<'a> Planning<'a> {
    fn new(
        view: &ClusterView,
        triggers: &'a Triggers,
        budget: &'a MigrationBudget,
        weights: &'a Weights,
    ) -> Planning<'a> {
        let index = view
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        Planning {
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
    ) -> Result<Option<Candidate>, Vec<UnschedulableReason>> {
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
        let total = non_negative(w.availability)
            + non_negative(w.risk)
            + non_negative(w.cost)
            + non_negative(w.latency);
        let part = |wt: f64, k: usize| {
            if total > 0.0 {
                non_negative(wt) * (dst_terms[k] - src_terms[k]) / total
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
                b.balance = non_negative(self.budget.model.imbalance_weight) * over.min(1.0);
            }
        }
        let (a, z) = (&self.view.nodes[src], &self.view.nodes[dst]);
        let (transfer_s, downtime_s) = self.transfer(a, z, vm.memory_mib);
        b.transfer_s = transfer_s;
        b.downtime_s = downtime_s;
        let m = &self.budget.model;
        b.migration_cost = non_negative(m.transfer_weight) * transfer_s
            + non_negative(m.downtime_weight) * downtime_s;
        b.saves_per_hour = hourly(a, &vm.request) - hourly(z, &vm.request);
        b.net = b.objective() + b.balance - b.migration_cost;
        if !b.net.is_finite() {
            b.net = if forced { 0.0 } else { f64::NEG_INFINITY };
        }
        Ok(Some(Candidate {
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
        (
            transfer,
            non_negative(m.downtime_base_s) + 2.0 * rtt_ms / 1000.0,
        )
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
    fn commit(
        &mut self,
        vm: &PlacedVm,
        trigger: Trigger,
        forced: bool,
        e: Candidate,
        plan: &mut Plan,
    ) {
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
