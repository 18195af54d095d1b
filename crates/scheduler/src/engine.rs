//! Scoring placement: hard constraints filter nodes, a weighted objective picks among them.
//!
//! Nodes are indexed by location bucket (`cloud`, `region`). For each request the sampled
//! search visits buckets in order of an upper bound on the objective (exact latency and
//! region/cloud spread, best-case node terms) and, inside a bucket, nodes in order of their
//! static score; buckets whose capacity bound (largest free vCPUs, memory, GPUs, watts) cannot
//! take the request, or whose residency is not allowed, are skipped without looking at nodes.

mod batch;
mod constraints;
mod scoring;
mod search;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use rand::RngCore;

use crate::num::non_negative;
use crate::{Capacity, ClusterView, NodeView, Placement, PlacementRequest, TermWeights, Weights};

/// Up to this many nodes, an unschedulable result lists one reason per node; beyond, it gives
/// counts per [`ReasonKind`](crate::ReasonKind).
pub const MAX_LISTED_REASONS: usize = 16;

/// A result with the objective of the chosen node.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// The result.
    pub placement: Placement,
    /// The objective of the placement, normalised to `[0, 1]` (an increasing function of
    /// `availability*A - (risk*R + cost*C + latency*L)` under the request's class weights);
    /// `None` when unschedulable.
    pub score: Option<f64>,
}

/// Places `requests` on the nodes of `view`, in order: each placement consumes capacity,
/// power and counts toward spread and co-location for the ones after it. Returns exactly one
/// result per request, in the same order.
///
/// Every placement passes every hard constraint (readiness, cordon, node selector, runtime,
/// dedicated hosts, data residency, compliance, vCPUs, memory, GPUs, power budget); among the
/// nodes that pass, the one with the best objective wins (see [`Weights`] and [`Search`](crate::Search)),
/// ties broken by a key drawn from `rng`. Nodes are ordered by id, so the order of
/// `view.nodes` does not matter, and the same input and RNG state give the same output.
pub fn place(
    view: &ClusterView,
    requests: &[PlacementRequest],
    weights: &Weights,
    rng: &mut dyn RngCore,
) -> Vec<Placement> {
    place_scored(view, requests, weights, rng)
        .into_iter()
        .map(|s| s.placement)
        .collect()
}

/// [`place`], with the objective of each placement.
pub fn place_scored(
    view: &ClusterView,
    requests: &[PlacementRequest],
    weights: &Weights,
    rng: &mut dyn RngCore,
) -> Vec<Scored> {
    let mut state = Batch::new(view);
    requests
        .iter()
        .map(|request| state.place_one(request, weights, rng))
        .collect()
}

/// Weights made non-negative.
fn sanitise(w: &TermWeights) -> TermWeights {
    TermWeights {
        availability: non_negative(w.availability),
        risk: non_negative(w.risk),
        cost: non_negative(w.cost),
        latency: non_negative(w.latency),
        pack: non_negative(w.pack),
    }
}

/// Node facts that do not change during a batch, cleaned.
struct FixedFacts {
    reliability: f64,
    risk: f64,
    spot: f64,
    price_vcpu: f64,
    price_gib: f64,
}

/// Replica counts of one group per failure domain.
#[derive(Default)]
struct GroupCounts {
    node: HashMap<usize, u32>,
    zone: HashMap<u32, u32>,
    region: HashMap<u32, u32>,
    cloud: HashMap<u32, u32>,
}

/// Nodes of one (`cloud`, `region`) location, with bounds over them.
struct Bucket<'a> {
    cloud: Option<&'a str>,
    region: Option<&'a str>,
    slots: Vec<usize>,
    /// Per dimension, the largest free amount of any node (upper bound).
    max_free: Capacity,
    /// Largest free power of any node (`u32::MAX` where one has no budget).
    max_watts: u32,
    max_reliability: f64,
    min_risk: f64,
    min_spot: f64,
    min_price_vcpu: f64,
    min_price_gib: f64,
}

/// The batch's working state.
struct Batch<'a> {
    view: &'a ClusterView,
    nodes: Vec<&'a NodeView>,
    facts: Vec<FixedFacts>,
    free: Vec<Capacity>,
    free_watts: Vec<Option<u32>>,
    zone: Vec<u32>,
    region: Vec<u32>,
    cloud: Vec<u32>,
    tenants: Vec<BTreeMap<String, u32>>,
    total_vms: Vec<u32>,
    groups: HashMap<String, GroupCounts>,
    buckets: Vec<Bucket<'a>>,
    max_price_vcpu: f64,
    max_price_gib: f64,
    max_latency: f64,
    /// Per user region, the latency term per bucket.
    latency_cache: HashMap<String, Vec<f64>>,
    /// Per weights (as bits), node slots of each bucket by static score, best first.
    orders: HashMap<[u64; 4], Order>,
}

/// Node slots of each bucket by static score under some weights, best first.
struct Order {
    /// Per bucket, its slots, best static score first.
    slots: Vec<Vec<usize>>,
    /// Per bucket, an index into `slots` before which every node holds VMs (nodes only fill
    /// during a batch, so it only moves forward): where the best empty nodes start.
    empty_cursor: Vec<usize>,
}

/// A request's memory in GiB.
fn gib(request: &PlacementRequest) -> f64 {
    request.resources.memory_mib as f64 / 1024.0
}
