//! The search for one request: buckets by upper bound, then nodes by static score (and the best
//! empty ones), or every node; the winner is committed to the batch.

use rand::RngCore;

use super::constraints::bound_reasons;
use super::{sanitise, Batch, Scored};
use crate::num::{mix, unit};
use crate::{Placement, PlacementRequest, Search, TermWeights, UnschedulableReason, Weights};

impl<'a> Batch<'a> {
    /// Places one request and updates the state.
    pub(super) fn place_one(
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
        state: &Batch<'_>,
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
