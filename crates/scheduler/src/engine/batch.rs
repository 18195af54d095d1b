//! The batch's working state: built once from the view (nodes in id order, interned failure
//! domains, location buckets with their bounds), and kept current as each placement commits.

use std::collections::HashMap;

use super::{Batch, Bucket, FixedFacts, GroupCounts, Order};
use crate::num::{non_negative, unit};
use crate::{Capacity, ClusterView, NodeView, PlacementRequest, TermWeights};
use crate::{LABEL_CLOUD, LABEL_REGION, LABEL_ZONE};

impl<'a> Batch<'a> {
    pub(super) fn new(view: &'a ClusterView) -> Batch<'a> {
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
        let facts: Vec<FixedFacts> = nodes
            .iter()
            .map(|n| FixedFacts {
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
        let mut state = Batch {
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
    pub(super) fn refresh_bucket(&mut self, b: usize) {
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
    pub(super) fn latency_terms(&mut self, user: &str) -> &[f64] {
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
    pub(super) fn ensure_order(&mut self, w: &TermWeights) -> [u64; 4] {
        let key = [
            w.availability.to_bits(),
            w.risk.to_bits(),
            w.cost.to_bits(),
            w.latency.to_bits(),
        ];
        if !self.orders.contains_key(&key) {
            let denom = self.max_price_vcpu + 2.0 * self.max_price_gib;
            let static_score = |s: &FixedFacts| {
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

    /// Records `request` on `slot` for the rest of the batch.
    pub(super) fn commit(&mut self, slot: usize, request: &PlacementRequest) {
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

/// Interns `key`, returning its dense id.
fn intern<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: K) -> u32 {
    let next = u32::try_from(map.len()).unwrap_or(u32::MAX);
    *map.entry(key).or_insert(next)
}
