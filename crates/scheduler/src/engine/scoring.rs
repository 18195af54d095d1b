//! The objective: a node's raw score for a request (availability and packing against risk,
//! cost and latency), the spread term, and the upper bound of a bucket's nodes that lets the
//! sampled search skip whole buckets.

use super::{gib, Batch, GroupCounts};
use crate::num::unit;
use crate::{PlacementRequest, TermWeights};

impl<'a> Batch<'a> {
    /// The cost term's denominator for `request`: the most any node would charge.
    pub(super) fn cost_denominator(&self, request: &PlacementRequest) -> f64 {
        self.max_price_vcpu * f64::from(request.resources.vcpus) + self.max_price_gib * gib(request)
    }

    /// Spread term (mean over node, zone, region, cloud of `1 / (1 + replicas there)`), with
    /// node and zone counts optionally taken as 0 (bound).
    pub(super) fn spread(&self, slot: usize, group: Option<&GroupCounts>, optimistic: bool) -> f64 {
        let Some(g) = group else {
            return 1.0;
        };
        let term = |c: Option<&u32>| 1.0 / (1.0 + f64::from(c.copied().unwrap_or(0)));
        let (node, zone) = if optimistic {
            (1.0, 1.0)
        } else {
            (term(g.node.get(&slot)), term(g.zone.get(&self.zone[slot])))
        };
        (node
            + zone
            + term(g.region.get(&self.region[slot]))
            + term(g.cloud.get(&self.cloud[slot])))
            / 4.0
    }

    /// The raw objective of `slot` for `request`.
    pub(super) fn objective(
        &self,
        slot: usize,
        request: &PlacementRequest,
        w: &TermWeights,
        latency: f64,
        cost_denominator: f64,
    ) -> f64 {
        let s = &self.facts[slot];
        let group = request.group.as_deref().and_then(|g| self.groups.get(g));
        let availability = 0.5 * self.spread(slot, group, false) + 0.5 * s.reliability;
        let total = self.total_vms[slot];
        let colocation = if total == 0 {
            0.0
        } else {
            let own = self.tenants[slot]
                .get(&request.tenant)
                .copied()
                .unwrap_or(0);
            f64::from(total.saturating_sub(own)) / f64::from(total)
        };
        let risk = 0.5 * s.risk + 0.3 * colocation + 0.2 * s.spot;
        let cost = if cost_denominator > 0.0 {
            unit(
                (s.price_vcpu * f64::from(request.resources.vcpus) + s.price_gib * gib(request))
                    / cost_denominator,
            )
        } else {
            0.0
        };
        let fill = if w.pack > 0.0 {
            let cap = self.nodes[slot].capacity;
            let free = self.free[slot];
            let used = |c: u64, f: u64, want: u64| {
                if c == 0 {
                    1.0
                } else {
                    unit((c.saturating_sub(f) + want) as f64 / c as f64)
                }
            };
            used(
                u64::from(cap.vcpus),
                u64::from(free.vcpus),
                u64::from(request.resources.vcpus),
            )
            .max(used(
                cap.memory_mib,
                free.memory_mib,
                request.resources.memory_mib,
            ))
        } else {
            0.0
        };
        w.availability * availability + w.pack * fill
            - (w.risk * risk + w.cost * cost + w.latency * latency)
    }

    /// An upper bound of the raw objective of any node of bucket `b`.
    pub(super) fn bound(
        &self,
        b: usize,
        request: &PlacementRequest,
        w: &TermWeights,
        latency: f64,
        cost_denominator: f64,
    ) -> f64 {
        let bucket = &self.buckets[b];
        let group = request.group.as_deref().and_then(|g| self.groups.get(g));
        let spread = match bucket.slots.first() {
            Some(&slot) => self.spread(slot, group, true),
            None => 1.0,
        };
        let availability = 0.5 * spread + 0.5 * bucket.max_reliability;
        let risk = 0.5 * bucket.min_risk + 0.2 * bucket.min_spot;
        let cost = if cost_denominator > 0.0 {
            unit(
                (bucket.min_price_vcpu * f64::from(request.resources.vcpus)
                    + bucket.min_price_gib * gib(request))
                    / cost_denominator,
            )
        } else {
            0.0
        };
        // Filling is at most 1.
        w.availability * availability + w.pack
            - (w.risk * risk + w.cost * cost + w.latency * latency)
    }
}
