//! Scoring placement: hard constraints filter nodes, a weighted objective picks among them.
//!
//! Nodes are indexed by location bucket (`cloud`, `region`). For each request the sampled
//! search visits buckets in order of an upper bound on the objective (exact latency and
//! region/cloud spread, best-case node terms) and, inside a bucket, nodes in order of their
//! static score; buckets whose capacity bound (largest free vCPUs, memory, GPUs, watts) cannot
//! take the request, or whose residency is not allowed, are skipped without looking at nodes.

use std::collections::{BTreeMap, HashMap};

use rand::RngCore;

use crate::{
    Capacity, ClusterView, NodeView, Placement, PlacementRequest, ReasonKind, Search, TermWeights,
    UnschedulableReason, Weights, LABEL_CLOUD, LABEL_DEDICATED, LABEL_REGION, LABEL_ZONE,
};

/// Up to this many nodes, an unschedulable result lists one reason per node; beyond, it gives
/// counts per [`ReasonKind`].
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
/// nodes that pass, the one with the best objective wins (see [`Weights`] and [`Search`]),
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
    let mut state = State::new(view);
    requests
        .iter()
        .map(|request| state.place_one(request, weights, rng))
        .collect()
}

/// A value in `[0, 1]` (NaN counts as 0).
fn unit(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

/// A non-negative finite value (NaN and negatives count as 0).
fn non_negative(x: f64) -> f64 {
    if x.is_finite() {
        x.max(0.0)
    } else {
        0.0
    }
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

/// SplitMix64: the tie-break key of a node for one request.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Node facts that do not change during a batch, cleaned.
struct Static {
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
struct State<'a> {
    view: &'a ClusterView,
    nodes: Vec<&'a NodeView>,
    facts: Vec<Static>,
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

/// Interns `key`, returning its dense id.
fn intern<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: K) -> u32 {
    let next = u32::try_from(map.len()).unwrap_or(u32::MAX);
    *map.entry(key).or_insert(next)
}

impl<'a> State<'a> {
    fn new(view: &'a ClusterView) -> State<'a> {
        let mut nodes: Vec<&NodeView> = view.nodes.iter().collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        let label = |n: &'a NodeView, k: &str| n.labels.get(k).map(String::as_str);
        let (mut zones, mut regions, mut clouds) = (HashMap::new(), HashMap::new(), HashMap::new());
        let (mut zone, mut region, mut cloud) = (Vec::new(), Vec::new(), Vec::new());
        let mut buckets: Vec<Bucket<'a>> = Vec::new();
        for (slot, n) in nodes.iter().enumerate() {
            let (c, r, z) = (
                label(n, LABEL_CLOUD),
                label(n, LABEL_REGION),
                label(n, LABEL_ZONE),
            );
            cloud.push(intern(&mut clouds, c));
            let rid = intern(&mut regions, (c, r));
            region.push(rid);
            zone.push(intern(&mut zones, (c, r, z)));
            if rid as usize == buckets.len() {
                buckets.push(Bucket {
                    cloud: c,
                    region: r,
                    slots: Vec::new(),
                    max_free: Capacity::default(),
                    max_watts: 0,
                    max_reliability: 0.0,
                    min_risk: 1.0,
                    min_spot: 1.0,
                    min_price_vcpu: f64::INFINITY,
                    min_price_gib: f64::INFINITY,
                });
            }
            if let Some(b) = buckets.get_mut(rid as usize) {
                b.slots.push(slot);
            }
        }
        let facts: Vec<Static> = nodes
            .iter()
            .map(|n| Static {
                reliability: unit(n.reliability),
                risk: unit(n.risk),
                spot: if n.spot { 1.0 } else { 0.0 },
                price_vcpu: non_negative(n.price_vcpu_hour),
                price_gib: non_negative(n.price_gib_hour),
            })
            .collect();
        let mut groups: HashMap<String, GroupCounts> = HashMap::new();
        for (slot, n) in nodes.iter().enumerate() {
            for (g, &count) in &n.groups {
                let gc = groups.entry(g.clone()).or_default();
                *gc.node.entry(slot).or_default() += count;
                *gc.zone.entry(zone[slot]).or_default() += count;
                *gc.region.entry(region[slot]).or_default() += count;
                *gc.cloud.entry(cloud[slot]).or_default() += count;
            }
        }
        let max_latency = view.latency_ms.values().copied().max().unwrap_or(0);
        let mut state = State {
            view,
            free: nodes.iter().map(|n| n.free()).collect(),
            free_watts: nodes.iter().map(|n| n.free_watts()).collect(),
            tenants: nodes.iter().map(|n| n.tenants.clone()).collect(),
            total_vms: nodes
                .iter()
                .map(|n| n.tenants.values().fold(0u32, |a, &b| a.saturating_add(b)))
                .collect(),
            max_price_vcpu: facts.iter().map(|f| f.price_vcpu).fold(0.0, f64::max),
            max_price_gib: facts.iter().map(|f| f.price_gib).fold(0.0, f64::max),
            max_latency: f64::from(max_latency),
            nodes,
            facts,
            zone,
            region,
            cloud,
            groups,
            buckets,
            latency_cache: HashMap::new(),
            orders: HashMap::new(),
        };
        for b in 0..state.buckets.len() {
            state.refresh_bucket(b);
        }
        state
    }

    /// Recomputes a bucket's bounds from its nodes.
    fn refresh_bucket(&mut self, b: usize) {
        let Some(bucket) = self.buckets.get_mut(b) else {
            return;
        };
        let mut max_free = Capacity::default();
        let mut max_watts = 0u32;
        let (mut rel, mut risk, mut spot) = (0.0f64, 1.0f64, 1.0f64);
        let (mut pv, mut pg) = (f64::INFINITY, f64::INFINITY);
        for &slot in &bucket.slots {
            let f = self.free[slot];
            max_free.vcpus = max_free.vcpus.max(f.vcpus);
            max_free.memory_mib = max_free.memory_mib.max(f.memory_mib);
            max_free.gpus = max_free.gpus.max(f.gpus);
            max_watts = max_watts.max(self.free_watts[slot].unwrap_or(u32::MAX));
            let s = &self.facts[slot];
            rel = rel.max(s.reliability);
            risk = risk.min(s.risk);
            spot = spot.min(s.spot);
            pv = pv.min(s.price_vcpu);
            pg = pg.min(s.price_gib);
        }
        bucket.max_free = max_free;
        bucket.max_watts = max_watts;
        bucket.max_reliability = rel;
        bucket.min_risk = risk;
        bucket.min_spot = spot;
        bucket.min_price_vcpu = pv;
        bucket.min_price_gib = pg;
    }

    /// The latency term per bucket for users in `user`.
    fn latency_terms(&mut self, user: &str) -> &[f64] {
        if !self.latency_cache.contains_key(user) {
            let table = &self.view.latency_ms;
            let max = self.max_latency;
            let terms = self
                .buckets
                .iter()
                .map(|b| match b.region {
                    Some(r) if r == user => 0.0,
                    Some(r) => match table.get(&(user.to_owned(), r.to_owned())) {
                        Some(&ms) if max > 0.0 => unit(f64::from(ms) / max),
                        Some(_) => 0.0,
                        None => 1.0,
                    },
                    None => 1.0,
                })
                .collect();
            self.latency_cache.insert(user.to_owned(), terms);
        }
        self.latency_cache
            .get(user)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Bucket slots by static score under `w`, best first (ties by slot, i.e. node id).
    fn ensure_order(&mut self, w: &TermWeights) -> [u64; 4] {
        let key = [
            w.availability.to_bits(),
            w.risk.to_bits(),
            w.cost.to_bits(),
            w.latency.to_bits(),
        ];
        if !self.orders.contains_key(&key) {
            let denom = self.max_price_vcpu + 2.0 * self.max_price_gib;
            let static_score = |s: &Static| {
                let cost = if denom > 0.0 {
                    (s.price_vcpu + 2.0 * s.price_gib) / denom
                } else {
                    0.0
                };
                w.availability * 0.5 * s.reliability
                    - w.risk * (0.5 * s.risk + 0.2 * s.spot)
                    - w.cost * cost
            };
            let slots: Vec<Vec<usize>> = self
                .buckets
                .iter()
                .map(|b| {
                    let mut slots = b.slots.clone();
                    slots.sort_by(|&x, &y| {
                        static_score(&self.facts[y])
                            .total_cmp(&static_score(&self.facts[x]))
                            .then(x.cmp(&y))
                    });
                    slots
                })
                .collect();
            let empty_cursor = vec![0; slots.len()];
            self.orders.insert(
                key,
                Order {
                    slots,
                    empty_cursor,
                },
            );
        }
        key
    }

    /// Whether node `slot` can take `request` now; else the first constraint it fails.
    fn check(&self, slot: usize, request: &PlacementRequest) -> Result<(), UnschedulableReason> {
        let node = self.nodes[slot];
        let id = || node.id.clone();
        if !node.ready {
            return Err(UnschedulableReason::NotReady { node: id() });
        }
        if node.cordoned {
            return Err(UnschedulableReason::Cordoned { node: id() });
        }
        if let Some((key, _)) = request
            .node_selector
            .iter()
            .find(|(k, v)| node.labels.get(*k) != Some(*v))
        {
            return Err(UnschedulableReason::SelectorMismatch {
                node: id(),
                key: key.clone(),
            });
        }
        if let Some(runtime) = &request.runtime {
            if !node.runtimes.contains(runtime) {
                return Err(UnschedulableReason::RuntimeMissing {
                    node: id(),
                    runtime: runtime.clone(),
                });
            }
        }
        if let Some(owner) = node.labels.get(LABEL_DEDICATED) {
            if *owner != request.tenant {
                return Err(UnschedulableReason::DedicatedToOther {
                    node: id(),
                    tenant: owner.clone(),
                });
            }
        }
        for (key, allowed) in [
            (LABEL_CLOUD, &request.allowed_clouds),
            (LABEL_REGION, &request.allowed_regions),
        ] {
            let value = node.labels.get(key);
            if !allowed.is_empty() && !value.is_some_and(|v| allowed.contains(v)) {
                return Err(UnschedulableReason::Residency {
                    node: id(),
                    key: key.to_owned(),
                    value: value.cloned(),
                });
            }
        }
        if request.require_compliant && !node.compliant {
            return Err(UnschedulableReason::NotCompliant { node: id() });
        }
        let (free, want) = (self.free[slot], request.resources);
        if free.vcpus < want.vcpus {
            return Err(UnschedulableReason::InsufficientCpu {
                node: id(),
                free: free.vcpus,
                want: want.vcpus,
            });
        }
        if free.memory_mib < want.memory_mib {
            return Err(UnschedulableReason::InsufficientMemory {
                node: id(),
                free_mib: free.memory_mib,
                want_mib: want.memory_mib,
            });
        }
        if free.gpus < want.gpus {
            return Err(UnschedulableReason::InsufficientGpus {
                node: id(),
                free: free.gpus,
                want: want.gpus,
            });
        }
        if let Some(watts) = self.free_watts[slot] {
            if watts < request.watts {
                return Err(UnschedulableReason::InsufficientPower {
                    node: id(),
                    free_watts: watts,
                    want_watts: request.watts,
                });
            }
        }
        Ok(())
    }

    /// The cost term's denominator for `request`: the most any node would charge.
    fn cost_denominator(&self, request: &PlacementRequest) -> f64 {
        self.max_price_vcpu * f64::from(request.resources.vcpus) + self.max_price_gib * gib(request)
    }

    /// Spread term (mean over node, zone, region, cloud of `1 / (1 + replicas there)`), with
    /// node and zone counts optionally taken as 0 (bound).
    fn spread(&self, slot: usize, group: Option<&GroupCounts>, optimistic: bool) -> f64 {
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
    fn objective(
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
    fn bound(
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

    /// Whether bucket `b` may hold a node for `request` (residency and capacity bounds).
    fn bucket_admits(&self, b: usize, request: &PlacementRequest) -> bool {
        let bucket = &self.buckets[b];
        let allowed = |list: &Vec<String>, v: Option<&str>| {
            list.is_empty() || v.is_some_and(|v| list.iter().any(|a| a == v))
        };
        allowed(&request.allowed_clouds, bucket.cloud)
            && allowed(&request.allowed_regions, bucket.region)
            && bucket.max_free.fits(&request.resources)
            && bucket.max_watts >= request.watts
    }

    /// Places one request and updates the state.
    fn place_one(
        &mut self,
        request: &PlacementRequest,
        weights: &Weights,
        rng: &mut dyn RngCore,
    ) -> Scored {
        let unschedulable = |reasons| Scored {
            placement: Placement::Unschedulable {
                vm: request.vm.clone(),
                reasons,
            },
            score: None,
        };
        if self.nodes.is_empty() {
            return unschedulable(vec![UnschedulableReason::NoNodes]);
        }
        let w = sanitise(weights.for_class(&request.class));
        let salt = rng.next_u64();
        let latency: Vec<f64> = match &request.user_region {
            Some(user) => self.latency_terms(user).to_vec(),
            None => vec![0.0; self.buckets.len()],
        };
        let cost_denominator = self.cost_denominator(request);
        let ctx = Ctx {
            request,
            w,
            latency,
            cost_denominator,
            salt,
        };
        let mut best: Option<(f64, u64, usize)> = None;
        if let Search::Sampled {
            per_bucket,
            buckets,
        } = weights.search
        {
            let mut candidates: Vec<(f64, usize)> = (0..self.buckets.len())
                .filter(|&b| self.bucket_admits(b, request))
                .map(|b| {
                    let lat = ctx.latency.get(b).copied().unwrap_or(1.0);
                    (self.bound(b, request, &w, lat, cost_denominator), b)
                })
                .collect();
            candidates.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
            let key = self.ensure_order(&w);
            let per_bucket = per_bucket.max(1);
            let mut visited = 0;
            for (bound, b) in candidates {
                if visited >= buckets.max(1) || best.is_some_and(|(score, _, _)| score > bound) {
                    break;
                }
                let cursor = {
                    let total_vms = &self.total_vms;
                    match self.orders.get_mut(&key) {
                        Some(order) => match (order.slots.get(b), order.empty_cursor.get_mut(b)) {
                            (Some(list), Some(c)) => {
                                while list.get(*c).is_some_and(|&slot| total_vms[slot] > 0) {
                                    *c += 1;
                                }
                                *c
                            }
                            _ => 0,
                        },
                        None => 0,
                    }
                };
                let state = &*self;
                let list = state
                    .orders
                    .get(&key)
                    .and_then(|o| o.slots.get(b))
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                // The best feasible nodes by static score...
                let mut scored = 0;
                for &slot in list {
                    if ctx.consider(state, slot, &mut best) {
                        scored += 1;
                        if scored >= per_bucket {
                            break;
                        }
                    }
                }
                // ...and the best empty ones (no co-location, no replicas yet), which the
                // static order does not see.
                let mut empty = 0;
                for &slot in list.get(cursor..).unwrap_or_default() {
                    if empty >= per_bucket.div_ceil(2) {
                        break;
                    }
                    if state.total_vms[slot] == 0 && ctx.consider(state, slot, &mut best) {
                        empty += 1;
                    }
                }
                if scored + empty > 0 {
                    visited += 1;
                }
            }
        }
        if best.is_none() {
            for slot in 0..self.nodes.len() {
                ctx.consider(self, slot, &mut best);
            }
        }
        match best {
            Some((score, _, slot)) => {
                self.commit(slot, request);
                let total = w.availability + w.pack + w.risk + w.cost + w.latency;
                let normalised = if total > 0.0 {
                    unit((score + w.risk + w.cost + w.latency) / total)
                } else {
                    0.5
                };
                Scored {
                    placement: Placement::Placed {
                        vm: request.vm.clone(),
                        node: self.nodes[slot].id.clone(),
                    },
                    score: Some(normalised),
                }
            }
            None => {
                let reasons = (0..self.nodes.len())
                    .filter_map(|slot| self.check(slot, request).err())
                    .collect();
                unschedulable(bound_reasons(reasons))
            }
        }
    }

    /// Records `request` on `slot` for the rest of the batch.
    fn commit(&mut self, slot: usize, request: &PlacementRequest) {
        self.free[slot] = self.free[slot].saturating_sub(&request.resources);
        if let Some(w) = self.free_watts[slot].as_mut() {
            *w = w.saturating_sub(request.watts);
        }
        *self.tenants[slot]
            .entry(request.tenant.clone())
            .or_default() += 1;
        self.total_vms[slot] = self.total_vms[slot].saturating_add(1);
        if let Some(g) = &request.group {
            let (zone, region, cloud) = (self.zone[slot], self.region[slot], self.cloud[slot]);
            let gc = self.groups.entry(g.clone()).or_default();
            *gc.node.entry(slot).or_default() += 1;
            *gc.zone.entry(zone).or_default() += 1;
            *gc.region.entry(region).or_default() += 1;
            *gc.cloud.entry(cloud).or_default() += 1;
        }
        self.refresh_bucket(self.region[slot] as usize);
    }
}

/// What scoring one request needs.
struct Ctx<'r> {
    request: &'r PlacementRequest,
    w: TermWeights,
    /// Latency term per bucket.
    latency: Vec<f64>,
    cost_denominator: f64,
    /// Tie-break salt drawn from the RNG.
    salt: u64,
}

impl Ctx<'_> {
    /// Scores `slot` if it passes every hard constraint, keeping the best in `best`
    /// (score, tie key, slot); returns whether it passed.
    fn consider(
        &self,
        state: &State<'_>,
        slot: usize,
        best: &mut Option<(f64, u64, usize)>,
    ) -> bool {
        if state.check(slot, self.request).is_err() {
            return false;
        }
        let lat = self
            .latency
            .get(state.region[slot] as usize)
            .copied()
            .unwrap_or(1.0);
        let score = state.objective(slot, self.request, &self.w, lat, self.cost_denominator);
        let key = mix(self.salt ^ slot as u64);
        let better = match *best {
            None => true,
            Some((s, k, _)) => score > s || (score == s && key < k),
        };
        if better {
            *best = Some((score, key, slot));
        }
        true
    }
}

/// A request's memory in GiB.
fn gib(request: &PlacementRequest) -> f64 {
    request.resources.memory_mib as f64 / 1024.0
}

/// Keeps per-node reasons when there are few; otherwise counts them per kind.
fn bound_reasons(reasons: Vec<UnschedulableReason>) -> Vec<UnschedulableReason> {
    if reasons.len() <= MAX_LISTED_REASONS {
        return reasons;
    }
    let mut counts = [0usize; ReasonKind::ALL.len()];
    for kind in reasons.iter().filter_map(UnschedulableReason::kind) {
        counts[kind as usize] += 1;
    }
    ReasonKind::ALL
        .iter()
        .zip(counts)
        .filter(|(_, nodes)| *nodes > 0)
        .map(|(kind, nodes)| UnschedulableReason::Summary { kind: *kind, nodes })
        .collect()
}

#[cfg(test)]
mod tests {
    use firefleet_types::{Labels, NodeId, Resources, VmId};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn cap(vcpus: u32, memory_mib: u64) -> Capacity {
        Capacity {
            vcpus,
            memory_mib,
            gpus: 0,
        }
    }

    fn node(id: &str, vcpus: u32, memory_mib: u64) -> NodeView {
        let mut n = NodeView::new(id.parse().unwrap(), cap(vcpus, memory_mib));
        n.runtimes = vec!["qemu".to_owned()];
        n
    }

    fn request(vm: &str, vcpus: u32, memory_mib: u64) -> PlacementRequest {
        PlacementRequest::new(vm.parse().unwrap(), cap(vcpus, memory_mib))
    }

    fn cluster(nodes: Vec<NodeView>) -> ClusterView {
        ClusterView {
            nodes,
            ..ClusterView::default()
        }
    }

    fn run(view: &ClusterView, requests: &[PlacementRequest], seed: u64) -> Vec<Placement> {
        place(
            view,
            requests,
            &Weights::default(),
            &mut ChaCha8Rng::seed_from_u64(seed),
        )
    }

    fn nid(s: &str) -> NodeId {
        s.parse().unwrap()
    }

    fn vid(s: &str) -> VmId {
        s.parse().unwrap()
    }

    #[test]
    fn the_pack_weight_fills_nodes_in_use_first() {
        let mut busy = node("a-busy", 8, 8192);
        busy.allocated = cap(6, 1024);
        let view = cluster(vec![busy, node("b-empty", 8, 8192)]);
        let place_one = |w: &Weights| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
            match place(&view, &[request("v", 1, 512)], w, &mut rng).pop() {
                Some(Placement::Placed { node, .. }) => node.to_string(),
                other => panic!("{other:?}"),
            }
        };
        // By default the empty node wins (spread, no co-location)...
        assert_eq!(place_one(&Weights::default()), "b-empty");
        // ... a packing class fills the node already in use.
        let packing = Weights {
            default: TermWeights {
                pack: 3.0,
                ..TermWeights::default()
            },
            ..Weights::default()
        };
        assert_eq!(place_one(&packing), "a-busy");
        assert_eq!(place_one(&packing.clone().exhaustive()), "a-busy");
    }

    #[test]
    fn no_nodes_is_its_own_reason() {
        let out = run(&ClusterView::default(), &[request("a", 1, 64)], 1);
        assert_eq!(
            out,
            [Placement::Unschedulable {
                vm: vid("a"),
                reasons: vec![UnschedulableReason::NoNodes]
            }]
        );
        assert_eq!(
            UnschedulableReason::NoNodes.to_string(),
            "the cluster has no nodes"
        );
    }

    #[test]
    fn batch_consumes_capacity_in_order() {
        let view = cluster(vec![node("n1", 2, 1024)]);
        let out = run(
            &view,
            &[
                request("a", 1, 512),
                request("b", 1, 512),
                request("c", 1, 1),
            ],
            7,
        );
        assert_eq!(out[0].node(), Some(&nid("n1")));
        assert_eq!(out[1].node(), Some(&nid("n1")));
        assert_eq!(
            out[2],
            Placement::Unschedulable {
                vm: vid("c"),
                reasons: vec![UnschedulableReason::InsufficientCpu {
                    node: nid("n1"),
                    free: 0,
                    want: 1
                }]
            }
        );
    }

    #[test]
    fn every_node_gets_its_first_failing_reason_in_id_order() {
        let mut not_ready = node("a-not-ready", 8, 8192);
        not_ready.ready = false;
        let mut cordoned = node("b-cordoned", 8, 8192);
        cordoned.cordoned = true;
        cordoned.ready = false; // readiness is checked first
        let mut no_label = node("c-no-label", 8, 8192);
        no_label.labels.insert("zone".into(), "b".into());
        let mut no_runtime = node("d-no-runtime", 8, 8192);
        no_runtime.labels.insert("zone".into(), "a".into());
        no_runtime.runtimes.clear();
        let mut little_mem = node("e-little-mem", 8, 100);
        little_mem.labels.insert("zone".into(), "a".into());
        let mut full = node("f-full", 8, 8192);
        full.labels.insert("zone".into(), "a".into());
        full.allocated = cap(10, 0); // over-allocated: free is 0
        let view = cluster(vec![
            full, little_mem, no_runtime, no_label, cordoned, not_ready,
        ]);
        let mut req = request("vm", 2, 256);
        req.runtime = Some("qemu".into());
        req.node_selector.insert("zone".into(), "a".into());

        let Placement::Unschedulable { reasons, .. } = &run(&view, &[req], 3)[0] else {
            panic!("placed")
        };
        let text: Vec<String> = reasons.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "node a-not-ready: not ready",
                "node b-cordoned: not ready",
                "node c-no-label: label \"zone\" does not match the node selector",
                "node d-no-runtime: runtime \"qemu\" not available",
                "node e-little-mem: insufficient memory (100 MiB free, 256 MiB wanted)",
                "node f-full: insufficient cpu (0 vCPUs free, 2 wanted)",
            ]
        );
    }

    #[test]
    fn many_nodes_are_summarised() {
        let mut nodes: Vec<NodeView> = (0..40).map(|i| node(&format!("n{i}"), 1, 1024)).collect();
        for n in nodes.iter_mut().take(10) {
            n.cordoned = true;
        }
        let out = run(&cluster(nodes), &[request("big", 4, 64)], 0);
        let Placement::Unschedulable { reasons, .. } = &out[0] else {
            panic!("placed")
        };
        assert_eq!(
            reasons,
            &[
                UnschedulableReason::Summary {
                    kind: ReasonKind::Cordoned,
                    nodes: 10
                },
                UnschedulableReason::Summary {
                    kind: ReasonKind::InsufficientCpu,
                    nodes: 30
                },
            ]
        );
        assert_eq!(reasons[1].to_string(), "30 nodes: insufficient cpu");
    }

    #[test]
    fn seeds_spread_load_over_equal_nodes() {
        let view = cluster((0..4).map(|i| node(&format!("n{i}"), 64, 65536)).collect());
        let requests: Vec<_> = (0..40).map(|i| request(&format!("vm{i}"), 1, 64)).collect();
        let out = run(&view, &requests, 42);
        let used: std::collections::BTreeSet<_> = out.iter().filter_map(Placement::node).collect();
        assert_eq!(used.len(), 4, "all equal nodes get work: {used:?}");
    }

    #[test]
    fn input_node_order_does_not_matter() {
        let nodes: Vec<NodeView> = (0..6).map(|i| node(&format!("n{i}"), 2, 2048)).collect();
        let mut reversed = nodes.clone();
        reversed.reverse();
        let requests: Vec<_> = (0..10)
            .map(|i| request(&format!("vm{i}"), 1, 512))
            .collect();
        assert_eq!(
            run(&cluster(nodes), &requests, 9),
            run(&cluster(reversed), &requests, 9)
        );
    }

    #[test]
    fn node_view_from_stored_node() {
        use firefleet_types::node::{NodeReadiness, NodeStatus};
        use firefleet_types::{Accel, NodeFacts, NodeInfo};
        let mut info = NodeInfo {
            id: nid("n1"),
            labels: Labels::new(),
            cordoned: true,
            enrolled_ms: 0,
            status: NodeStatus {
                readiness: NodeReadiness::Ready,
                last_heartbeat_ms: 0,
                facts: None,
            },
        };
        let view = NodeView::from_node_info(
            &info,
            Resources {
                vcpus: 1,
                memory_mib: 1,
            },
        );
        assert_eq!(
            (view.capacity, view.ready, view.cordoned),
            (Capacity::default(), true, true)
        );
        assert_eq!(view.free(), Capacity::default());
        info.status.facts = Some(NodeFacts {
            hostname: "h".into(),
            capacity: Resources {
                vcpus: 4,
                memory_mib: 4096,
            },
            accel: Accel::Tcg,
            accel_probe: String::new(),
            runtimes: vec!["qemu".into()],
            vmm_version: String::new(),
            kernel: String::new(),
            agent_version: String::new(),
            network: None,
            isolation: None,
            posture: None,
            power: None,
        });
        let view = NodeView::from_node_info(
            &info,
            Resources {
                vcpus: 1,
                memory_mib: 1024,
            },
        );
        assert_eq!(view.free(), cap(3, 3072));
        assert_eq!(view.runtimes, ["qemu"]);
    }
    fn labelled(id: &str, pairs: &[(&str, &str)]) -> NodeView {
        let mut n = node(id, 16, 16384);
        for (k, v) in pairs {
            n.labels.insert((*k).into(), (*v).into());
        }
        n
    }

    fn reasons_of(p: &Placement) -> Vec<String> {
        match p {
            Placement::Unschedulable { reasons, .. } => {
                reasons.iter().map(ToString::to_string).collect()
            }
            Placement::Placed { node, .. } => panic!("placed on {node}"),
        }
    }

    fn both(view: &ClusterView, requests: &[PlacementRequest], w: &Weights) -> [Vec<Placement>; 2] {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let sampled = place(view, requests, w, &mut rng);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let exhaustive = place(view, requests, &w.clone().exhaustive(), &mut rng);
        [sampled, exhaustive]
    }

    #[test]
    fn new_hard_constraints_each_have_their_reason() {
        let mut dedicated = labelled("a-dedicated", &[("dedicated", "other"), ("cloud", "aws")]);
        dedicated.labels.insert("region".into(), "eu".into());
        let wrong_cloud = labelled("b-cloud", &[("cloud", "gcp"), ("region", "eu")]);
        let no_region = labelled("c-region", &[("cloud", "aws")]);
        let mut posture = labelled("d-posture", &[("cloud", "aws"), ("region", "eu")]);
        posture.compliant = false;
        let mut no_gpu = labelled("e-gpu", &[("cloud", "aws"), ("region", "eu")]);
        no_gpu.capacity.gpus = 1;
        no_gpu.allocated.gpus = 1;
        let mut power = labelled("f-power", &[("cloud", "aws"), ("region", "eu")]);
        power.capacity.gpus = 2;
        power.power_budget_watts = Some(300);
        power.power_used_watts = 250;
        let view = cluster(vec![
            dedicated,
            wrong_cloud,
            no_region,
            posture,
            no_gpu,
            power,
        ]);
        let mut req = request("vm", 1, 64);
        req.tenant = "me".into();
        req.allowed_clouds = vec!["aws".into()];
        req.allowed_regions = vec!["eu".into()];
        req.require_compliant = true;
        req.resources.gpus = 1;
        req.watts = 100;
        for out in both(&view, &[req.clone()], &Weights::default()) {
            assert_eq!(
                reasons_of(&out[0]),
                [
                    "node a-dedicated: dedicated to tenant \"other\"",
                    "node b-cloud: cloud \"gcp\" not allowed (data residency)",
                    "node c-region: no region label (data residency)",
                    "node d-posture: host posture not compliant",
                    "node e-gpu: insufficient gpus (0 free, 1 wanted)",
                    "node f-power: insufficient power budget (50 W free, 100 W wanted)",
                ]
            );
        }
        // Relaxing each constraint makes its node usable.
        let mut owner = req.clone();
        owner.tenant = "other".into();
        owner.resources.gpus = 0;
        assert_eq!(run(&view, &[owner], 1)[0].node(), Some(&nid("a-dedicated")));
        let mut frugal = req.clone();
        frugal.watts = 50;
        assert_eq!(run(&view, &[frugal], 1)[0].node(), Some(&nid("f-power")));
        let mut lax = req;
        lax.require_compliant = false;
        lax.resources.gpus = 0;
        lax.watts = 0;
        let placed = run(&view, &[lax], 1)[0].node().cloned();
        assert!(
            ["d-posture", "e-gpu", "f-power"]
                .map(nid)
                .iter()
                .any(|n| Some(n) == placed.as_ref()),
            "{placed:?}"
        );
    }

    #[test]
    fn gpus_and_power_are_consumed_by_the_batch() {
        let mut n = node("edge", 64, 65536);
        n.capacity.gpus = 2;
        n.power_budget_watts = Some(250);
        let view = cluster(vec![n]);
        let mut gpu = request("g", 1, 64);
        gpu.resources.gpus = 1;
        let mut hot = request("h", 1, 64);
        hot.watts = 200;
        let out = run(&view, &[gpu.clone(), gpu.clone(), gpu, hot.clone(), hot], 3);
        assert!(out[..2].iter().all(|p| p.node().is_some()));
        assert_eq!(
            reasons_of(&out[2]),
            ["node edge: insufficient gpus (0 free, 1 wanted)"]
        );
        assert!(out[3].node().is_some());
        assert_eq!(
            reasons_of(&out[4]),
            ["node edge: insufficient power budget (50 W free, 200 W wanted)"]
        );
    }

    #[test]
    fn summaries_count_new_kinds() {
        let mut nodes: Vec<NodeView> = (0..30)
            .map(|i| labelled(&format!("n{i:02}"), &[("cloud", "aws")]))
            .collect();
        for n in nodes.iter_mut().take(20) {
            n.compliant = false;
        }
        let mut req = request("vm", 1, 64);
        req.require_compliant = true;
        req.allowed_clouds = vec!["gcp".into()];
        let out = run(&cluster(nodes), &[req], 0);
        assert_eq!(
            reasons_of(&out[0]),
            ["30 nodes: outside the allowed clouds/regions"]
        );
    }

    #[test]
    fn replicas_spread_over_zones_regions_and_clouds() {
        let nodes = vec![
            labelled("a1", &[("cloud", "aws"), ("region", "eu"), ("zone", "1")]),
            labelled("a2", &[("cloud", "aws"), ("region", "eu"), ("zone", "1")]),
            labelled("b1", &[("cloud", "aws"), ("region", "eu"), ("zone", "2")]),
            labelled("c1", &[("cloud", "aws"), ("region", "us"), ("zone", "1")]),
            labelled("d1", &[("cloud", "gcp"), ("region", "eu"), ("zone", "1")]),
        ];
        let view = cluster(nodes);
        let reqs: Vec<_> = (0..4)
            .map(|i| {
                let mut r = request(&format!("r{i}"), 1, 64);
                r.group = Some("web".into());
                r
            })
            .collect();
        for out in both(&view, &reqs, &Weights::default()) {
            let clouds: std::collections::BTreeSet<_> = out
                .iter()
                .filter_map(Placement::node)
                .map(|n| view.nodes.iter().find(|v| &v.id == n).unwrap().labels["cloud"].clone())
                .collect();
            assert_eq!(clouds.len(), 2, "{out:?}");
            let used: std::collections::BTreeSet<_> =
                out.iter().filter_map(Placement::node).collect();
            assert_eq!(used.len(), 4, "four replicas on four nodes: {out:?}");
            assert!(
                !used.contains(&nid("a2")) || !used.contains(&nid("a1")),
                "{out:?}"
            );
        }
        // Without a group, replicas may share a node (no spread term).
        let ungrouped: Vec<_> = reqs
            .iter()
            .cloned()
            .map(|mut r| {
                r.group = None;
                r
            })
            .collect();
        assert_eq!(run(&view, &ungrouped, 1).len(), 4);
    }

    #[test]
    fn existing_replicas_count_toward_spread() {
        let mut a = labelled("a", &[("zone", "1")]);
        a.groups.insert("db".into(), 1);
        let b = labelled("b", &[("zone", "2")]);
        let mut req = request("r", 1, 64);
        req.group = Some("db".into());
        for out in both(&cluster(vec![a, b]), &[req], &Weights::default()) {
            assert_eq!(out[0].node(), Some(&nid("b")));
        }
    }

    #[test]
    fn latency_cost_risk_and_reliability_steer_the_choice() {
        let mut near = labelled("near", &[("cloud", "aws"), ("region", "eu")]);
        let far = labelled("far", &[("cloud", "aws"), ("region", "us")]);
        let mut view = cluster(vec![near.clone(), far.clone()]);
        view.latency_ms.insert(("eu".into(), "us".into()), 90);
        view.latency_ms.insert(("us".into(), "eu".into()), 90);
        let mut req = request("r", 2, 2048);
        req.user_region = Some("us".into());
        for out in both(&view, &[req.clone()], &Weights::default()) {
            assert_eq!(out[0].node(), Some(&nid("far")));
        }
        req.user_region = Some("eu".into());
        assert_eq!(run(&view, &[req.clone()], 2)[0].node(), Some(&nid("near")));

        // Cost: the cheaper node wins when latency does not matter.
        req.user_region = None;
        near.price_vcpu_hour = 0.05;
        near.price_gib_hour = 0.01;
        let mut cheap = far.clone();
        cheap.price_vcpu_hour = 0.01;
        cheap.price_gib_hour = 0.002;
        let view = cluster(vec![near.clone(), cheap]);
        for out in both(&view, &[req.clone()], &Weights::default()) {
            assert_eq!(out[0].node(), Some(&nid("far")));
        }
        // Risk: a risky node loses against a safe one; so does a spot node.
        let mut risky = near.clone();
        risky.risk = 0.9;
        let mut safe = far.clone();
        safe.price_vcpu_hour = 0.05;
        safe.price_gib_hour = 0.01;
        for out in both(
            &cluster(vec![risky.clone(), safe.clone()]),
            &[req.clone()],
            &Weights::default(),
        ) {
            assert_eq!(out[0].node(), Some(&nid("far")));
        }
        let mut spot = near.clone();
        spot.spot = true;
        assert_eq!(
            run(&cluster(vec![spot, safe.clone()]), &[req.clone()], 2)[0].node(),
            Some(&nid("far"))
        );
        // Co-location: prefer the node holding our own tenant's VMs over another tenant's.
        let mut shared = near.clone();
        shared.tenants.insert("them".into(), 3);
        let mut ours = safe.clone();
        ours.tenants.insert("us".into(), 3);
        req.tenant = "us".into();
        assert_eq!(
            run(&cluster(vec![shared, ours]), &[req.clone()], 2)[0].node(),
            Some(&nid("far"))
        );
        // Reliability.
        let mut flaky = near;
        flaky.reliability = 0.2;
        assert_eq!(
            run(&cluster(vec![flaky, safe]), &[req], 2)[0].node(),
            Some(&nid("far"))
        );
    }

    #[test]
    fn class_weights_override_the_default() {
        // "near" is expensive and close to the users; "far" is cheap and far away.
        let mut near = labelled("near", &[("region", "eu")]);
        near.price_vcpu_hour = 1.0;
        let far = labelled("far", &[("region", "us")]);
        let mut view = cluster(vec![near, far]);
        view.latency_ms.insert(("eu".into(), "us".into()), 100);
        let mut req = request("r", 1, 64);
        req.user_region = Some("eu".into());
        let mut w = Weights::default();
        w.default.latency = 0.1;
        w.per_class.insert(
            "interactive".into(),
            TermWeights {
                latency: 10.0,
                ..TermWeights::default()
            },
        );
        assert_eq!(
            run_w(&view, &[req.clone()], &w)[0].node(),
            Some(&nid("far"))
        );
        req.class = "interactive".into();
        assert_eq!(
            run_w(&view, &[req.clone()], &w)[0].node(),
            Some(&nid("near"))
        );
        req.class = "batch".into();
        assert_eq!(run_w(&view, &[req], &w)[0].node(), Some(&nid("far")));
    }

    fn run_w(view: &ClusterView, requests: &[PlacementRequest], w: &Weights) -> Vec<Placement> {
        place(view, requests, w, &mut ChaCha8Rng::seed_from_u64(1))
    }

    #[test]
    fn scores_are_normalised_and_reported() {
        let view = cluster(vec![node("n", 4, 4096)]);
        let out = place_scored(
            &view,
            &[request("a", 1, 64), request("b", 8, 64)],
            &Weights::default(),
            &mut ChaCha8Rng::seed_from_u64(0),
        );
        let s = out[0].score.unwrap();
        assert!((0.0..=1.0).contains(&s), "{s}");
        // Reliability 1, no group, no risk, cost or latency: the best possible objective.
        assert!((s - 1.0).abs() < 1e-9, "{s}");
        assert_eq!(out[1].score, None);
    }

    #[test]
    fn sampled_mode_prunes_but_stays_complete() {
        // 40 regions of 5 nodes; only the last region's last node has room.
        let mut nodes = Vec::new();
        for r in 0..40 {
            for i in 0..5 {
                let mut n = labelled(&format!("r{r:02}-{i}"), &[("region", &format!("r{r}"))]);
                n.allocated = cap(16, 0);
                nodes.push(n);
            }
        }
        if let Some(n) = nodes.last_mut() {
            n.allocated = cap(0, 0);
        }
        let out = run(
            &cluster(nodes),
            &[request("a", 2, 64), request("b", 16, 64)],
            4,
        );
        assert_eq!(out[0].node(), Some(&nid("r39-4")));
        assert_eq!(reasons_of(&out[1]), ["200 nodes: insufficient cpu"]);
    }
}
