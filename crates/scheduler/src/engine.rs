//! First-fit placement with a seeded starting offset.

use firefleet_types::Resources;
use rand::Rng;

use crate::{
    ClusterView, NodeView, Placement, PlacementRequest, ReasonKind, UnschedulableReason, Weights,
};

/// Up to this many nodes, an unschedulable result lists one reason per node; beyond, it gives
/// counts per [`ReasonKind`].
pub const MAX_LISTED_REASONS: usize = 16;

/// Places `requests` on the nodes of `view`, in order: each placement consumes capacity for
/// the ones after it. Returns exactly one result per request, in the same order.
///
/// Nodes are ordered by id (the order of `view.nodes` does not matter). For each request the
/// scan starts at an offset drawn from `rng`, so that equal nodes share the load, and the first
/// node that passes every hard constraint wins. The same input and the same RNG state give the
/// same output. `weights` is not used yet (first fit does not score).
pub fn place(
    view: &ClusterView,
    requests: &[PlacementRequest],
    _weights: &Weights,
    rng: &mut dyn rand::RngCore,
) -> Vec<Placement> {
    let mut nodes: Vec<&NodeView> = view.nodes.iter().collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let mut free: Vec<Resources> = nodes.iter().map(|n| n.free()).collect();

    requests
        .iter()
        .map(|request| {
            if nodes.is_empty() {
                return Placement::Unschedulable {
                    vm: request.vm.clone(),
                    reasons: vec![UnschedulableReason::NoNodes],
                };
            }
            let start = rng.gen_range(0..nodes.len());
            let chosen = (0..nodes.len())
                .map(|k| (start + k) % nodes.len())
                .find(|&slot| check(nodes[slot], free[slot], request).is_ok());
            match chosen {
                Some(slot) => {
                    free[slot] = free[slot].saturating_sub(&request.resources);
                    Placement::Placed {
                        vm: request.vm.clone(),
                        node: nodes[slot].id.clone(),
                    }
                }
                None => {
                    let reasons = nodes
                        .iter()
                        .zip(&free)
                        .filter_map(|(node, free)| check(node, *free, request).err());
                    Placement::Unschedulable {
                        vm: request.vm.clone(),
                        reasons: bound(reasons.collect()),
                    }
                }
            }
        })
        .collect()
}

/// Whether `node`, with `free` resources left, can take `request`; else the first constraint
/// it fails.
fn check(
    node: &NodeView,
    free: Resources,
    request: &PlacementRequest,
) -> Result<(), UnschedulableReason> {
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
    let want = request.resources;
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
    Ok(())
}

/// Keeps per-node reasons when there are few; otherwise counts them per kind.
fn bound(reasons: Vec<UnschedulableReason>) -> Vec<UnschedulableReason> {
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
    use firefleet_types::{Labels, NodeId, VmId};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn node(id: &str, vcpus: u32, memory_mib: u64) -> NodeView {
        NodeView {
            id: id.parse().unwrap(),
            labels: Labels::new(),
            capacity: Resources { vcpus, memory_mib },
            allocated: Resources::default(),
            ready: true,
            cordoned: false,
            runtimes: vec!["qemu".to_owned()],
        }
    }

    fn request(vm: &str, vcpus: u32, memory_mib: u64) -> PlacementRequest {
        PlacementRequest {
            vm: vm.parse().unwrap(),
            resources: Resources { vcpus, memory_mib },
            runtime: None,
            node_selector: Labels::new(),
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
        let view = ClusterView {
            nodes: vec![node("n1", 2, 1024)],
        };
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
        full.allocated = Resources {
            vcpus: 10,
            memory_mib: 0,
        }; // over-allocated: free is 0
        let view = ClusterView {
            nodes: vec![full, little_mem, no_runtime, no_label, cordoned, not_ready],
        };
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
        let out = run(&ClusterView { nodes }, &[request("big", 4, 64)], 0);
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
        let view = ClusterView {
            nodes: (0..4).map(|i| node(&format!("n{i}"), 64, 65536)).collect(),
        };
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
            run(&ClusterView { nodes }, &requests, 9),
            run(&ClusterView { nodes: reversed }, &requests, 9)
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
            (Resources::default(), true, true)
        );
        assert_eq!(view.free(), Resources::default());
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
        });
        let view = NodeView::from_node_info(
            &info,
            Resources {
                vcpus: 1,
                memory_mib: 1024,
            },
        );
        assert_eq!(
            view.free(),
            Resources {
                vcpus: 3,
                memory_mib: 3072
            }
        );
        assert_eq!(view.runtimes, ["qemu"]);
    }
}
