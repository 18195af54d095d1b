//! How the planner scores: a VM pinned on one node of a scratch view and scored by the engine
//! term by term, one VM's usage taken off its node, prices per hour, the reason of a move in
//! words, and the fixed-seed RNG handed to the engine.

use std::collections::BTreeMap;

use firefleet_types::NodeId;
use rand::RngCore;

use super::{Benefit, PlacedVm, Trigger};
use crate::num::{mix, non_negative};
use crate::{
    place_scored, ClusterView, NodeView, PlacementRequest, Search, TermWeights, Weights,
    LABEL_DEDICATED, LABEL_REGION,
};

/// Label the planner puts on a scratch copy of a node to score one VM there (never stored).
pub(super) const PIN_LABEL: &str = "firefleet.planner/pin";

/// The human-readable reason of a move.
pub(super) fn reason(
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
pub(super) fn terms_on(s: &mut ClusterView, i: usize, vm: &PlacedVm, staying: bool) -> [f64; 4] {
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
pub(super) fn take_off(n: &mut NodeView, req: &PlacementRequest) {
    n.allocated = n.allocated.saturating_sub(&req.resources);
    n.power_used_watts = n.power_used_watts.saturating_sub(req.watts);
    remove_count(&mut n.tenants, &req.tenant);
    if let Some(g) = &req.group {
        remove_count(&mut n.groups, g);
    }
}

pub(super) fn remove_count(map: &mut BTreeMap<String, u32>, key: &str) {
    if let Some(c) = map.get_mut(key) {
        *c = c.saturating_sub(1);
        if *c == 0 {
            map.remove(key);
        }
    }
}

/// Price of `req` on `n` per hour.
pub(super) fn hourly(n: &NodeView, req: &PlacementRequest) -> f64 {
    non_negative(n.price_vcpu_hour) * f64::from(req.resources.vcpus)
        + non_negative(n.price_gib_hour) * req.resources.memory_mib as f64 / 1024.0
}

/// SplitMix64: the fixed-seed tie-break RNG handed to the engine.
pub(super) struct SplitMix(pub(super) u64);

impl RngCore for SplitMix {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        let x = mix(self.0);
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        x
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
