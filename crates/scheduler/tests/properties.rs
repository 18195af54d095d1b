//! Properties of `place` over random clusters and batches.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::collections::BTreeMap;

use firefleet_scheduler::{place, ClusterView, NodeView, Placement, PlacementRequest, Weights};
use firefleet_types::{Labels, NodeId, Resources};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const RUNTIMES: [&str; 2] = ["qemu", "firecracker"];
const ZONES: [&str; 2] = ["a", "b"];

fn arb_node(i: usize) -> impl Strategy<Value = NodeView> {
    (
        0u32..16,
        0u64..16384,
        0u32..20,
        0u64..20000,
        any::<bool>(),
        any::<bool>(),
        0usize..4,
        0usize..3,
    )
        .prop_map(
            move |(vcpus, mem, avcpus, amem, ready, cordoned, rt, zone)| {
                let mut labels = Labels::new();
                if zone < ZONES.len() {
                    labels.insert("zone".into(), ZONES[zone].into());
                }
                NodeView {
                    id: format!("n{i}").parse().unwrap(),
                    labels,
                    capacity: Resources {
                        vcpus,
                        memory_mib: mem,
                    },
                    allocated: Resources {
                        vcpus: avcpus.min(vcpus + 2),
                        memory_mib: amem.min(mem + 100),
                    },
                    // Mostly ready and uncordoned, so that placements happen.
                    ready: ready || rt != 0,
                    cordoned: cordoned && rt == 0,
                    runtimes: RUNTIMES
                        .iter()
                        .enumerate()
                        .filter(|(b, _)| rt & (1 << b) != 0)
                        .map(|(_, r)| r.to_string())
                        .collect(),
                }
            },
        )
}

fn arb_cluster() -> impl Strategy<Value = ClusterView> {
    (0usize..24)
        .prop_flat_map(|n| (0..n).map(arb_node).collect::<Vec<_>>())
        .prop_map(|nodes| ClusterView { nodes })
}

fn arb_requests() -> impl Strategy<Value = Vec<PlacementRequest>> {
    prop::collection::vec((1u32..6, 64u64..4096, 0usize..3, 0usize..3), 0..30).prop_map(|reqs| {
        reqs.into_iter()
            .enumerate()
            .map(|(i, (vcpus, mem, rt, zone))| PlacementRequest {
                vm: format!("vm-{i}").parse().unwrap(),
                resources: Resources {
                    vcpus,
                    memory_mib: mem,
                },
                runtime: RUNTIMES.get(rt).map(|r| r.to_string()),
                node_selector: ZONES
                    .get(zone)
                    .map(|z| [("zone".to_owned(), z.to_string())].into())
                    .unwrap_or_default(),
            })
            .collect()
    })
}

fn run(view: &ClusterView, requests: &[PlacementRequest], seed: u64) -> Vec<Placement> {
    place(
        view,
        requests,
        &Weights::default(),
        &mut ChaCha8Rng::seed_from_u64(seed),
    )
}

fn eligible(node: &NodeView, req: &PlacementRequest) -> bool {
    node.ready
        && !node.cordoned
        && req
            .node_selector
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
        && req
            .runtime
            .as_ref()
            .is_none_or(|r| node.runtimes.contains(r))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn one_result_per_request_in_order(view in arb_cluster(), requests in arb_requests(), seed: u64) {
        let out = run(&view, &requests, seed);
        prop_assert_eq!(out.len(), requests.len());
        for (p, r) in out.iter().zip(&requests) {
            prop_assert_eq!(p.vm(), &r.vm);
            if let Placement::Unschedulable { reasons, .. } = p {
                prop_assert!(!reasons.is_empty());
                prop_assert!(reasons.len() <= firefleet_scheduler::MAX_LISTED_REASONS);
            }
        }
    }

    #[test]
    fn same_seed_same_output(view in arb_cluster(), requests in arb_requests(), seed: u64) {
        prop_assert_eq!(run(&view, &requests, seed), run(&view, &requests, seed));
    }

    #[test]
    fn input_node_order_does_not_matter(view in arb_cluster(), requests in arb_requests(), seed: u64) {
        let mut reversed = view.clone();
        reversed.nodes.reverse();
        prop_assert_eq!(run(&view, &requests, seed), run(&reversed, &requests, seed));
    }

    /// Never over-commits, never uses an ineligible node, and only gives up when no eligible
    /// node had room at that point of the batch (first fit is complete).
    #[test]
    fn placements_respect_every_hard_constraint(view in arb_cluster(), requests in arb_requests(), seed: u64) {
        let out = run(&view, &requests, seed);
        let by_id: BTreeMap<&NodeId, &NodeView> = view.nodes.iter().map(|n| (&n.id, n)).collect();
        let mut free: BTreeMap<&NodeId, Resources> = view.nodes.iter().map(|n| (&n.id, n.free())).collect();
        for (p, req) in out.iter().zip(&requests) {
            match p {
                Placement::Placed { node, .. } => {
                    let n = by_id[node];
                    prop_assert!(eligible(n, req), "placed {} on ineligible {:?}", req.vm, n);
                    let f = free.get_mut(node).unwrap();
                    prop_assert!(f.fits(&req.resources), "over-committed {}: free {:?}, want {:?}", node, f, req.resources);
                    *f = f.saturating_sub(&req.resources);
                }
                Placement::Unschedulable { .. } => {
                    let fit = view.nodes.iter().find(|n| eligible(n, req) && free[&n.id].fits(&req.resources));
                    prop_assert!(fit.is_none(), "{} unschedulable but {:?} fits", req.vm, fit.map(|n| &n.id));
                }
            }
        }
    }
}
